"""Issue 15.5, DeepSpeed ZeRO-3 with ``zero3_init_flag``: the stages' loading code partitions
the base while loading and still merges the SFT adapter (PEFT's own merge fails on the
partitioned placeholders), giving the same weights as the plain merge.

The ZeRO-3 half runs in a subprocess on DeepSpeed's CPU accelerator (gloo, one rank), with
DeepSpeed from ``.venv/deepspeed`` (``make setup`` installs it there, outside the venv's import
path, so no other test imports it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from librachem.common.adapters import merge_into_base

REPO = Path(__file__).resolve().parents[2]
DEEPSPEED_DIR = REPO / ".venv" / "deepspeed"


@pytest.fixture(scope="module")
def base_and_sft(tmp_path_factory):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from tests.tiny_model import save_tiny_base

    root = tmp_path_factory.mktemp("z3")
    save_tiny_base(root / "base", tie_word_embeddings=False)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(root / "base"),
                          LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]))
    torch.manual_seed(1)
    for name, param in peft.named_parameters():
        if "lora_B" in name:  # B = 0 would make any merge look right
            torch.nn.init.normal_(param, std=0.1)
    peft.save_pretrained(root / "sft")
    return root


def _peft(root: Path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(root / "base"),
                                     root / "sft")


def test_the_gathered_merge_equals_merge_and_unload(base_and_sft, monkeypatch):
    """The ZeRO-3 branch, in process: DeepSpeed is faked as enabled and each gather is
    recorded (the real gather runs in the subprocess test below)."""
    import contextlib

    import peft.utils.integrations as integrations

    gathered: list[tuple[list[int], int]] = []

    @contextlib.contextmanager
    def record(params, modifier_rank=0, fwd_module=None):
        gathered.append(([id(p) for p in params], modifier_rank))
        yield

    monkeypatch.setattr(integrations, "check_deepspeed_zero3_enabled", lambda: True)
    monkeypatch.setattr(integrations, "gather_params_ctx", record)
    root = base_and_sft
    model = _peft(root)
    q_weight = model.base_model.model.model.layers[0].self_attn.q_proj.get_base_layer().weight
    ours = merge_into_base(model).state_dict()
    expected = _plain_merge_in(root, torch.float32)
    assert ours.keys() == expected.keys()
    assert all(torch.equal(ours[k], expected[k]) for k in expected)
    assert len(gathered) == 4  # q_proj and v_proj of 2 layers, one gather each
    assert all(rank == 0 for _, rank in gathered)
    assert any(id(q_weight) in ids for ids, _ in gathered)
    base = _peft(root).get_base_model().state_dict()  # not merged
    assert not torch.equal(ours["model.layers.0.self_attn.q_proj.weight"],
                           base["model.layers.0.self_attn.q_proj.base_layer.weight"])


def test_zero3_merge_refuses_an_adapter_with_modules_to_save(tmp_path, monkeypatch):
    """``unload`` would silently drop a trained modules_to_save copy."""
    import peft.utils.integrations as integrations
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from librachem.common.errors import TrainingError
    from tests.tiny_model import save_tiny_base

    save_tiny_base(tmp_path / "base", tie_word_embeddings=False)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tmp_path / "base"),
                           LoraConfig(r=4, target_modules=["q_proj"],
                                      modules_to_save=["lm_head"]))
    monkeypatch.setattr(integrations, "check_deepspeed_zero3_enabled", lambda: True)
    with pytest.raises(TrainingError, match="modules_to_save"):
        merge_into_base(model)


def test_zero3_init_does_nothing_outside_deepspeed(monkeypatch):
    from librachem.train.loading import zero3_init

    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    with zero3_init() as partitioned:
        assert partitioned is False


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


_CHILD = r"""
import json, sys, torch
import deepspeed
deepspeed.init_distributed(dist_backend="gloo")
from transformers.integrations import is_deepspeed_zero3_enabled
from librachem.common.adapters import load_sft_merged
from librachem.train.loading import zero3_init
root, precision = sys.argv[1], sys.argv[2]
dtype = torch.bfloat16 if precision == "bf16" else torch.float32
with zero3_init(precision) as partitioned:
    model = load_sft_merged(root + "/base", root + "/sft", dtype=dtype)
weight = model.model.layers[0].self_attn.q_proj.weight
out = {"zero3_init": partitioned, "placeholder_numel": weight.numel(),
       "full_shape": list(getattr(weight, "ds_shape", weight.shape)),
       "partition_dtype": str(weight.ds_tensor.dtype),
       "registered_after": is_deepspeed_zero3_enabled()}
with deepspeed.zero.GatheredParameters(list(model.parameters())):
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, root + f"/z3-{precision}.pt")
print(json.dumps(out))
"""


def _has_deepspeed() -> bool:
    import importlib.util

    return DEEPSPEED_DIR.is_dir() or importlib.util.find_spec("deepspeed") is not None


def _plain_merge_in(root: Path, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(root / "base", dtype=dtype), root / "sft")
    return {k: v.clone() for k, v in model.merge_and_unload().state_dict().items()}


@pytest.mark.skipif(not _has_deepspeed(), reason="run `make setup` (installs DeepSpeed into "
                    ".venv/deepspeed)")
@pytest.mark.parametrize("precision, dtype", [("no", torch.float32), ("bf16", torch.bfloat16)])
def test_zero3_init_partitions_while_loading_and_merges_the_sft_adapter(base_and_sft, precision,
                                                                        dtype):
    root = base_and_sft
    env = {**os.environ, "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
           "ACCELERATE_DEEPSPEED_ZERO3_INIT": "true", "ACCELERATE_MIXED_PRECISION": "no",
           "DS_ACCELERATOR": "cpu", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
           "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()),
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO), str(DEEPSPEED_DIR)]),
           "PATH": os.pathsep.join([str(DEEPSPEED_DIR / "bin"), os.environ["PATH"]])}
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(root), precision], env=env,
                          text=True, capture_output=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["zero3_init"] is True
    assert out["placeholder_numel"] == 0  # partitioned while loading, not a full copy per rank
    assert out["full_shape"] == [64, 64]
    # the stage's precision, not fp32 (zero.Init's default without it: twice bf16's memory)
    assert out["partition_dtype"] == str(dtype)
    assert out["registered_after"] is False  # the trainer's config registers its own later
    got, expected = torch.load(root / f"z3-{precision}.pt"), _plain_merge_in(root, dtype)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
