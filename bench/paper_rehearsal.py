"""Full-size rehearsal of the paper profile's API work (issue 16), offline, time-scaled.

What runs: the ``seeds``, ``generate`` and ``augment`` stages (their own CLI, in
subprocesses) and evaluate's API work (every evaluated prompt through the GPT-4o baseline
client, then the LLM judges over every response) on the paper profile at full size: every
compound, 1,284 generate requests (2,568 calls), 5/5/5 augmentation, XSTest on. The
endpoint is tests/llm_server.py with

* heavy-tailed latency: lognormal, median ``--median-s`` real seconds (p99 ~ 5 x median),
* a sliding-window rate limit of ``--rpm`` requests per real minute (429 + ``Retry-After``
  + ``x-ratelimit-*`` headers, like the API),
* replies from a script (:func:`respond`): the test fake generator's plausible answers for
  generate/augment and fixed verdicts for the judges,

all time-scaled by ``--time-scale`` (a real second lasts 1/scale s: latency, the rate
window, the client's backoff and deadlines). Where a model is needed (evaluate's base / sft /
dpo answers) three tiny random Llamas (tests/tiny_model.py; 8 new tokens) stand in for the 8B.

Midway through augment the stage is killed with SIGKILL and rerun; the rerun must send none
of the requests whose answers the first run had cached (``repeated_completed_calls``).

Prints human lines, then one JSON object as the last line: calls per stage and in all, wall
time vs the latency/rate-bound ideal, 429s absorbed, calls failed, peak RSS, call-cache
files and bytes, ``dvc add`` + ``dvc push`` seconds for the cache, estimated cost at list
prices, and the kill/rerun figures.

Usage: ``.venv/bin/python bench/paper_rehearsal.py [--time-scale 10] [--keep DIR]``
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
for _p in (REPO, REPO / "src"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

KEY_ENV = "LIBRACHEM_REHEARSAL_KEY"


# ------------------------------------------------------------------ the server's replies
@functools.cache
def _judge_signatures() -> dict[str, tuple[str, str]]:
    from librachem.evaluate.judges import build_request
    from librachem.llm.config import LLMParams

    out = {}
    for name in ("refusal", "route", "quality"):
        msgs = build_request(name, LLMParams()).messages
        out[name] = (msgs[0]["content"], msgs[-1]["content"][:40])
    return out


def respond(request: Any) -> Any:
    """Server-side script: judges get a fixed, parseable verdict, a baseline (a bare user
    turn) a short answer; everything else the test fake generator's answer (plausible per
    answer kind, rephrasings keep the subject)."""
    from tests.fakes import generator

    if len(request.messages) == 1 and request.messages[0]["role"] == "user":
        return "Here is a short, general overview of the topic; ask a chemist for details."
    first, last = request.messages[0]["content"], request.messages[-1]["content"][:40]
    for name, (system, head) in _judge_signatures().items():
        if first == system and last == head:
            return {"refusal": "full_refusal", "route": "no", "quality": "4"}[name]
    return generator(request)


# ------------------------------------------------------------------ helpers
def _run(cmd: list[str], env: dict[str, str], log: Path) -> tuple[int, float, int]:
    """Run a stage; (exit status, seconds, peak RSS in MiB of that process)."""
    t0 = time.perf_counter()
    with log.open("ab") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - t0, usage.ru_maxrss // 1024


def _cache_fingerprints(cache: Path) -> set[str]:
    from tests.llm_server import fingerprint

    out = set()
    for f in cache.glob("??/*.json"):
        try:
            r = json.loads(f.read_bytes())["request"]
        except (ValueError, KeyError, OSError):
            continue
        out.add(fingerprint(r["messages"], r["model"], r["max_tokens"], r["seed"],
                            r["temperature"]))
    return out


def _stage_params(args: argparse.Namespace, base_url: str) -> dict[str, Any]:
    from librachem.commands.profiles import apply_profile
    from librachem.common.config import read_yaml

    params = apply_profile(read_yaml(REPO / "params.yaml"), "paper")
    s = args.time_scale
    timing = {"base_url": base_url, "api_key_env": KEY_ENV, "timeout_s": 60.0,
              "backoff_initial_s": 1.0 / s, "backoff_max_s": 30.0 / s,
              "retry_after_max_s": 60.0 / s, "rate_limit_deadline_s": 900.0 / s}
    params["generate"]["generator"].update(timing)
    params["augment"]["rephraser"].update(timing)
    for bl in params["evaluate"]["baselines"]:
        bl["llm"].update(timing)
    params["evaluate"]["judge"]["llm"].update(timing)
    return params


# ------------------------------------------------------------------ evaluate's API work
def evaluate_api(ws: Path) -> dict[str, Any]:
    """Evaluate's LLM load in this process: baselines over every prompt, judges over every
    response (three tiny local models stand in for base/sft/dpo). Returns per-client stats."""
    from librachem.common.chat_format import user_turn
    from librachem.common.config import load_section
    from librachem.evaluate.generation import generate_local, response_row
    from librachem.evaluate.judging import is_sensitive, judge_rows
    from librachem.evaluate.params import EvaluateParams, GenerationParams
    from librachem.evaluate.prompts import load_prompts, load_xstest, stratified_sample
    from librachem.llm.factory import make_client
    from librachem.llm.failures import check_failure_rate
    from tests.tiny_model import tiny_model, tiny_tokenizer

    params = load_section(EvaluateParams, "evaluate", ws / "params.yaml")
    prompts = load_prompts(ws / "triplets", ws / "rephrased_test", params.prompts)
    prompts = stratified_sample(prompts, params.prompts.max_prompts, params.prompts.seed)
    if params.xstest.enabled:
        prompts += load_xstest(params.xstest)
    rows: list[dict] = []
    # sampled (a greedy random model repeats one token: blank answers nobody judges), a
    # seed per model so the three answer sets differ, as the real models' would
    stand_ins = [GenerationParams(max_new_tokens=8, batch_size=64, temperature=1.0, seed=seed)
                 for seed in range(len(params.models))]
    for seed, name in enumerate(params.models):
        out, _ = generate_local(name, lambda _n, s=seed: (tiny_model(seed=s), tiny_tokenizer()),
                                prompts, stand_ins[seed])
        rows += [response_row(name, p, c, params.reasoning) for p, c in zip(prompts, out)]
    stats: dict[str, Any] = {"prompts": len(prompts)}
    for bl in params.baselines:
        client = make_client(bl.llm, cache_dir=ws / ".llm-cache")
        reqs = [bl.llm.request(user_turn(p["prompt"]), max_tokens=params.generation.max_new_tokens,
                               redact_threshold=(params.judge.redact_threshold
                                                 if is_sensitive(p) else None)) for p in prompts]
        done = client.complete(reqs, desc=f"evaluate {bl.name}")
        rows += [response_row(bl.name, p, c, params.reasoning) for p, c in zip(prompts, done)]
        stats[bl.name] = client.stats()
        check_failure_rate("evaluate", bl.name, client, bl.max_llm_failure_rate, "stats")
    judge = make_client(params.judge.llm, cache_dir=ws / ".llm-cache")
    judge_rows(rows, params.judge, judge)
    stats["judge"] = judge.stats()
    return stats


# ------------------------------------------------------------------ the rehearsal
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--time-scale", type=float, default=10.0)
    ap.add_argument("--median-s", type=float, default=3.0, help="real median latency")
    ap.add_argument("--rpm", type=int, default=400, help="real requests per minute "
                    "(below what 32 slots at the median latency would send, so it binds)")
    ap.add_argument("--kill-at", type=float, default=0.5,
                    help="share of augment's calls after which it is killed")
    ap.add_argument("--keep", type=Path, default=None, help="keep the workspace here")
    ap.add_argument("--evaluate-part", type=Path, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--evaluate-only", action="store_true",
                    help="with --keep DIR of an earlier run: only evaluate's API work and the "
                         "DVC figures (seeds, generate and augment are not rerun)")
    args = ap.parse_args()
    if args.evaluate_part is not None:  # child process: evaluate's API work
        print("EVALUATE " + json.dumps(evaluate_api(args.evaluate_part)), flush=True)
        return

    import yaml

    from librachem.commands.estimate import estimate
    from tests.llm_server import RunningServer

    ws = args.keep or Path(tempfile.mkdtemp(prefix="paper-rehearsal-"))
    ws.mkdir(parents=True, exist_ok=True)
    log = ws / "stages.log"
    env = {**os.environ, KEY_ENV: "rehearsal", "PYTHONPATH": f"{REPO / 'src'}:{REPO}",
           "TQDM_DISABLE": "1"}
    py = sys.executable
    scale = args.time_scale
    figures: dict[str, Any] = {"time_scale": scale, "median_latency_s_real": args.median_s,
                               "rpm_real": args.rpm, "workspace": str(ws)}
    t_all = time.perf_counter()
    with RunningServer(latency_ms=args.median_s * 1000 / scale, latency_dist="lognormal",
                       rpm=args.rpm, rate_window_s=60.0 / scale,
                       script="bench.paper_rehearsal:respond") as srv:
        params = _stage_params(args, srv.base_url)
        (ws / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
        figures["estimate"] = {f["stage"]: {"calls": f["calls"], "cost_usd": f["cost_usd"]}
                               for f in estimate(params, REPO / "data/seeds/compounds.csv")}
        common = ["--params", str(ws / "params.yaml")]
        stages: dict[str, Any] = {}

        def server_delta(before: dict[str, Any]) -> dict[str, Any]:
            now = srv.stats()
            return {"requests": now["requests"] - before["requests"],
                    "rate_limited_429": now["rate_limited"] - before["rate_limited"],
                    "latency_sum_s": now["latency_sum_s"] - before["latency_sum_s"]}
        if not args.evaluate_only:
            rc, secs, rss = _run([py, "stages/seeds.py", *common, "--compounds",
                                  str(REPO / "data/seeds/compounds.csv"), "--out",
                                  str(ws / "balanced.parquet"), "--metrics", str(ws / "seeds.json")],
                                 env, log)
            assert rc == 0, f"seeds failed, see {log}"


            # generate -------------------------------------------------------------------
            before = srv.stats()
            rc, secs, rss = _run([py, "stages/generate.py", *common, "--seeds",
                                  str(ws / "balanced.parquet"), "--out", str(ws / "triplets"),
                                  "--metrics", str(ws / "data.json"), "--cache-dir",
                                  str(ws / ".llm-cache")], env, log)
            llm = json.loads((ws / "data.json").read_text())["llm"]
            stages["generate"] = {"exit": rc, "wall_s": secs, "peak_rss_mib": rss,
                                  "calls": llm["calls"], "failed": llm["failures"],
                                  "cost_usd": llm["cost_usd"], **server_delta(before)}
            assert rc == 0, f"generate failed, see {log}"

            # augment, killed midway, then rerun ------------------------------------------
            aug_cmd = [py, "stages/augment.py", *common, "--triplets", str(ws / "triplets"),
                       "--out", str(ws / "augmented"), "--test-out", str(ws / "rephrased_test"),
                       "--metrics", str(ws / "augment.json"), "--cache-dir", str(ws / ".llm-cache")]
            expected = figures["estimate"]["augment"]["calls"]
            before = srv.stats()
            t0 = time.perf_counter()
            with log.open("ab") as out:
                proc = subprocess.Popen(aug_cmd, cwd=REPO, env=env, stdout=out,
                                        stderr=subprocess.STDOUT)
                while proc.poll() is None:
                    if srv.stats()["requests"] - before["requests"] >= args.kill_at * expected:
                        os.kill(proc.pid, signal.SIGKILL)
                        break
                    time.sleep(0.2)
                _, status, usage = os.wait4(proc.pid, 0)
            killed_s = time.perf_counter() - t0
            time.sleep(2.0 / scale + 0.5)  # let the server finish what was in flight
            first = server_delta(before)
            answered = set(srv.fingerprints()["answered"])
            cached = _cache_fingerprints(ws / ".llm-cache")
            n_received = len(srv.fingerprints()["received"])
            before = srv.stats()
            rc, secs, rss = _run(aug_cmd, env, log)
            rerun_received = srv.fingerprints()["received"][n_received:]
            llm = json.loads((ws / "augment.json").read_text())["llm"]
            second = server_delta(before)
            stages["augment"] = {
                "exit": rc, "wall_s": killed_s + secs, "peak_rss_mib": max(rss, usage.ru_maxrss
                                                                            // 1024),
                "calls": llm["calls"], "failed": llm["failures"], "cost_usd": llm["cost_usd"],
                "requests": first["requests"] + second["requests"],
                "rate_limited_429": first["rate_limited_429"] + second["rate_limited_429"],
                "latency_sum_s": first["latency_sum_s"] + second["latency_sum_s"],
                "killed_after_s": round(killed_s, 1),
                "killed_status": os.waitstatus_to_exitcode(status),
                "cached_at_kill": len(cached),
                "answered_not_cached_at_kill": len(answered - cached),
                "rerun_cache_hits": llm["cache_hits"],
                "repeated_completed_calls": sum(1 for f in rerun_received if f in cached)}
            assert rc == 0, f"augment rerun failed, see {log}"

        # evaluate's API work ----------------------------------------------------------
        if args.evaluate_only:  # an earlier run's evaluate answers go: the full load again
            judge_model = params["evaluate"]["judge"]["llm"]["model"]
            for f in (ws / ".llm-cache").glob("??/*.json"):
                r = json.loads(f.read_bytes())["request"]
                if len(r["messages"]) == 1 or r["model"] == judge_model:
                    f.unlink()
        before = srv.stats()
        t0 = time.perf_counter()
        res = subprocess.run([py, str(Path(__file__)), "--evaluate-part", str(ws)], cwd=REPO,
                             env=env, capture_output=True, text=True, check=False)
        secs = time.perf_counter() - t0
        with log.open("a") as out:
            out.write(res.stderr)
        line = next((x for x in res.stdout.splitlines() if x.startswith("EVALUATE ")), None)
        assert res.returncode == 0 and line, f"evaluate part failed:\n{res.stderr[-3000:]}"
        ev = json.loads(line[len("EVALUATE "):])
        clients = [v for k, v in ev.items() if isinstance(v, dict)]
        stages["evaluate"] = {"exit": res.returncode, "wall_s": secs, "prompts": ev["prompts"],
                              "calls": sum(c["calls"] for c in clients),
                              "failed": sum(c["failures"] for c in clients),
                              "cost_usd": sum(c["cost_usd"] for c in clients),
                              **server_delta(before)}
        conc = params["generate"]["generator"]["concurrency"]
        window = 60.0 / scale
        for name, st in stages.items():
            c = (params["evaluate"]["judge"]["llm"].get("concurrency", 16)
                 if name == "evaluate" else conc)
            ok = st["requests"] - st["rate_limited_429"]
            st["ideal_s"] = round(max(st["latency_sum_s"] / c, ok / args.rpm * window), 1)
            st["vs_ideal"] = round(st["ideal_s"] / st["wall_s"], 3)
    figures["stages"] = stages

    # the call cache under DVC --------------------------------------------------------------
    files = list((ws / ".llm-cache").glob("??/*.json"))
    figures["cache_files"] = len(files)
    figures["cache_bytes"] = sum(f.stat().st_size for f in files)
    dvc = [py, "-m", "dvc"]
    shutil.rmtree(ws / "remote", ignore_errors=True)
    shutil.rmtree(ws / ".dvc", ignore_errors=True)  # an earlier run's (--evaluate-only)
    (ws / ".llm-cache.dvc").unlink(missing_ok=True)
    subprocess.run([*dvc, "init", "--no-scm", "-q"], cwd=ws, check=True)
    subprocess.run([*dvc, "remote", "add", "-d", "local", str(ws / "remote")], cwd=ws,
                   check=True)
    t0 = time.perf_counter()
    subprocess.run([*dvc, "add", "-q", ".llm-cache"], cwd=ws, check=True)
    figures["dvc_add_s"] = round(time.perf_counter() - t0, 1)
    t0 = time.perf_counter()
    subprocess.run([*dvc, "push", "-q"], cwd=ws, check=True)
    figures["dvc_push_s"] = round(time.perf_counter() - t0, 1)

    total = {k: sum(st[k] for st in stages.values())
             for k in ("calls", "failed", "requests", "rate_limited_429", "cost_usd")}
    figures["total"] = {**total, "wall_s": round(sum(st["wall_s"] for st in stages.values()), 1),
                        "ideal_s": round(sum(st["ideal_s"] for st in stages.values()), 1),
                        "peak_rss_mib": max(st.get("peak_rss_mib", 0) for st in stages.values()),
                        "rehearsal_s": round(time.perf_counter() - t_all, 1)}
    figures["estimated_cost_usd_list_prices"] = {
        k: round(sum(v["cost_usd"][k] for v in figures["estimate"].values()), 2)
        for k in ("floor", "expected", "ceiling")}
    for name, st in stages.items():
        print(f"{name:<9} {st['calls']:>6} calls, {st['requests']:>6} requests, "
              f"{st['rate_limited_429']:>5} 429s absorbed, {st['failed']} failed, "
              f"{st['wall_s']:.0f} s vs ideal {st['ideal_s']:.0f} s ({st['vs_ideal']})")
    a = stages.get("augment")
    if a:
        print(f"augment killed after {a['killed_after_s']} s with {a['cached_at_kill']} answers "
              f"cached ({a['answered_not_cached_at_kill']} answered but in flight); rerun: "
              f"{a['rerun_cache_hits']} cache hits, {a['repeated_completed_calls']} completed "
              "calls repeated")
    print(f"call cache: {figures['cache_files']} files, {figures['cache_bytes'] / 1e6:.1f} MB; "
          f"dvc add {figures['dvc_add_s']} s, dvc push {figures['dvc_push_s']} s")
    if args.keep is None:
        shutil.rmtree(ws, ignore_errors=True)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
