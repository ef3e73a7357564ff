"""Contract: every params.yaml section, every profile, and every packaged template load."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from librachem.cli import main
from librachem.commands.profiles import apply_profile, available_profiles
from librachem.common.config import (
    SECTIONS,
    read_yaml,
    section_model,
    validate_all,
    validate_section,
)
from librachem.common.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]
PARAMS = ROOT / "params.yaml"


def test_every_section_of_params_yaml_validates():
    data = read_yaml(PARAMS)
    assert set(data) == set(SECTIONS)
    models = validate_all(data)
    assert set(models) == set(SECTIONS)


def test_section_names_match_stages_and_modules():
    dvc = read_yaml(ROOT / "dvc.yaml")["stages"]
    assert set(dvc) == set(SECTIONS)
    for name in SECTIONS:
        assert (ROOT / "stages" / f"{name}.py").is_file()
        # the stage's own subpackage (sft and dpo share librachem.train) holds its params class
        module = SECTIONS[name].split(":")[0]
        assert module.split(".")[1] == ("train" if name in ("sft", "dpo") else name), module
        assert (ROOT / "src" / Path(*module.split("."))).with_suffix(".py").is_file()
        assert dvc[name]["params"] == [name], f"stage {name} must read only its own section"


def test_yaml_1_2_floats_load_as_floats(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("dpo:\n  learning_rate: 5e-6\n  other: 1E3\n  text: '5e-6'\n")
    data = read_yaml(path)
    assert data["dpo"]["learning_rate"] == pytest.approx(5e-6)
    assert isinstance(data["dpo"]["other"], float)
    assert data["dpo"]["text"] == "5e-6"


def test_params_rewritten_by_dvc_exp_run_still_validate(tmp_path):
    """`dvc exp run -S` rewrites params.yaml with ruamel (YAML 1.2): quotes go, so an
    unquoted 1:2 must load as the ratio "1:2", not as YAML 1.1's base-60 integer 62."""
    path = tmp_path / "p.yaml"
    path.write_text("seeds:\n  ratio: 1:2\n  mode: both\n  test_fraction: 0.2\n  seed: 0\n"
                    "dpo:\n  beta: 0.2\n")
    data = read_yaml(path)
    assert data["seeds"]["ratio"] == "1:2" and data["dpo"]["beta"] == 0.2
    assert validate_section(section_model("seeds"), "seeds", data["seeds"]).ratio == "1:2"


@pytest.mark.parametrize("content, message", [
    ("dpo:\n  beta: 0.1\n  beta: 0.5\n", "duplicate key 'beta'"),
    ("sft: {}\nsft: {}\n", "duplicate key 'sft'"),
])
def test_duplicate_keys_are_errors(tmp_path, content, message):
    path = tmp_path / "p.yaml"
    path.write_text(content)
    with pytest.raises(ConfigError, match=message):
        read_yaml(path)


def test_non_utf8_params_and_empty_section_are_clear_errors(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_bytes(b"dpo:\n  beta: 0.1 # caf\xe9\n")
    with pytest.raises(ConfigError, match="not UTF-8"):
        read_yaml(path)
    with pytest.raises(ConfigError, match="sft: the section is empty"):
        validate_section(section_model("sft"), "sft", None)


def test_errors_name_key_value_and_expectation():
    model = section_model("dpo")
    raw = read_yaml(PARAMS)["dpo"]
    with pytest.raises(ConfigError) as err:
        validate_section(model, "dpo", {**raw, "beta": "high"})
    assert "dpo.beta = 'high'" in str(err.value) and "number" in str(err.value)
    with pytest.raises(ConfigError, match=r"dpo.betta: unknown key"):
        validate_section(model, "dpo", {**raw, "betta": 0.1})


def test_unknown_and_missing_sections_fail():
    data = read_yaml(PARAMS)
    with pytest.raises(ConfigError, match="sfft: unknown section"):
        validate_all({**data, "sfft": {}})
    without = {k: v for k, v in data.items() if k != "evaluate"}
    with pytest.raises(ConfigError, match="evaluate: section is missing"):
        validate_all(without)


@pytest.mark.parametrize("name", available_profiles())
def test_profiles_validate(name):
    merged = apply_profile(read_yaml(PARAMS), name)
    assert set(merged) == set(SECTIONS)


def test_paper_profile_is_paper_scale():
    p = apply_profile(read_yaml(PARAMS), "paper")
    assert p["seeds"]["ratio"] == "1:2"
    assert p["generate"]["generator"]["backend"] == "openai"
    assert p["evaluate"]["judge"]["llm"]["backend"] == "openai"
    assert (p["augment"]["n_prompt_variants"], p["augment"]["n_chosen_variants"],
            p["augment"]["n_rejected_variants"]) == (5, 5, 5)
    assert p["dpo"]["precision"] == "bf16" and p["dpo"]["qlora"] is True
    assert p["base_model"]["pretrained"]


def test_cli_profile_and_check_params(tmp_path):
    out = tmp_path / "params.yaml"
    runner = CliRunner()
    res = runner.invoke(main, ["profile", "paper", "--params", str(PARAMS), "--out", str(out)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["check-params", "--params", str(out), "--params-only"])
    assert res.exit_code == 0 and f"{len(SECTIONS)} sections valid" in res.output
    bad = tmp_path / "bad.yaml"
    bad.write_text(out.read_text().replace("beta: 0.1", "beta: -3"))
    res = runner.invoke(main, ["check-params", "--params", str(bad)])
    assert res.exit_code != 0 and "dpo.beta" in res.output
    res = runner.invoke(main, ["profile", "nope", "--params", str(PARAMS), "--out", str(out)])
    assert res.exit_code != 0 and "unknown profile" in res.output


@pytest.mark.parametrize("literal", ["010", "-010", "09", "007", "0o10", "0x1F", "-0x1f", "0b11",
                                     "1_000", "0", "+7", "12", "1e3", "5e-6", "0.5", "1:2",
                                     "true", "False", "yes", "no", "on", "off", "~", "null"])
def test_scalars_load_as_dvc_reads_them(literal):
    """DVC reads params.yaml with ruamel.yaml (YAML 1.2); our loader must see the same value,
    or `dvc params diff` shows one number and the stage uses another (YAML 1.1: 010 = 8)."""
    from ruamel.yaml import YAML

    from librachem.common.config import parse_yaml

    ours = parse_yaml(f"a: {literal}")["a"]
    dvc = YAML(typ="safe", pure=True).load(f"a: {literal}")["a"]
    assert ours == dvc and type(ours) is type(dvc)
