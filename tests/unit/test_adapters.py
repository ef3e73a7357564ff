"""Adapters that do not match the model fail to load instead of loading as a no-op
(issue 18 point 1), on a tiny random Llama and random LoRA adapters."""

from __future__ import annotations

import pytest

from librachem.common.adapters import ADAPTER_WEIGHTS, apply_adapter, load_aligned
from librachem.common.errors import TrainingError
from tests.eval_fixtures import write_random_adapter
from tests.tiny_model import save_tiny_base


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return save_tiny_base(tmp_path_factory.mktemp("adapters") / "base")


def _rewrite(folder, edit):
    from safetensors.torch import load_file, save_file

    path = folder / ADAPTER_WEIGHTS
    save_file(edit(load_file(path)), path)


def test_a_matching_adapter_loads(base, tmp_path):
    from transformers import AutoModelForCausalLM

    write_random_adapter(base, tmp_path / "dpo")
    model = apply_adapter(AutoModelForCausalLM.from_pretrained(base), tmp_path / "dpo")
    assert any("lora_B" in n for n, _ in model.named_parameters())


def test_renamed_adapter_keys_fail_instead_of_loading_as_the_base_model(base, tmp_path):
    """PEFT only warns here and the "aligned" model is exactly the base model."""
    folder = write_random_adapter(base, tmp_path / "dpo")
    _rewrite(folder, lambda sd: {k.replace(".layers.", ".blocks."): v for k, v in sd.items()})
    with pytest.raises(TrainingError, match=r"8 missing adapter keys .* 8 unexpected keys"):
        load_aligned(base, None, folder)


def test_a_partial_or_padded_adapter_fails(base, tmp_path):
    folder = write_random_adapter(base, tmp_path / "partial")
    _rewrite(folder, lambda sd: {k: v for k, v in sd.items() if ".layers.1." not in k})
    with pytest.raises(TrainingError, match=r"4 missing adapter keys"):
        load_aligned(base, None, folder)
    folder = write_random_adapter(base, tmp_path / "padded")
    _rewrite(folder, lambda sd: {**sd, "base_model.model.lm_head.lora_A.weight":
                                 next(iter(sd.values())).clone()})
    with pytest.raises(TrainingError, match=r"0 missing adapter keys .* 1 unexpected keys"):
        load_aligned(base, None, folder)
