"""Contract: the repo's params.yaml `generate` / `augment` sections and every data template load."""

from __future__ import annotations

from pathlib import Path

import pytest

from librachem.augment.rephrase import load_rephrase_prompts
from librachem.augment.stage import AugmentParams
from librachem.common.config import load_section, validate_section
from librachem.common.errors import ConfigError
from librachem.generate.answers import load_answer_prompts
from librachem.generate.requests import load_request_templates
from librachem.generate.stage import GenerateParams

PARAMS = Path(__file__).resolve().parents[2] / "params.yaml"


def test_repo_params_sections_load():
    gen = load_section(GenerateParams, "generate", PARAMS)
    aug = load_section(AugmentParams, "augment", PARAMS)
    assert gen.generator.backend == "local" and aug.rephraser.backend == "local"
    assert gen.max_requests.train > 0 and aug.n_prompt_variants > 0


def test_templates_load_with_versions():
    assert load_request_templates().version
    assert load_answer_prompts().version
    prompts = load_rephrase_prompts()
    assert prompts.version and len(prompts.styles) >= 5


@pytest.mark.parametrize(("model", "section", "raw", "needle"), [
    (GenerateParams, "generate", {"intent_set": "all"}, "generate.intent_set"),
    (GenerateParams, "generate", {"hazard": {"action": "keep"}}, "generate.hazard.action"),
    (GenerateParams, "generate", {"max_drop_rate": 2}, "generate.max_drop_rate"),
    (AugmentParams, "augment", {"combination": "cross"}, "augment.combination"),
    (AugmentParams, "augment", {"length_band": [1.5, 2.0]}, "length_band"),
    (AugmentParams, "augment", {"n_prompt_variant": 2}, "unknown key"),
])
def test_bad_values_name_the_key(model, section, raw, needle):
    with pytest.raises(ConfigError, match=needle):
        validate_section(model, section, raw)
