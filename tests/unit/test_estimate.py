"""`librachem estimate`: counts match what the stages send, costs are priced, nothing is called."""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from click.testing import CliRunner

from librachem.cli import main

REPO = Path(__file__).resolve().parents[2]
COMPOUNDS = REPO / "data" / "seeds" / "compounds.csv"


def _run(tmp_path, overrides, *extra):
    from librachem.commands.profiles import merge

    params = merge(yaml.safe_load((REPO / "params.yaml").read_text()), overrides)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return CliRunner().invoke(main, ["estimate", "--params", str(path), "--compounds",
                                     str(COMPOUNDS), *extra])


def test_paper_profile_estimate_counts_and_prices(tmp_path):
    result = _run(tmp_path, {}, "--profile", "paper", "--json")
    assert result.exit_code == 0, result.output
    figures = {f["stage"]: f for f in json.loads(result.output[result.output.index("["):])}
    # issue 16 counted these from the code on the paper profile
    assert figures["generate"]["calls"] == 2568
    assert figures["augment"]["calls"] == 15932
    assert abs(figures["evaluate:gpt4o"]["calls"] - 1216) <= 8
    assert abs(figures["evaluate:judge"]["calls"] - 8960) <= 32
    for f in figures.values():
        low, high = f["prompt_tokens"]
        assert 0 < low <= high
        cost = f["cost_usd"]  # dated snapshots are priced: no None anywhere
        assert 0 < cost["floor"] < cost["expected"] < cost["ceiling"]
        assert f["wall_s"] > 0
    # legitimate requests: helpful (768) + over-refusal (256); illegitimate: 256 + 256
    assert 1284 * 512 < figures["generate"]["output_tokens_bound"] < 1284 * 1024


def test_estimate_of_the_small_default_costs_nothing_and_is_readable(tmp_path):
    result = _run(tmp_path, {"generate": {"max_requests": {"train": 8, "test": 4}},
                             "augment": {"n_prompt_variants": 1}})
    assert result.exit_code == 0, result.output
    assert "generate" in result.output and "augment" in result.output
    assert "total:" in result.output and "$0.00 (ceiling)" in result.output
