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
    ({"revisionn": "x"}, "base_model.revisionn: unknown key"),
    ({"revision": "abc"}, "applies to a hub id"),
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

    from librachem.llm.factory import make_client
    from librachem.llm.config import LLMParams

    p = LLMParams(backend="local", max_tokens=16)
    client = make_client(p, cache_dir=None, local_model_dir=out)
    assert client.revision == prov["revision"]
    (c,) = client.complete([p.request([{"role": "user", "content": "What is water made of?"}])])
    assert c.ok and c.text.strip() and c.completion_tokens >= 1


# ------------------------------------------------------------------ pretrained: folder and hub

def _bf16_folder(path: Path, chat_template: bool = True) -> Path:
    import torch

    from tests.tiny_model import tiny_model, tiny_tokenizer

    tiny_model().to(torch.bfloat16).save_pretrained(path)
    tok = tiny_tokenizer()
    if not chat_template:
        tok.chat_template = None
        (path / "chat_template.jinja").unlink(missing_ok=True)
    tok.save_pretrained(path)
    if not chat_template:
        (path / "chat_template.jinja").unlink(missing_ok=True)
    return path


@pytest.fixture(scope="module")
def bf16_src(tmp_path_factory):
    return _bf16_folder(tmp_path_factory.mktemp("src"))


def _run(tmp_path: Path, **section):
    params = write_params(tmp_path, **section)
    out = tmp_path / "base"
    result = CliRunner().invoke(main, ["--params", str(params), "--out", str(out)])
    return result, out


def test_local_bf16_folder_stays_bf16(tmp_path, bf16_src):
    from safetensors import safe_open

    result, out = _run(tmp_path, pretrained=str(bf16_src), model_max_length=1024)
    assert result.exit_code == 0, result.output
    src_w, out_w = bf16_src / "model.safetensors", out / "model.safetensors"
    assert out_w.stat().st_size == src_w.stat().st_size  # no fp32 re-save: same bytes
    assert out_w.read_bytes() == src_w.read_bytes()
    with safe_open(str(out_w), framework="pt") as fh:
        assert {fh.get_slice(k).get_dtype() for k in fh.keys()} == {"BF16"}
    prov = json.loads((out / "librachem_model.json").read_text())
    assert prov["dtype"] == "bfloat16" and prov["revision"].startswith("weights-sha256:")
    assert prov["files"]["model.safetensors"] and prov["n_params"] > 3_000_000
    assert json.loads((out / "tokenizer_config.json").read_text())["model_max_length"] == 1024
    assert not list(tmp_path.glob(".tmp-*"))


def test_folder_without_chat_template_is_named(tmp_path):
    src = _bf16_folder(tmp_path / "src", chat_template=False)
    result, out = _run(tmp_path, pretrained=str(src))
    assert result.exit_code == 1 and "no chat template" in result.output
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


class _FakeHub:
    """Stands in for the hub: model_info gives a commit, snapshot_download copies a folder."""

    COMMIT = "0123456789abcdef0123456789abcdef01234567"

    def __init__(self, src: Path, error: Exception | None = None):
        self.src, self.error, self.calls = src, error, []

    def install(self, monkeypatch):
        import huggingface_hub

        hub = self

        class Api:
            def model_info(self, repo_id, revision=None, **kw):
                hub.calls.append(("info", repo_id, revision))
                if hub.error is not None:
                    raise hub.error
                return type("Info", (), {"sha": hub.COMMIT})()

        def snapshot(repo_id, revision=None, local_dir=None, allow_patterns=None,
                     ignore_patterns=None, **kw):
            hub.calls.append(("download", repo_id, revision, tuple(allow_patterns),
                              tuple(ignore_patterns)))
            import shutil

            for f in hub.src.iterdir():
                shutil.copy2(f, Path(local_dir) / f.name)
            (Path(local_dir) / ".cache").mkdir()
            return str(local_dir)

        monkeypatch.setattr(huggingface_hub, "HfApi", Api)
        monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot)
        return self


