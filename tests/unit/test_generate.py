"""The generate stage's core on the fake LLM: role swap, labels, hazard, gates, fallbacks,
schema, manifest, determinism, kill-and-resume."""

from __future__ import annotations

import json

import datasets
import pytest

from librachem.common.errors import QualityGateError, SchemaError
from librachem.common.hazard import REDACTION_MARK, scan
from librachem.common.refusal import classify
from librachem.common.shards import read_manifest, read_shards
from librachem.common.triplets import TRIPLET_SCHEMA
from librachem.generate.stage import GenerateParams, run_generate
from librachem.llm.factory import make_client
from librachem.llm.fake import FakeClient
from tests.fakes import DieAfter, Killed, generator, tiny_seeds

FAKE = {"backend": "fake", "fake_script": "tests.fakes:generator"}


def _params(**kw):
    base = {"generator": FAKE, "max_requests": {"train": 0, "test": 0}, "chunk_size": 4}
    base.update(kw)
    return GenerateParams.model_validate(base)


def _run(tmp_path, params=None, markers=(), client=None, name="out"):
    seeds = tiny_seeds(tmp_path / "seeds.parquet", markers=markers)
    params = params or _params()
    client = client or FakeClient(generator)
    metrics = run_generate(seeds, tmp_path / name, tmp_path / f"{name}.json", params, client)
    return metrics, read_shards(tmp_path / name, TRIPLET_SCHEMA).to_pylist()


def test_role_swap_by_label(tmp_path):
    _, rows = _run(tmp_path)
    assert rows
    for row in rows:
        if row["label"] == "legitimate":
            assert (row["chosen_kind"], row["rejected_kind"]) == ("helpful", "over_refusal")
            assert classify(row["chosen"]) != "refusal"
            assert classify(row["rejected"]) == "refusal"
        else:
            assert (row["chosen_kind"], row["rejected_kind"]) == ("refusal", "compliance")
            assert classify(row["chosen"]) == "refusal"
            assert classify(row["rejected"]) != "refusal"
        assert row["phase"] == "generate" and row["chosen_source"] == "llm"


def test_intent_labels_and_provenance(tmp_path):
    metrics, rows = _run(tmp_path)
    pairs = {(r["compound_class"], r["intent"], r["label"]) for r in rows}
    assert ("illegitimate", "synthesis", "illegitimate") in pairs
    assert ("illegitimate", "first_aid", "legitimate") in pairs
    assert ("legitimate", "synthesis", "legitimate") in pairs
    assert {r["split"] for r in rows} == {"train", "test"}
    assert metrics["rows_by_label"]["illegitimate"] == sum(r["label"] == "illegitimate"
                                                           for r in rows)
    assert all(r["template_id"] and r["generator_model"] == "fake-model" for r in rows)
    assert len({r["row_id"] for r in rows}) == len(rows)


def test_hazard_redaction_counted_and_raw_redacted(tmp_path):
    metrics, rows = _run(tmp_path, markers=("HAZARD",))
    flagged = [r for r in rows if "HAZARD" in r["subject"] and r["label"] == "illegitimate"]
    assert flagged and all(r["hazard_outcome"] == "redacted" for r in flagged)
    for row in flagged:
        assert REDACTION_MARK in row["rejected"] and REDACTION_MARK in row["rejected_raw"]
        assert scan(row["rejected"]).score == 0
    assert metrics["hazard"]["redacted"] == len(flagged)
    assert all(r["hazard_outcome"] == "not_scanned" for r in rows
               if r["compound_class"] == "legitimate")


