"""The base_model stage through CliRunner: bad inputs fail cleanly; the real conversion (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from librachem.base_model.stage import BaseModelParams, locate_gguf
from stages.base_model import main

REPO = Path(__file__).resolve().parents[2]


def write_params(tmp_path: Path, **section) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"base_model": section}))
    return path


def test_sha_mismatch_fails_before_writing(tmp_path):
    params = write_params(tmp_path, sha256="0" * 64)
    out = tmp_path / "base"
    result = CliRunner().invoke(main, ["--params", str(params), "--out", str(out)])
    assert result.exit_code == 1
    assert "DataError" in result.output and "sha256" in result.output
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize("section,message", [
    ({"gguf_file": "nope.gguf"}, "not found in package"),
    ({"package": "no-such-dist-xyz"}, "is not installed"),
    ({"model_max_length": 3}, "base_model.model_max_length = 3"),
    ({"revision": "x"}, "base_model.revision: unknown key"),
])
def test_bad_params_are_clean_errors(tmp_path, section, message):
    params = write_params(tmp_path, **section)
    result = CliRunner().invoke(main, ["--params", str(params), "--out", str(tmp_path / "b")])
    assert result.exit_code == 1 and message in result.output


def test_repo_params_match_the_packaged_file():
    from librachem.common.config import load_section

    p = load_section(BaseModelParams, "base_model", REPO / "params.yaml")
    assert locate_gguf(p.package, p.gguf_file).stat().st_size == 98_362_432


@pytest.mark.slow
def test_conversion_answers_offline(tmp_path):
    out = tmp_path / "base"
    result = CliRunner().invoke(main, ["--params", str(REPO / "params.yaml"), "--out", str(out)])
    assert result.exit_code == 0, result.output
    prov = json.loads((out / "librachem_model.json").read_text())
    assert prov["revision"] == "gguf-sha256:" + BaseModelParams().sha256
    assert prov["n_params"] == 134_515_008
    assert (out / "model.safetensors").stat().st_size > 500e6  # fp32, not quantized
    tok_cfg = json.loads((out / "tokenizer_config.json").read_text())
    assert tok_cfg["model_max_length"] == 2048
    assert "<|im_start|>" in (out / "chat_template.jinja").read_text()

    from librachem.llm.client import make_client
    from librachem.llm.config import LLMParams

    p = LLMParams(backend="local", max_tokens=16)
    client = make_client(p, cache_dir=None, local_model_dir=out)
    assert client.revision == prov["revision"]
    (c,) = client.complete([p.request([{"role": "user", "content": "What is water made of?"}])])
    assert c.ok and c.text.strip() and c.completion_tokens >= 1
