"""Issue 15, evaluate: local answers go through the call cache keyed by model identity, every
endpoint key is checked before any generation, CUDA + bf16 is picked when present."""

from __future__ import annotations

import pytest

from librachem.common.errors import LLMError
from tests.eval_fixtures import write_random_adapter, write_rephrased, write_triplets
from tests.tiny_model import save_tiny_base


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    save_tiny_base(root / "base", tie_word_embeddings=False)  # a tied random model answers only newlines
    write_random_adapter(root / "base", root / "dpo")
    from librachem.train.sft import SftParams, train_sft

    train_sft(SftParams(enabled=False), None, root / "base", root / "sft", root / "live_sft")
    return root


def _paths(tmp_path, models, run: str):
    from librachem.evaluate.params import EvalPaths

    if not (tmp_path / "triplets").exists():
        write_triplets(tmp_path / "triplets", n_per_cell=2)
        write_rephrased(tmp_path / "rephrased", n_rephrased=2)
    out = tmp_path / run
    return EvalPaths(triplets=tmp_path / "triplets", rephrased=tmp_path / "rephrased",
                     base=models / "base", sft=models / "sft", dpo=models / "dpo",
                     out_dir=out / "eval", metrics=out / "eval.json", plots_dir=out / "plots",
                     cache_dir=tmp_path / "cache")


class CountingLoader:
    """The real loader, counting model loads and generate() calls."""

    def __init__(self, paths):
        from librachem.evaluate.generation import local_loader

        self.inner = local_loader(paths)
        self.loads, self.generate_calls = 0, 0

    def __call__(self, name):
        self.loads += 1
        model, tok = self.inner(name)
        original = model.generate

        def generate(*a, **kw):
            self.generate_calls += 1
            return original(*a, **kw)

        model.generate = generate
        return model, tok


PARAMS = {"generation": {"max_new_tokens": 6, "batch_size": 4},
          "bootstrap": {"n_resamples": 20}}


def test_cached_local_generations_replay_with_zero_model_calls(tmp_path, models):
    import polars as pl

    from librachem.evaluate.params import EvaluateParams
    from librachem.evaluate.stage import evaluate

    params = EvaluateParams.model_validate(PARAMS)
    first_paths = _paths(tmp_path, models, "first")
    first = CountingLoader(first_paths)
    evaluate(params, first_paths, loader=first)
    assert first.loads == 2 and first.generate_calls > 0  # base + dpo (sft disabled)

    again_paths = _paths(tmp_path, models, "again")
    again = CountingLoader(again_paths)
    evaluate(params, again_paths, loader=again)
    assert again.loads == 0 and again.generate_calls == 0
    a = pl.read_parquet(first_paths.out_dir / "responses.parquet")
    b = pl.read_parquet(again_paths.out_dir / "responses.parquet")
    assert a.select("model", "prompt", "response").equals(b.select("model", "prompt", "response"))
    assert (first_paths.out_dir / "eval_config.json").read_bytes() == \
        (again_paths.out_dir / "eval_config.json").read_bytes()


def test_replayed_answers_still_pass_the_adapter_probe(tmp_path, models):
    """Answers from the cache load no model, but the adapter probe (issue 18) still stands for
    them: a stored passed check of the same model identity, or else a load for the probe."""
    import shutil

    from librachem.evaluate.params import EvaluateParams
    from librachem.evaluate.stage import evaluate

    params = EvaluateParams.model_validate(PARAMS)
    evaluate(params, _paths(tmp_path, models, "first"), loader=CountingLoader(
        _paths(tmp_path, models, "first")))
    shutil.rmtree(tmp_path / "cache" / "probes")  # no stored check: probe by loading
    paths = _paths(tmp_path, models, "again")
    again = CountingLoader(paths)
    evaluate(params, paths, loader=again)
    assert again.generate_calls == 0 and again.loads == 2  # dpo, then base for its logits
    assert list((tmp_path / "cache" / "probes").glob("*.json"))  # stored again


def test_the_cache_key_holds_the_model_identity(tmp_path, models):
    from librachem.evaluate.generation import model_identity

    paths = _paths(tmp_path, models, "x")
    base = model_identity("base", paths, "float32")
    dpo = model_identity("dpo", paths, "float32")
    assert base.startswith("base:") and base.endswith("|float32")
    assert "dpo:" in dpo and "sft:None" in dpo and dpo != base
    assert model_identity("dpo", paths, "bfloat16") != dpo


def test_a_missing_judge_key_fails_before_any_generation(tmp_path, models, monkeypatch):
    from librachem.evaluate.params import EvaluateParams
    from librachem.evaluate.stage import evaluate

    monkeypatch.delenv("LIBRACHEM_TEST_JUDGE_KEY", raising=False)
    monkeypatch.delenv("LIBRACHEM_TEST_BASELINE_KEY", raising=False)
    params = EvaluateParams.model_validate({
        **PARAMS,
        "judge": {"llm": {"backend": "openai", "model": "gpt-4o-mini-2024-07-18",
                          "api_key_env": "LIBRACHEM_TEST_JUDGE_KEY"}},
        "baselines": [{"name": "gpt4o", "llm": {"backend": "openai", "model": "gpt-4o",
                                                "api_key_env": "LIBRACHEM_TEST_BASELINE_KEY"}}]})
    paths = _paths(tmp_path, models, "nokey")
    loader = CountingLoader(paths)
    with pytest.raises(LLMError) as err:
        evaluate(params, paths, loader=loader)
    assert "evaluate.judge.llm: LIBRACHEM_TEST_JUDGE_KEY" in str(err.value)
    assert "evaluate.baselines[gpt4o].llm: LIBRACHEM_TEST_BASELINE_KEY" in str(err.value)
    assert loader.loads == 0 and loader.generate_calls == 0
    assert not paths.metrics.exists()


@pytest.mark.parametrize("cuda,bf16,expected", [
    (False, None, ("cpu", "float32")), (True, True, ("cuda", "bfloat16")),
    (True, False, ("cuda", "float16"))])
def test_evaluate_picks_cuda_and_bf16_when_present(monkeypatch, tmp_path, models, cuda, bf16,
                                                   expected):
    import torch

    import librachem.common.adapters as adapters
    from librachem.common.devices import inference_placement
    from librachem.evaluate.generation import local_loader

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    place = inference_placement()
    assert (place.device, place.dtype) == expected
    seen = {}

    def fake_load_aligned(*dirs, **kwargs):
        seen.update(kwargs, dirs=dirs)
        raise RuntimeError("stop before loading")

    monkeypatch.setattr(adapters, "load_aligned", fake_load_aligned)
    with pytest.raises(RuntimeError, match="stop"):
        local_loader(_paths(tmp_path, models, "p"))("dpo")
    if cuda:
        assert seen["device"] == "cuda" and seen["dtype"] == getattr(torch, expected[1])
    else:
        assert "device" not in seen and "dtype" not in seen  # the CPU path is unchanged
