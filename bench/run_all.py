"""Run every benchmark in bench/ and print one table of ratios against their targets.

Each benchmark prints one JSON object as its last line; this script reads it and compares
the headline ratios with the targets from the issues. Exit code 1 when a target is missed,
2 when a benchmark crashed. ``gpu_dpo.py`` runs only where CUDA is present.

Usage: ``make bench`` (or ``python bench/run_all.py [--only NAME ...]``).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent

# script -> [(key, comparison, target)]
TARGETS: dict[str, list[tuple[str, str, float]]] = {
    "llm_throughput.py": [("vs_ideal", ">=", 0.85), ("vs_raw_openai", ">=", 0.95),
                          ("warm_speedup", ">=", 20.0), ("warm_server_requests", "==", 0),
                          ("heavy_vs_ideal", ">=", 0.95)],
    "local_generation.py": [("batched_speedup", ">=", 4.0)],
    "eval_generation.py": [("vs_sequential", ">=", 5.0)],
    "dpo_step.py": [("vs_bare_trl", "<=", 1.05)],
    "zero3_host_memory.py": [("full_host_copies", "info", 0),
                             ("partitioned_host_copies", "info", 0)],
    "gpu_dpo.py": [("tokens_per_s", "info", 0), ("mfu", "info", 0), ("peak_mem_gb", "info", 0)],
}


def _cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _last_json(output: str) -> dict:
    for line in reversed(output.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError("no JSON object on the last lines")


def _ok(value: float, op: str, target: float) -> bool | None:
    if op == "info":
        return None
    return {">=": value >= target, "<=": value <= target, "==": value == target}[op]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", help="benchmark script names to run")
    args = parser.parse_args(argv)
    rows: list[tuple[str, str, str, str, str]] = []
    status = 0
    for script, targets in TARGETS.items():
        if args.only and script not in args.only and script[:-3] not in args.only:
            continue
        if script == "gpu_dpo.py" and not _cuda():
            rows.append((script, "-", "-", "-", "skipped (no CUDA)"))
            continue
        print(f"running {script} ...", file=sys.stderr, flush=True)
        proc = subprocess.run([sys.executable, str(HERE / script)], capture_output=True, text=True)
        try:
            result = _last_json(proc.stdout)
        except (ValueError, json.JSONDecodeError):
            rows.append((script, "-", "-", "-", f"CRASHED (exit {proc.returncode})"))
            sys.stderr.write(proc.stdout[-2000:] + proc.stderr[-4000:])
            status = max(status, 2)
            continue
        for key, op, target in targets:
            value = result.get(key)
            if value is None:
                rows.append((script, key, "missing", f"{op} {target}", "FAIL"))
                status = max(status, 1)
                continue
            ok = _ok(float(value), op, target)
            verdict = "info" if ok is None else ("ok" if ok else "MISSED")
            if ok is False:
                status = max(status, 1)
            rows.append((script, key, f"{float(value):.3g}",
                         "-" if op == "info" else f"{op} {target:g}", verdict))
    widths = [max(len(r[i]) for r in [("benchmark", "metric", "value", "target", "result"), *rows])
              for i in range(5)]
    for row in [("benchmark", "metric", "value", "target", "result"), *rows]:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)))
    return status


if __name__ == "__main__":
    sys.exit(main())
