"""Bad training params fail clearly, before any training."""

import pytest

from librachem.common.config import validate_section
from librachem.common.errors import ConfigError, TrainingError
from librachem.train.dpo import DpoParams
from librachem.train.loop import lora_config, resolve_device
from librachem.train.params import LoraParams
from librachem.train.sft import SftParams
from tests.tiny_model import tiny_model


@pytest.mark.parametrize(("raw", "message"), [
    ({"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0]}, "one weight per loss_type"),
    ({"loss_type": ["sigmoid", "sft"], "loss_weights": [1.0, -1.0]}, "must be >= 0"),
    ({"loss_type": ["sigmoid", "sft"], "loss_weights": [0.0, 0.0]}, "at least one"),
    ({"loss_type": ["dpo"]}, "dpo.loss_type.0 = 'dpo'"),
    ({"max_steps": 0}, "dpo.max_steps = 0"),
    ({"learning_rate": -1e-4}, "dpo.learning_rate = -0.0001"),
    ({"precision": "fp16"}, "dpo.precision = 'fp16'"),
    ({"lora": {"r": 0}}, "dpo.lora.r = 0"),
    ({"lora": {"target_modules": []}}, "dpo.lora.target_modules"),
    ({"betta": 0.2}, "dpo.betta: unknown key"),
    ({"loss_type": ["exo_pair"]}, "label_smoothing > 0"),
])
def test_bad_dpo_params_name_the_key(raw, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("(", r"\(")):
        validate_section(DpoParams, "dpo", raw)


def test_bad_sft_params_name_the_key():
    with pytest.raises(ConfigError, match=r"sft\.format = 'alpaca'"):
        validate_section(SftParams, "sft", {"format": "alpaca"})


def test_repository_params_load():
    assert validate_section(SftParams, "sft", {}).enabled is True
    from librachem.common.config import load_section

    dpo = load_section(DpoParams, "dpo")
    assert dpo.loss_weights is None or len(dpo.loss_weights) == len(dpo.loss_type)
    sft = load_section(SftParams, "sft")
    assert sft.format == dpo.format  # training formats of the two adapters must agree


def test_lora_target_matching_nothing_is_an_error():
    model = tiny_model()
    assert lora_config(LoraParams(target_modules=["q_proj", "down_proj"]), model).r == 8
    with pytest.raises(TrainingError, match=r"\['qkv_proj'\] match no module"):
        lora_config(LoraParams(target_modules=["q_proj", "qkv_proj"]), model)


def test_qlora_without_cuda_is_a_clear_error():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this checks the CPU refusal")
    with pytest.raises(TrainingError, match="qlora: true needs a CUDA GPU"):
        resolve_device(validate_section(DpoParams, "dpo", {"qlora": True}))
    assert resolve_device(validate_section(DpoParams, "dpo", {"precision": "bf16"})) == {
        "device": "cpu", "bf16": True, "use_cpu": True}
