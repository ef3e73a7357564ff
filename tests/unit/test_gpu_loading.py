"""Issue 15, training placement (the selection logic; no GPU here): QLoRA quantizes the stored
weights at load time on the rank's own GPU, bf16 loads without an fp32 copy, the CPU path is
unchanged; FSDP efficient loading leaves ranks > 0 empty."""

from __future__ import annotations

import pytest

from librachem.train.params import TrainParams


def _params(**kw):
    return TrainParams(learning_rate=1e-4, **kw)


class _State:
    def __init__(self, rank):
        self.local_process_index = rank


@pytest.fixture
def rank(monkeypatch):
    import accelerate

    def set_rank(r):
        monkeypatch.setattr(accelerate, "PartialState", lambda: _State(r))
    return set_rank


def test_cpu_loads_as_before():
    from librachem.train.loading import load_kwargs

    assert load_kwargs(_params(), {"device": "cpu", "bf16": False, "use_cpu": True}) == {}
    assert load_kwargs(_params(precision="bf16"), {"device": "cpu", "bf16": True,
                                                   "use_cpu": True}) == {}


def test_qlora_quantizes_at_load_on_the_ranks_own_gpu(rank):
    import torch

    from librachem.train.loading import load_kwargs

    rank(3)
    kw = load_kwargs(_params(qlora=True, precision="bf16"),
                     {"device": "cuda", "bf16": True, "use_cpu": False})
    assert kw["device_map"] == {"": 3}  # DDP: rank 3 on GPU 3, not all on GPU 0
    assert kw["dtype"] == torch.bfloat16  # embeddings, norms and head in bf16
    q = kw["quantization_config"]
    assert q.load_in_4bit and q.bnb_4bit_quant_type == "nf4"
    assert q.bnb_4bit_compute_dtype == torch.bfloat16


def test_bf16_gpu_loads_bf16_without_device_map():
    import torch

    from librachem.train.loading import load_kwargs

    kw = load_kwargs(_params(precision="bf16"), {"device": "cuda", "bf16": True,
                                                 "use_cpu": False})
    assert kw == {"dtype": torch.bfloat16}  # the trainer places it (DDP / FSDP / ZeRO-3)


@pytest.mark.parametrize("env,r,expected", [({}, 1, False),
                                            ({"ACCELERATE_USE_FSDP": "true"}, 1, False),
                                            ({"ACCELERATE_USE_FSDP": "true",
                                              "FSDP_CPU_RAM_EFFICIENT_LOADING": "true"}, 1, True),
                                            ({"ACCELERATE_USE_FSDP": "true",
                                              "FSDP_CPU_RAM_EFFICIENT_LOADING": "true"}, 0, False)])
def test_fsdp_efficient_loading_skips_ranks_above_zero(monkeypatch, rank, env, r, expected):
    from librachem.train.loading import fsdp_rank_loads_nothing

    for var in ("ACCELERATE_USE_FSDP", "FSDP_CPU_RAM_EFFICIENT_LOADING"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    rank(r)
    assert fsdp_rank_loads_nothing() is expected


def test_the_packaged_fsdp_config_loads_on_rank_zero_only():
    from pathlib import Path

    import yaml

    cfg = yaml.safe_load((Path(__file__).parents[2] / "src" / "librachem" / "resources" /
                          "accelerate" / "fsdp.yaml").read_text())
    assert cfg["fsdp_config"]["fsdp_cpu_ram_efficient_loading"] is True


def test_gpu_extra_pins_bitsandbytes():
    import tomllib
    from pathlib import Path

    meta = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    assert "bitsandbytes==0.50.2" in meta["project"]["optional-dependencies"]["gpu"]
