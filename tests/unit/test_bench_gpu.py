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
