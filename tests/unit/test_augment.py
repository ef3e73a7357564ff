"""augment on the fake LLM: combination rules, each guard, dedup, decontamination,
determinism, kill-and-resume."""

from __future__ import annotations

import random

import pytest

from librachem.augment.stage import AugmentParams, combine, run_augment
from librachem.common.errors import QualityGateError, SchemaError
from librachem.common.refusal import classify
from librachem.common.shards import MANIFEST, read_manifest, read_shards
from librachem.common.triplets import AUGMENTED_SCHEMA
from librachem.generate.stage import GenerateParams, run_generate
from librachem.llm.factory import make_client
from librachem.llm.fake import FakeClient
from tests.fakes import DieAfter, Killed, generator, tiny_seeds

FAKE = {"backend": "fake", "fake_script": "tests.fakes:generator"}


def _triplets(tmp_path, markers=()):
    seeds = tiny_seeds(tmp_path / "seeds.parquet", markers=markers)
    run_generate(seeds, tmp_path / "trip", tmp_path / "data.json",
                 GenerateParams.model_validate({"generator": FAKE, "chunk_size": 8}),
                 FakeClient(generator))
    return tmp_path / "trip"


def _params(**kw):
    base = {"rephraser": FAKE, "near_dup_threshold": 0.99, "chunk_size": 8,
            "n_prompt_variants": 2, "n_chosen_variants": 1, "n_rejected_variants": 1}
    base.update(kw)
    return AugmentParams.model_validate(base)


def _augment(tmp_path, trip, params=None, client=None, name="aug"):
    metrics = run_augment(trip, tmp_path / name, tmp_path / f"{name}-test",
                          tmp_path / f"{name}.json", params or _params(),
                          client or FakeClient(generator))
    return metrics, read_shards(tmp_path / name, AUGMENTED_SCHEMA).to_pylist()


def test_combine_rules():
    rng = random.Random(0)
    assert combine([0, 1, 2], [0, 1], [0], "product", 4, rng) == [
        (0, 0, 0), (0, 1, 0), (1, 0, 0), (1, 1, 0), (2, 0, 0), (2, 1, 0)]
    assert combine([0, 1, 2], [0, 1], [0], "zip", 4, rng) == [(0, 0, 0), (1, 1, 0), (2, 0, 0)]
    sample = combine([0, 1, 2], [0, 1], [0, 1], "sample", 4, rng)
    assert len(sample) == 4 and sample[0] == (0, 0, 0) and len(set(sample)) == 4
    assert combine([0], [0], [0], "sample", 4, rng) == [(0, 0, 0)]


def test_product_keeps_originals_and_train_only(tmp_path):
    trip = _triplets(tmp_path)
    parents = read_shards(trip, split="train").num_rows
    metrics, rows = _augment(tmp_path, trip, _params(n_prompt_variants=2, n_chosen_variants=1,
                                                     n_rejected_variants=1))
    assert metrics["rows_in"] == parents
    assert metrics["rows_out"] == len(rows) == parents * 3 * 2 * 2
    assert sum(r["phase"] != "augment" for r in rows) == parents
    assert {r["split"] for r in rows} == {"train"} and not any(r["rephrased_test"] for r in rows)
    for row in rows:
        assert (classify(row["chosen"]) == "refusal") == (row["label"] == "illegitimate")
        assert (classify(row["rejected"]) == "refusal") == (row["label"] == "legitimate")
        assert row["subject"].lower() in row["prompt"].lower() or row["mode"] == "smiles"


def test_zip_and_sample_sizes(tmp_path):
    trip = _triplets(tmp_path)
    parents = read_shards(trip, split="train").num_rows
    _, rows = _augment(tmp_path, trip, _params(combination="zip"), name="z")
    assert len(rows) == parents * 3
    _, rows = _augment(tmp_path, trip, _params(combination="sample", max_per_parent=5),
                       name="s")
    assert len(rows) == parents * 5


def test_rephrased_test_prompts_are_separate_and_flagged(tmp_path):
    trip = _triplets(tmp_path)
    tests = read_shards(trip, split="test").to_pylist()
    metrics, _ = _augment(tmp_path, trip, _params(test_prompt_variants=2))
    rephrased = read_shards(tmp_path / "aug-test", AUGMENTED_SCHEMA).to_pylist()
    assert len(rephrased) == metrics["rephrased_test_rows"] == 2 * len(tests)
    assert all(r["rephrased_test"] and r["split"] == "test" for r in rephrased)
    by_id = {t["row_id"]: t for t in tests}
    for row in rephrased:
        assert row["chosen"] == by_id[row["parent_row_id"]]["chosen"]
        assert row["prompt"] != by_id[row["parent_row_id"]]["prompt"]
    assert read_manifest(tmp_path / "aug")["splits"] == {"train": metrics["rows_out"]}


@pytest.mark.parametrize(("marker", "role", "reason"), [
    ("DRIFT", "prompt", "subject_lost"), ("HAZARD", "prompt", "hazard"),
    ("FLIP", "chosen", "refusal_flip"), ("FLIP", "rejected", "refusal_flip"),
    ("NEARDUP", "prompt", "near_duplicate")])
def test_each_guard_drops_and_counts(tmp_path, marker, role, reason):
    trip = _triplets(tmp_path, markers=(marker,))
    params = _params(near_dup_threshold=0.8 if marker == "NEARDUP" else 0.99,
                     length_band=[0.05, 20.0])  # so the guard under test is the one that fires
    metrics, rows = _augment(tmp_path, trip, params)
    assert metrics["variant_drops"][role][reason] > 0
    marked = [r for r in rows if marker in r["subject"]]
    assert marked and all(r[f"{role}_variant"] == 0 for r in marked)


