"""Issue 15: `librachem check-params` names each missing prerequisite of the params given
(GPU and bitsandbytes for QLoRA, every API key, HF_TOKEN for a hub id) before anything runs."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from click.testing import CliRunner

from librachem.cli import main

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def paper(tmp_path):
    out = tmp_path / "params.yaml"
    res = CliRunner().invoke(main, ["profile", "paper", "--params", str(ROOT / "params.yaml"),
                                    "--out", str(out)])
    assert res.exit_code == 0, res.output
    return out


def _machine(monkeypatch, *, cuda: bool, bnb: bool, keys: bool, token: bool):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: (real("json") if bnb else None)
                        if name == "bitsandbytes" else real(name, *a))
    for var in ("OPENAI_API_KEY", "HF_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(var, raising=False)
    if keys:
        monkeypatch.setenv("OPENAI_API_KEY", "sk-test-not-a-key")
    if token:
        monkeypatch.setenv("HF_TOKEN", "hf_test_not_a_token")


def test_check_params_names_each_missing_prerequisite(paper, monkeypatch):
    _machine(monkeypatch, cuda=False, bnb=False, keys=False, token=False)
    res = CliRunner().invoke(main, ["check-params", "--params", str(paper)])
    assert res.exit_code == 1
    out = res.output
    assert "CUDA GPU: sft.qlora / dpo.qlora" in out
    assert "bitsandbytes" in out and "pip install -e '.[gpu]'" in out
    for where in ("generate.generator", "augment.rephraser", "evaluate.judge.llm",
                  "evaluate.baselines[gpt4o].llm"):
        assert f"API key: {where}: OPENAI_API_KEY is not set" in out, where
    assert "HF_TOKEN: base_model.pretrained = 'meta-llama/Llama-3.1-8B-Instruct'" in out


def test_check_params_passes_when_the_machine_has_everything(paper, monkeypatch):
    _machine(monkeypatch, cuda=True, bnb=True, keys=True, token=True)
    res = CliRunner().invoke(main, ["check-params", "--params", str(paper)])
    assert res.exit_code == 0, res.output
    assert "prerequisites: all present" in res.output
    assert "sk-test-not-a-key" not in res.output and "hf_test_not_a_token" not in res.output


def test_the_embedded_default_needs_nothing(monkeypatch):
    _machine(monkeypatch, cuda=False, bnb=False, keys=False, token=False)
    res = CliRunner().invoke(main, ["check-params", "--params", str(ROOT / "params.yaml")])
    assert res.exit_code == 0, res.output


def test_require_keys_names_all_and_skips_replay():
    from librachem.common.errors import LLMError
    from librachem.llm.config import LLMParams
    from librachem.llm.keys import require_keys

    blocks = [("a", LLMParams(backend="openai", model="m", api_key_env="LIBRACHEM_NO_SUCH_A")),
              ("b", LLMParams(backend="local")), ("c", None)]
    with pytest.raises(LLMError, match="a: LIBRACHEM_NO_SUCH_A"):
        require_keys(blocks)
    require_keys(blocks, replay_only=True)


def test_paper_profile_is_the_paper_and_the_pilot_is_small():
    from librachem.commands.profiles import apply_profile
    from librachem.common.config import read_yaml

    p = apply_profile(read_yaml(ROOT / "params.yaml"), "paper")
    assert p["dpo"]["loss_type"] == ["sigmoid"] and p["dpo"]["loss_weights"] is None
    assert p["dpo"]["beta"] == 0.1
    for stage in ("sft", "dpo"):  # one epoch over every row, not the paper's ~2%
        assert p[stage]["max_steps"] == -1 and p[stage]["epochs"] == 1.0
        assert p[stage]["max_rows"] == 0 and p[stage]["qlora"] is True
    assert p["generate"]["model_dep"] == p["augment"]["model_dep"] == "src/librachem/llm"
    pilot = apply_profile(p, "pilot")
    assert sum(pilot["generate"]["max_requests"].values()) <= 200
    assert pilot["dpo"]["loss_type"] == ["sigmoid"] and pilot["sft"]["max_steps"] == 30
    assert pilot["evaluate"]["xstest"]["enabled"] is False
