"""Throughput of the ``openai`` backend against a local server with a fixed 100 ms latency.

2,000 distinct requests at concurrency 64 (issue 3):

* ``vs_ideal``: our requests/s divided by the ideal concurrency / latency (640 req/s);
  target >= 0.85.
* ``vs_raw_openai``: our requests/s divided by a plain ``AsyncOpenAI`` + semaphore loop
  measured in the same run against the same server; target >= 0.95.
* ``warm_speedup``: cold-run seconds (median) / warm-run seconds when the same requests are
  answered from the call cache; target >= 20. ``warm_server_requests``: requests that
  reached the server during the warm run; target 0.

Baseline and ours run in ``--rounds`` alternating rounds (fresh prompts and a fresh cache
each round) and the medians are compared, so a burst of load on the machine skews neither.

The server is tests/llm_server.py (uvicorn, 127.0.0.1) in its own process. Prints a few
human lines, then one JSON object as the last line.
Usage: ``.venv/bin/python bench/llm_throughput.py [--requests 2000] [--concurrency 64]``
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from librachem.llm.client import make_client  # noqa: E402
from librachem.llm.config import LLMParams  # noqa: E402
from tests.llm_server import RunningServer  # noqa: E402


async def raw_openai(base_url: str, model: str, prompts: list[str], concurrency: int) -> int:
    """The baseline: AsyncOpenAI + a semaphore, no retries, no cache."""
    import openai

    sem = asyncio.Semaphore(concurrency)
    async with openai.AsyncOpenAI(api_key="bench", base_url=base_url, max_retries=0,
                                  timeout=30) as client:
        async def one(prompt: str) -> str | None:
            async with sem:
                r = await client.chat.completions.create(
                    model=model, messages=[{"role": "user", "content": prompt}],
                    temperature=0.0, top_p=1.0, max_tokens=64, seed=0)
                return r.choices[0].message.content

        out = await asyncio.gather(*(one(p) for p in prompts))
    return sum(1 for o in out if o)


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--latency-ms", type=float, default=100.0)
    ap.add_argument("--rounds", type=int, default=5,
                    help="alternating baseline/ours rounds; medians are reported")
    args = ap.parse_args()
    os.environ["LIBRACHEM_BENCH_KEY"] = "bench"
    n, conc, lat = args.requests, args.concurrency, args.latency_ms / 1000.0
    ideal = conc / lat

    with RunningServer(latency_ms=args.latency_ms) as srv, \
            tempfile.TemporaryDirectory() as tmp:
        params = LLMParams(backend="openai", model="bench-model", base_url=srv.base_url,
                           api_key_env="LIBRACHEM_BENCH_KEY", concurrency=conc, timeout_s=30,
                           max_retries=3, temperature=0.0, max_tokens=64, seed=0)
        # warm both code paths (connections, imports) on other prompts
        asyncio.run(raw_openai(srv.base_url, "bench-model", [f"warm {i}" for i in range(conc)],
                               conc))
        make_client(params, cache_dir=None).complete(
            [params.request([{"role": "user", "content": f"warm2 {i}"}]) for i in range(conc)])

        prompts = [f"Question {i}: what is the density of compound {i}?" for i in range(n)]
        raw_s: list[float] = []
        cold_s: list[float] = []
        raw_cpu: list[float] = []
        cold_cpu: list[float] = []
        for rnd in range(args.rounds):  # alternate baseline and ours; medians damp noise
            c0, t0 = _cpu_s(), time.perf_counter()
            ok_raw = asyncio.run(raw_openai(srv.base_url, "bench-model",
                                            [f"{p} (raw {rnd})" for p in prompts], conc))
            raw_s.append(time.perf_counter() - t0)
            raw_cpu.append(_cpu_s() - c0)

            requests = [params.request([{"role": "user", "content": f"{p} (round {rnd})"}])
                        for p in prompts]
            client = make_client(params, cache_dir=Path(tmp) / f"cache{rnd}")
            c0, t0 = _cpu_s(), time.perf_counter()
            cold = client.complete(requests)
            cold_s.append(time.perf_counter() - t0)
            cold_cpu.append(_cpu_s() - c0)
            ok_cold = sum(c.ok for c in cold)

        # warm: the last round's requests again, from its cache, through a new client
        before = srv.stats()["requests"]
        warm_client = make_client(params, cache_dir=Path(tmp) / f"cache{args.rounds - 1}")
        t0 = time.perf_counter()
        warm = warm_client.complete(requests)
        t_warm = time.perf_counter() - t0
        warm_server = srv.stats()["requests"] - before
        assert [c.text for c in warm] == [c.text for c in cold]

    t_raw, t_cold = statistics.median(raw_s), statistics.median(cold_s)
    thr_raw, thr_cold = n / t_raw, n / t_cold
    print(f"ideal {ideal:.0f} req/s | raw AsyncOpenAI {thr_raw:.0f} req/s ({ok_raw}/{n} ok, "
          f"{t_raw:.2f} s) | librachem cold {thr_cold:.0f} req/s ({ok_cold}/{n} ok, "
          f"{t_cold:.2f} s) | warm {t_warm:.3f} s, {warm_server} server requests | medians of "
          f"{args.rounds} alternating rounds: raw {[round(t, 2) for t in raw_s]} s, "
          f"ours {[round(t, 2) for t in cold_s]} s")
    # client CPU (all threads of this process: event loop + cache writer, user + system) per
    # request; where the rest of the gap to the ideal goes is in README.md (Benchmarks)
    print(f"client CPU per request (median): raw AsyncOpenAI "
          f"{statistics.median(raw_cpu) / n * 1e3:.2f} ms, librachem "
          f"{statistics.median(cold_cpu) / n * 1e3:.2f} ms (call cache writes included)")
    print("targets: vs_ideal >= 0.85, vs_raw_openai >= 0.95, warm_speedup >= 20, "
          "warm_server_requests == 0")
    print(json.dumps({"vs_ideal": round(thr_cold / ideal, 3),
                      "vs_raw_openai": round(thr_cold / thr_raw, 3),
                      "warm_speedup": round(t_cold / t_warm, 1),
                      "warm_server_requests": warm_server}))


if __name__ == "__main__":
    main()
