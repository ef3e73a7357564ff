"""`stages/augment.py` through CliRunner with the fake backend on tiny triplets."""

from __future__ import annotations

import json

import yaml
from click.testing import CliRunner

from librachem.common.shards import read_manifest, read_shards
from librachem.common.triplets import AUGMENTED_SCHEMA
from stages.augment import main
from stages.generate import main as generate_main
from tests.fakes import tiny_seeds

FAKE = {"backend": "fake", "fake_script": "tests.fakes:generator"}


def _setup(tmp_path, augment):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"generate": {"generator": FAKE, "chunk_size": 8},
                                      "augment": augment}))
    seeds = tiny_seeds(tmp_path / "seeds.parquet")
    result = CliRunner().invoke(generate_main, [
        "--params", str(params), "--seeds", str(seeds), "--out", str(tmp_path / "triplets"),
        "--metrics", str(tmp_path / "data.json"), "--cache-dir", str(tmp_path / "cache")])
    assert result.exit_code == 0, result.output
    return params


def _invoke(tmp_path, params, *extra):
    return CliRunner().invoke(main, [
        "--params", str(params), "--triplets", str(tmp_path / "triplets"),
        "--out", str(tmp_path / "augmented"), "--test-out", str(tmp_path / "rtest"),
        "--metrics", str(tmp_path / "augment.json"), "--cache-dir", str(tmp_path / "cache"),
        *extra])


def test_stage_writes_both_shard_sets_and_metrics(tmp_path):
    params = _setup(tmp_path, {"rephraser": FAKE, "near_dup_threshold": 0.99})
    result = _invoke(tmp_path, params)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "augment.json").read_text())
    table = read_shards(tmp_path / "augmented", AUGMENTED_SCHEMA)
    assert table.num_rows == metrics["rows_out"] > metrics["rows_in"]
    assert read_manifest(tmp_path / "rtest")["splits"] == {"test": metrics["rephrased_test_rows"]}
    assert metrics["llm"]["cache_misses"] > 0
    again = _invoke(tmp_path, params, "--replay-only")
    assert again.exit_code == 0, again.output
    assert json.loads((tmp_path / "augment.json").read_text())["llm"]["cache_misses"] == 0


def test_stage_missing_triplets_is_a_clean_error(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"augment": {"rephraser": FAKE}}))
    result = _invoke(tmp_path, params)
    assert result.exit_code == 1 and "SchemaError" in result.output
