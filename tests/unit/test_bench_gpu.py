"""bench/gpu_dpo.py refuses clearly without CUDA (no GPU on the CI machines)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parents[2] / "bench" / "gpu_dpo.py"


def test_gpu_bench_refuses_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present: the benchmark would run")
    done = subprocess.run([sys.executable, str(SCRIPT)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 2
    assert "needs a CUDA GPU" in done.stderr
    last = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(last) >= {"tokens_per_s", "mfu", "peak_mem_gb"} and last["mfu"] is None


@pytest.mark.slow
def test_gpu_check_dry_run_runs_the_stages_on_cpu(tmp_path):
    """bench/gpu_check.py --dry-run: the real base_model/sft/dpo/evaluate code on a tiny CPU
    model; every model on the CPU in fp32, the evaluate replay loads nothing."""
    script = Path(__file__).parents[2] / "bench" / "gpu_check.py"
    done = subprocess.run([sys.executable, str(script), "--dry-run", "--work", str(tmp_path)],
                          capture_output=True, text=True, timeout=1200, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    last = json.loads(done.stdout.strip().splitlines()[-1])
    assert last["device"] == "cpu" and last["sft"]["steps"] == 3 and last["dpo"]["steps"] == 3
    assert last["evaluate"]["replay_model_loads"] == 0
    assert all(":cpu:float32:" in m for m in last["models_checked"])
    assert [m.split(":")[0] for m in last["models_checked"]] == ["train", "train", "eval-base",
                                                                 "eval"]


def test_gpu_check_refuses_without_cuda():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    script = Path(__file__).parents[2] / "bench" / "gpu_check.py"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 2 and "needs a CUDA GPU" in done.stderr
