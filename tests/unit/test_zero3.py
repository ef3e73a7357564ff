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


def _plain_merge(root: Path) -> dict[str, torch.Tensor]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(root / "base"),
                                      root / "sft")
    return {k: v.clone() for k, v in model.merge_and_unload().state_dict().items()}


def test_merge_into_base_equals_peft_merge_and_unload(base_and_sft):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    root = base_and_sft
    ours = merge_into_base(PeftModel.from_pretrained(
        AutoModelForCausalLM.from_pretrained(root / "base"), root / "sft")).state_dict()
    expected = _plain_merge(root)
    base = AutoModelForCausalLM.from_pretrained(root / "base").state_dict()
    assert ours.keys() == expected.keys()
    assert all(torch.equal(ours[k], expected[k]) for k in expected)
    assert not torch.equal(ours["model.layers.0.self_attn.q_proj.weight"],
                           base["model.layers.0.self_attn.q_proj.weight"])


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
from librachem.common.adapters import load_sft_merged
from librachem.train.loading import zero3_init
root = sys.argv[1]
with zero3_init() as partitioned:
    model = load_sft_merged(root + "/base", root + "/sft", dtype=torch.float32)
weight = model.model.layers[0].self_attn.q_proj.weight
out = {"zero3_init": partitioned, "placeholder_numel": weight.numel(),
       "full_shape": list(getattr(weight, "ds_shape", weight.shape))}
with deepspeed.zero.GatheredParameters(list(model.parameters())):
    torch.save({k: v.clone() for k, v in model.state_dict().items()}, root + "/z3.pt")
print(json.dumps(out))
"""


@pytest.mark.skipif(not DEEPSPEED_DIR.is_dir(), reason="run `make setup` (installs DeepSpeed "
                    "into .venv/deepspeed)")
def test_zero3_init_partitions_while_loading_and_merges_the_sft_adapter(base_and_sft):
    root = base_and_sft
    env = {**os.environ, "ACCELERATE_USE_DEEPSPEED": "true", "ACCELERATE_DEEPSPEED_ZERO_STAGE": "3",
           "ACCELERATE_DEEPSPEED_ZERO3_INIT": "true", "ACCELERATE_MIXED_PRECISION": "no",
           "DS_ACCELERATOR": "cpu", "RANK": "0", "LOCAL_RANK": "0", "WORLD_SIZE": "1",
           "LOCAL_WORLD_SIZE": "1", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": str(_free_port()),
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO), str(DEEPSPEED_DIR)]),
           "PATH": os.pathsep.join([str(DEEPSPEED_DIR / "bin"), os.environ["PATH"]])}
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(root)], env=env, text=True,
                          capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["zero3_init"] is True
    assert out["placeholder_numel"] == 0  # partitioned while loading, not a full copy per rank
    assert out["full_shape"] == [64, 64]
    got, expected = torch.load(root / "z3.pt"), _plain_merge(root)
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
