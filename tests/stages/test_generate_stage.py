"""`stages/generate.py` through CliRunner with the fake backend on a tiny seeds table."""

from __future__ import annotations

import json

import yaml
from click.testing import CliRunner

from librachem.common.shards import read_manifest, read_shards
from librachem.common.triplets import TRIPLET_SCHEMA
from stages.generate import main
from tests.fakes import tiny_seeds

SECTION = {"generator": {"backend": "fake", "fake_script": "tests.fakes:generator"},
           "max_requests": {"train": 12, "test": 4}, "chunk_size": 8}


def _invoke(tmp_path, section, *extra):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"generate": section}))
    seeds = tiny_seeds(tmp_path / "seeds.parquet", markers=("HAZARD",))
    return CliRunner().invoke(main, [
        "--params", str(params), "--seeds", str(seeds), "--out", str(tmp_path / "triplets"),
        "--metrics", str(tmp_path / "metrics" / "data.json"),
        "--cache-dir", str(tmp_path / "cache"), "--base-model-dir", str(tmp_path / "none"),
        *extra])


def test_stage_writes_shards_manifest_and_metrics(tmp_path):
    result = _invoke(tmp_path, SECTION)
    assert result.exit_code == 0, result.output
    manifest = read_manifest(tmp_path / "triplets")
    assert manifest["splits"]["train"] + manifest["splits"]["test"] == manifest["rows"] > 0
    assert manifest["meta"]["params"]["max_requests"] == {"train": 12, "test": 4}
    table = read_shards(tmp_path / "triplets", TRIPLET_SCHEMA)
    metrics = json.loads((tmp_path / "metrics" / "data.json").read_text())
    assert metrics["rows"] == table.num_rows
    assert metrics["requests"] == 16
    assert metrics["llm"]["cache_misses"] == 32


def test_stage_rerun_replays_cache_and_replay_only_works(tmp_path):
    assert _invoke(tmp_path, SECTION).exit_code == 0
    first = read_manifest(tmp_path / "triplets")["shards"]
    result = _invoke(tmp_path, SECTION, "--replay-only")
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "metrics" / "data.json").read_text())
    assert metrics["llm"]["cache_hits"] == 32 and metrics["llm"]["cache_misses"] == 0
    assert read_manifest(tmp_path / "triplets")["shards"] == first


def test_stage_bad_params_and_gate_give_clean_errors(tmp_path):
    result = _invoke(tmp_path, {**SECTION, "beta": 1})
    assert result.exit_code == 1 and "generate.beta: unknown key" in result.output
    strict = {**SECTION, "max_drop_rate": 0.0,
              "fallback": {"refusal": "none", "over_refusal": "none", "compliance": "none"},
              "generator": {"backend": "fake", "fake_script": "tests.fakes:always_sure"}}
    result = _invoke(tmp_path, strict)
    assert result.exit_code == 1 and "QualityGateError" in result.output