def test_call_cache_never_holds_the_flagged_raw_reply_and_replays_identically(tmp_path):
    """Requests tied to illegitimate compounds are scanned by the client: the cache stores
    the redacted text with the raw score, and a replay-only rerun gives the same shards."""
    cache = tmp_path / "cache"
    params = _params()
    first = make_client(params.generator, cache_dir=cache)
    metrics, rows = _run(tmp_path, markers=("HAZARD",), client=first, name="a")
    assert metrics["hazard"]["redacted"] > 0
    entries = [p.read_text() for p in cache.glob("??/*.json")]
    assert entries and not any("50 mL of reagent A" in e for e in entries)
    scores = [json.loads(e)["completion"]["hazard_score"] for e in entries]
    assert max(s for s in scores if s is not None) >= params.hazard.threshold
    replay = make_client(params.generator, cache_dir=cache, replay_only=True)
    metrics2, rows2 = _run(tmp_path, markers=("HAZARD",), client=replay, name="b")
    assert rows2 == rows and metrics2["hazard"] == metrics["hazard"]
    assert (tmp_path / "a" / "train-00000.parquet").read_bytes() == \
        (tmp_path / "b" / "train-00000.parquet").read_bytes()


def test_hazard_drop_action(tmp_path):
    params = _params(hazard={"action": "drop"}, fallback={"compliance": "none"})
    metrics, rows = _run(tmp_path, params=params, markers=("HAZARD",))
    assert not any("HAZARD" in r["subject"] and r["label"] == "illegitimate" for r in rows)
    assert metrics["drops"]["hazard"] == metrics["hazard"]["dropped"] > 0


def test_quality_gates_count_each_reason(tmp_path):
    params = _params(fallback={"refusal": "none", "over_refusal": "none", "compliance": "none"},
                     max_drop_rate=1.0, truncation="drop")
    metrics, rows = _run(tmp_path, params=params,
                         markers=("EMPTY", "NOREFUSE", "TRUNC", "FAILLLM"))
    drops = metrics["drops"]
    assert drops["empty"] > 0 and drops["not_a_refusal"] > 0
    assert drops["truncated"] > 0 and drops["llm_error"] > 0
    assert metrics["dropped"] == sum(drops.values())
    assert metrics["requests"] == metrics["rows"] + metrics["dropped"]
    assert not any(m in r["subject"] for r in rows for m in ("EMPTY", "NOREFUSE", "FAILLLM"))


def test_fallback_templates_are_counted_and_recorded(tmp_path):
    metrics, rows = _run(tmp_path, markers=("NOREFUSE",))
    used = [r for r in rows if r["chosen_source"].startswith("template:")
            or r["rejected_source"].startswith("template:")]
    assert used
    assert sum(metrics["fallbacks"].values()) == sum(
        r["chosen_source"] != "llm" for r in rows) + sum(r["rejected_source"] != "llm"
                                                         for r in rows)
    for row in used:
        assert "NOREFUSE" in row["subject"]
        assert row["chosen_raw"] is not None  # the failed LLM text is kept


def test_identical_answers_dropped(tmp_path):
    same = FakeClient(lambda req: "Sure, here it is.")
    params = _params(accept_unsure=True, fallback={"refusal": "none", "over_refusal": "none",
                                                   "compliance": "none"}, max_drop_rate=1.0)
    with pytest.raises(QualityGateError, match="no legitimate row survived"):
        _run(tmp_path, params=params, client=same)
    metrics = json.loads((tmp_path / "out.json").read_text())
    assert metrics["drops"]["not_a_refusal"] == metrics["requests"]
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_drop_rate_gate_fails_and_writes_no_shards(tmp_path):
    params = _params(fallback={"refusal": "none", "over_refusal": "none", "compliance": "none"},
                     max_drop_rate=0.01)
    with pytest.raises(QualityGateError, match="max_drop_rate"):
        _run(tmp_path, params=params, markers=("EMPTY",))
    assert json.loads((tmp_path / "out.json").read_text())["drops"]["empty"] > 0
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_dead_generator_fails_even_when_fallbacks_fill_the_rows(tmp_path):
    """Every call fails: templates could fill the refusal side, but a dead generator must
    stop the stage (the failures are counted in the metrics first)."""
    dead = make_client(_params().generator.model_copy(
        update={"fake_script": "tests.fakes:dead_generator"}), cache_dir=None)
    with pytest.raises(QualityGateError, match="LLM calls failed"):
        _run(tmp_path, params=_params(max_drop_rate=1.0), client=dead)
    metrics = json.loads((tmp_path / "out.json").read_text())
    assert metrics["llm"]["failures"] == metrics["llm"]["calls"] > 0
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_determinism_same_seed_identical_other_seed_differs(tmp_path):
    _run(tmp_path, name="a")
    _run(tmp_path, name="b")
    _run(tmp_path, params=_params(seed=99), name="c")
    sums = {n: [s["sha256"] for s in read_manifest(tmp_path / n)["shards"]] for n in "abc"}
    assert sums["a"] == sums["b"]
    assert sums["a"] != sums["c"]