@pytest.fixture
def online(monkeypatch):
    """The user set no offline variable (the stage's own default only)."""
    from librachem.common import stagecli

    for var in stagecli.HUB_OFFLINE_VARS:
        monkeypatch.delenv(var, raising=False)
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # as if defaulted at import
    monkeypatch.setattr(stagecli, "DEFAULTED", {})
    return constants


def test_hub_id_downloads_the_pinned_commit(tmp_path, bf16_src, monkeypatch, online):
    hub = _FakeHub(bf16_src).install(monkeypatch)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_value_xyz")
    result, out = _run(tmp_path, pretrained="org/model-8b-instruct", revision=_FakeHub.COMMIT)
    assert result.exit_code == 0, result.output
    assert hub.calls[0] == ("info", "org/model-8b-instruct", _FakeHub.COMMIT)
    assert hub.calls[1][:3] == ("download", "org/model-8b-instruct", _FakeHub.COMMIT)
    assert "*/*" in hub.calls[1][4]  # no sub-folders (Llama's original/ checkpoint)
    assert online.HF_HUB_OFFLINE is False  # the stage's default was lifted
    prov = json.loads((out / "librachem_model.json").read_text())
    assert prov["revision"] == f"hub:org/model-8b-instruct@{_FakeHub.COMMIT}"
    assert prov["commit"] == _FakeHub.COMMIT and prov["dtype"] == "bfloat16"
    assert not (out / ".cache").exists()
    # the token is never written anywhere
    for f in out.iterdir():
        assert b"hf_secret_value_xyz" not in f.read_bytes()
    assert "hf_secret_value_xyz" not in result.output


def test_explicit_offline_environment_wins(tmp_path, bf16_src, monkeypatch, online):
    hub = _FakeHub(bf16_src).install(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the user's own setting
    result, out = _run(tmp_path, pretrained="org/model")
    assert result.exit_code == 1 and "HF_HUB_OFFLINE=1" in result.output
    assert "offline" in result.output and hub.calls == [] and not out.exists()


def _hub_errors():
    import httpx2 as httpx
    from huggingface_hub.errors import (
        GatedRepoError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    resp = httpx.Response(401, request=httpx.Request("GET", "https://huggingface.co/api/x"))
    return [
        (GatedRepoError("gated", response=resp), "gated model"),
        (GatedRepoError("gated", response=resp), "HF_TOKEN"),
        (RepositoryNotFoundError("nf", response=resp), "no such model on the hub"),
        (RevisionNotFoundError("rev", response=resp), "does not exist in that repository"),
        (OfflineModeIsEnabled("off"), "cannot be reached"),
    ]


@pytest.mark.parametrize("index", range(5))
def test_hub_errors_name_the_cause(tmp_path, bf16_src, monkeypatch, online, index):
    error, message = _hub_errors()[index]
    _FakeHub(bf16_src, error).install(monkeypatch)
    result, out = _run(tmp_path, pretrained="org/model", revision="main")
    assert result.exit_code == 1 and message in result.output, result.output
    assert not out.exists() and not list(tmp_path.glob(".tmp-*"))


@pytest.mark.parametrize("value,shown,user_var", [(None, "1", "None"), ("0", "0", "None"),
                                                  ("1", "1", "HF_HUB_OFFLINE")])
def test_offline_defaults_never_override_the_environment(value, shown, user_var):
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items()
           if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE")}
    env["PYTHONPATH"] = str(REPO / "src")
    if value is not None:
        env["HF_HUB_OFFLINE"] = value
    code = ("import os, librachem.common.stagecli as s; "
            "print(os.environ['HF_HUB_OFFLINE'], s.user_offline_var())")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.split()
    assert out == [shown, user_var]
    # and the Makefile no longer exports them over the user's environment
    assert "export HF_HUB_OFFLINE" not in (REPO / "Makefile").read_text()