def test_length_band_guard(tmp_path):
    trip = _triplets(tmp_path)
    metrics, rows = _augment(tmp_path, trip, _params(length_band=[0.9, 1.05],
                                                     max_variant_drop_rate=1.0))
    assert metrics["variant_drops"]["prompt"]["length"] > 0
    assert all(r["prompt_variant"] == 0 for r in rows)


def test_exact_dedup_and_decontamination(tmp_path):
    trip = _triplets(tmp_path)
    same = FakeClient(lambda req: "Quick question: agent-alpha, aspirin, caffeine, agent-beta?")
    params = _params(n_chosen_variants=0, n_rejected_variants=0, length_band=[0.1, 10.0])
    metrics, rows = _augment(tmp_path, trip, params, client=same)
    assert metrics["exact_duplicates"] == 0
    # The same rephrased prompt for train and test parents: train copies are contaminated.
    assert metrics["contaminated"] > 0
    assert not any(r["prompt"].startswith("Quick question") for r in rows)
    dup = FakeClient(lambda req: "I'm sorry, but I can't help with that, agent-alpha.")
    params = _params(n_prompt_variants=0, n_chosen_variants=2, n_rejected_variants=0,
                     near_dup_threshold=1.0, length_band=[0.1, 10.0])
    metrics, _ = _augment(tmp_path, trip, params, client=dup, name="d")
    assert metrics["variant_drops"]["chosen"]["near_duplicate"] > 0


def test_determinism_and_seed(tmp_path):
    trip = _triplets(tmp_path)
    _augment(tmp_path, trip, _params(combination="sample", max_per_parent=3), name="a")
    _augment(tmp_path, trip, _params(combination="sample", max_per_parent=3), name="b")
    _augment(tmp_path, trip, _params(combination="sample", max_per_parent=3, seed=123),
             name="c")
    sums = {n: [s["sha256"] for s in read_manifest(tmp_path / n)["shards"]] for n in "abc"}
    assert sums["a"] == sums["b"] != sums["c"]


def test_refuses_incomplete_input_and_gate(tmp_path):
    trip = _triplets(tmp_path)
    with pytest.raises(QualityGateError, match="max_variant_drop_rate"):
        _augment(tmp_path, trip, _params(max_variant_drop_rate=0.0),
                 client=FakeClient(lambda req: ""))
    (trip / MANIFEST).unlink()
    with pytest.raises(SchemaError, match="manifest"):
        _augment(tmp_path, trip)


def test_kill_and_resume(tmp_path):
    trip = _triplets(tmp_path)
    params = _params()
    ref = make_client(params.rephraser, cache_dir=tmp_path / "c-ref")
    _augment(tmp_path, trip, params, client=ref, name="ref")
    total = ref.stats()["cache_misses"]
    first = make_client(params.rephraser, cache_dir=tmp_path / "c")
    with pytest.raises(Killed):
        _augment(tmp_path, trip, params, client=DieAfter(first, 2), name="out")
    answered = first.stats()["cache_misses"]
    assert 0 < answered < total
    second = make_client(params.rephraser, cache_dir=tmp_path / "c")
    _augment(tmp_path, trip, params, client=second, name="out")
    assert second.stats()["cache_misses"] == total - answered
    keys = ["chosen_cache_key", "rejected_cache_key", "prompt_cache_key"]
    assert (read_shards(tmp_path / "out").drop_columns(keys)
            .equals(read_shards(tmp_path / "ref").drop_columns(keys)))


def test_flagged_rephrasings_are_dropped_and_never_cached_raw(tmp_path):
    trip = _triplets(tmp_path, markers=("HAZARD",))
    params = _params(length_band=[0.05, 20.0])
    client = make_client(params.rephraser, cache_dir=tmp_path / "cache")
    metrics, rows = _augment(tmp_path, trip, params, client=client)
    assert metrics["variant_drops"]["prompt"]["hazard"] > 0
    entries = [p.read_text() for p in (tmp_path / "cache").glob("??/*.json")]
    assert entries and not any("50 mL of reagent A" in e for e in entries)
    assert not any("50 mL" in r["prompt"] for r in rows)


def test_identical_pairs_are_dropped_and_counted(tmp_path):
    """Issue 18 point 5: a pair whose chosen and rejected are the same text (after whitespace
    and case normalisation) has no preference signal; augment drops and counts it."""
    from librachem.common.shards import write_shards
    from librachem.common.triplets import TRIPLET_SCHEMA, rows_to_table

    trip = _triplets(tmp_path)
    rows = read_shards(trip, TRIPLET_SCHEMA).to_pylist()
    train = [i for i, r in enumerate(rows) if r["split"] == "train"]
    rows[train[0]]["rejected"] = "  " + rows[train[0]]["chosen"].upper().replace(" ", "\n ")
    tables = {s: rows_to_table([r for r in rows if r["split"] == s], TRIPLET_SCHEMA)
              for s in ("train", "test")}
    write_shards(tmp_path / "trip2", tables, TRIPLET_SCHEMA)
    params = _params(n_prompt_variants=1, n_chosen_variants=0, n_rejected_variants=0,
                     max_variant_drop_rate=1.0)
    metrics, out = _augment(tmp_path, tmp_path / "trip2", params)
    parent = rows[train[0]]["row_id"]
    assert not [r for r in out if r["parent_row_id"] == parent]
    kept_parent = sum(1 for r in out if r["parent_row_id"] == rows[train[1]]["row_id"])
    assert metrics["identical_pairs"] == kept_parent >= 1   # the original and its variant
    assert metrics["rows_out"] == len(out)