def test_shards_load_with_datasets_in_trl_standard_format(tmp_path):
    _run(tmp_path)
    ds = datasets.load_dataset("parquet", data_files={
        "train": str(tmp_path / "out" / "train-*.parquet"),
        "test": str(tmp_path / "out" / "test-*.parquet")})
    from trl.data_utils import is_conversational
    row = ds["train"][0]
    assert isinstance(row["prompt"], str) and isinstance(row["chosen"], str)
    assert not is_conversational(row)
    assert set(ds["train"].column_names) == set(TRIPLET_SCHEMA.names)
    assert set(ds["test"]["split"]) == {"test"}


def test_kill_and_resume_makes_no_repeat_calls_and_same_output(tmp_path):
    params = _params()
    seeds = tiny_seeds(tmp_path / "seeds.parquet")
    ref = make_client(params.generator, cache_dir=tmp_path / "cache-ref")
    run_generate(seeds, tmp_path / "ref", tmp_path / "ref.json", params, ref)
    total = ref.stats()["cache_misses"]

    cache = tmp_path / "cache"
    first = make_client(params.generator, cache_dir=cache)
    with pytest.raises(Killed):
        run_generate(seeds, tmp_path / "out", tmp_path / "out.json", params,
                     DieAfter(first, 2))
    answered = first.stats()["cache_misses"]
    assert 0 < answered < total
    assert not (tmp_path / "out" / "manifest.json").exists()

    second = make_client(params.generator, cache_dir=cache)
    metrics = run_generate(seeds, tmp_path / "out", tmp_path / "out.json", params, second)
    assert second.stats()["cache_misses"] == total - answered
    assert second.stats()["cache_hits"] == answered
    assert metrics["llm"]["cache_hits"] == answered
    ref_rows = read_shards(tmp_path / "ref").drop_columns(["chosen_cache_key",
                                                           "rejected_cache_key"])
    out_rows = read_shards(tmp_path / "out").drop_columns(["chosen_cache_key",
                                                           "rejected_cache_key"])
    assert out_rows.equals(ref_rows)


def test_changed_param_reasks_only_affected_requests(tmp_path):
    seeds = tiny_seeds(tmp_path / "seeds.parquet")
    cache = tmp_path / "cache"
    base = _params()
    c1 = make_client(base.generator, cache_dir=cache)
    run_generate(seeds, tmp_path / "a", tmp_path / "a.json", base, c1)
    changed = _params(short_max_tokens=32)  # only refusal/over_refusal/compliance requests
    c2 = make_client(changed.generator, cache_dir=cache)
    metrics = run_generate(seeds, tmp_path / "b", tmp_path / "b.json", changed, c2)
    helpful = sum(r == "legitimate" for r in
                  read_shards(tmp_path / "b").column("label").to_pylist())
    assert c2.stats()["cache_hits"] == helpful
    assert c2.stats()["cache_misses"] == metrics["requests"] * 2 - helpful


def test_failed_rerun_leaves_no_complete_looking_old_output(tmp_path):
    """A run that fails its gate after an earlier success must not leave the earlier shards
    readable as if they were its own output (direct runs; dvc repro deletes outputs first)."""
    _run(tmp_path)
    assert read_manifest(tmp_path / "out")["rows"] > 0
    dead = make_client(_params().generator.model_copy(
        update={"fake_script": "tests.fakes:dead_generator"}), cache_dir=None)
    with pytest.raises(QualityGateError):
        _run(tmp_path, params=_params(max_drop_rate=1.0), client=dead)
    with pytest.raises(SchemaError, match="no manifest.json"):
        read_shards(tmp_path / "out", TRIPLET_SCHEMA)
