"""The seeds module: CSV validation, ratio sampling, stratified compound-disjoint split,
determinism, params contract, and the committed compounds.csv."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from librachem.common.config import load_section, validate_section
from librachem.common.errors import ConfigError, DataError
from librachem.seeds.compounds import (
    COMPOUND_COLUMNS,
    Compound,
    canonical_smiles,
    load_compounds,
)
from librachem.seeds.stage import (
    SEEDS_SCHEMA,
    SeedsParams,
    build_balanced,
    run_seeds,
    split_compounds,
)

REPO = Path(__file__).resolve().parents[2]
HEADER = list(COMPOUND_COLUMNS)


def params(**overrides) -> SeedsParams:
    base = {"ratio": "1:2", "mode": "both", "test_fraction": 0.2, "seed": 0}
    base.update(overrides)
    return SeedsParams(**base)


def pool_rows() -> list[list[str]]:
    """40 illegitimate (categories of 20, 12, 7, 1) and 30 legitimate (20, 9, 1) compounds
    with distinct canonical SMILES (linear alkanols / alkylamines of growing length)."""
    rows = []
    layout = [("illegitimate", "cat_a", 20), ("illegitimate", "cat_b", 12),
              ("illegitimate", "cat_c", 7), ("illegitimate", "cat_single", 1),
              ("legitimate", "leg_x", 20), ("legitimate", "leg_y", 9),
              ("legitimate", "leg_single", 1)]
    n = 0
    for klass, category, count in layout:
        for _ in range(count):
            n += 1
            tail = "O" if n % 2 else "N"
            smiles = canonical_smiles("C" * (n // 2 + 1) + tail)
            prefix = "ILL" if klass == "illegitimate" else "LEG"
            rows.append([f"{prefix}-{n:04d}", f"Compound {n}", smiles, klass, category, "list X"])
    return rows


def write_csv(path: Path, rows: list[list[str]], header: list[str] | None = None) -> Path:
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(HEADER if header is None else header)
        writer.writerows(rows)
    return path


@pytest.fixture
def pool_csv(tmp_path) -> Path:
    return write_csv(tmp_path / "compounds.csv", pool_rows())


# --- CSV validation ------------------------------------------------------------------------

def test_valid_csv_loads_in_file_order(pool_csv):
    compounds = load_compounds(pool_csv)
    assert len(compounds) == 70
    assert compounds[0].compound_id == "ILL-0001" and compounds[-1].compound_id == "LEG-0070"
    assert Counter(c.klass for c in compounds) == {"illegitimate": 40, "legitimate": 30}


def _bad(tmp_path, mutate) -> str:
    rows = pool_rows()
    mutate(rows)
    with pytest.raises(DataError) as err:
        load_compounds(write_csv(tmp_path / "bad.csv", rows))
    return str(err.value)


def test_invalid_smiles_names_line_row_and_column(tmp_path):
    msg = _bad(tmp_path, lambda rows: rows[2].__setitem__(2, "C1CC(("))
    assert "line 4 (row 3), column 'smiles'" in msg and "invalid SMILES 'C1CC(('" in msg


def test_non_canonical_smiles_is_rejected_with_the_canonical_form(tmp_path):
    msg = _bad(tmp_path, lambda rows: rows[0].__setitem__(2, "OCC"))  # canonical: CCO
    assert "line 2 (row 1), column 'smiles'" in msg
    assert "not canonical" in msg and "'CCO'" in msg


def test_unknown_class_names_row_and_column(tmp_path):
    msg = _bad(tmp_path, lambda rows: rows[5].__setitem__(3, "dangerous"))
    assert "line 7 (row 6), column 'class'" in msg and "unknown class 'dangerous'" in msg


def test_duplicate_name_is_case_insensitive(tmp_path):
    msg = _bad(tmp_path, lambda rows: rows[9].__setitem__(1, "COMPOUND 1"))
    assert "line 11 (row 10), column 'name': duplicate of line 2 (ILL-0001, Compound 1)" in msg


def test_duplicate_smiles(tmp_path):
    def mutate(rows):
        rows[4][2] = rows[1][2]
    msg = _bad(tmp_path, mutate)
    assert "line 6 (row 5), column 'smiles': duplicate of line 3" in msg


def test_duplicate_compound_id(tmp_path):
    msg = _bad(tmp_path, lambda rows: rows[3].__setitem__(0, "ILL-0001"))
    assert "line 5 (row 4), column 'compound_id': duplicate of line 2" in msg


def test_missing_column_is_named(tmp_path):
    rows = [r[:2] + r[3:] for r in pool_rows()]
    header = [h for h in HEADER if h != "smiles"]
    with pytest.raises(DataError, match=r"line 1 \(header\): missing column\(s\) 'smiles'"):
        load_compounds(write_csv(tmp_path / "bad.csv", rows, header))


def test_empty_value_wrong_field_count_and_bad_category(tmp_path):
    def mutate(rows):
        rows[0][5] = " "
        rows[1].append("extra")
        rows[2][4] = "Nerve Agent"
    msg = _bad(tmp_path, mutate)
    assert "3 problem(s)" in msg
    assert "line 2 (row 1), column 'source': empty value" in msg
    assert "line 3 (row 2): expected 6 fields, got 7" in msg
    assert "line 4 (row 3), column 'category': 'Nerve Agent' is not snake_case" in msg


def test_extra_columns_are_allowed(tmp_path):
    rows = [r + ["note"] for r in pool_rows()]
    compounds = load_compounds(write_csv(tmp_path / "x.csv", rows, HEADER + ["comment"]))
    assert len(compounds) == 70


def test_empty_and_missing_files(tmp_path):
    with pytest.raises(DataError, match="cannot read compounds file"):
        load_compounds(tmp_path / "nope.csv")
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="empty file"):
        load_compounds(tmp_path / "empty.csv")
    with pytest.raises(DataError, match="no compound rows"):
        load_compounds(write_csv(tmp_path / "header_only.csv", []))


# --- balance -------------------------------------------------------------------------------

def _compounds_by_class(table) -> Counter:
    return Counter(r["class"] for r in {r["compound_id"]: r for r in table.to_pylist()}.values())


@pytest.mark.parametrize("ratio,expected", [
    ("1:2", {"legitimate": 20, "illegitimate": 40}),   # paper default: 40 illegitimate bound
    ("0:1", {"illegitimate": 40}),                     # ablation: no legitimate compounds
    ("1:1", {"legitimate": 30, "illegitimate": 30}),   # ablation: legitimate pool binds
    ("2:4", {"legitimate": 20, "illegitimate": 40}),   # reduced by the gcd
    ("1:0", {"legitimate": 30}),
])
def test_ratio_is_honoured_exactly(pool_csv, ratio, expected):
    table = build_balanced(load_compounds(pool_csv), params(ratio=ratio))
    assert _compounds_by_class(table) == expected


def test_max_illegitimate_caps_and_keeps_the_ratio(pool_csv):
    table = build_balanced(load_compounds(pool_csv), params(max_illegitimate=11))
    assert _compounds_by_class(table) == {"legitimate": 5, "illegitimate": 10}


def test_samples_are_nested_across_ratios(pool_csv):
    """Same seed: the 1:2 legitimate sample is a prefix of the 1:1 one, and the 1:1
    illegitimate sample a prefix of the 1:2 one (each class has its own seeded stream)."""
    compounds = load_compounds(pool_csv)
    ids = {r: {x["compound_id"] for x in build_balanced(compounds, params(ratio=r)).to_pylist()}
           for r in ("1:2", "1:1")}
    legit = {r: {i for i in s if i.startswith("LEG")} for r, s in ids.items()}
    illegit = {r: {i for i in s if i.startswith("ILL")} for r, s in ids.items()}
    assert len(legit["1:2"]) == 20 and len(legit["1:1"]) == 30
    assert legit["1:2"] < legit["1:1"]
    assert illegit["1:1"] < illegit["1:2"]


def test_too_few_compounds_for_the_ratio(tmp_path):
    rows = [r for r in pool_rows() if r[3] == "illegitimate"][:3]
    compounds = load_compounds(write_csv(tmp_path / "c.csv", rows))
    with pytest.raises(DataError, match="ratio 1:2 needs at least 1 legitimate"):
        build_balanced(compounds, params())


# --- split and modes -----------------------------------------------------------------------

def test_split_is_compound_disjoint_and_modes_expand(pool_csv):
    table = build_balanced(load_compounds(pool_csv), params(ratio="1:1"))
    rows = table.to_pylist()
    splits: dict[str, set[str]] = {}
    for r in rows:
        splits.setdefault(r["compound_id"], set()).add(r["split"])
        assert r["subject"] == (r["name"] if r["mode"] == "text" else r["smiles"])
    assert all(len(s) == 1 for s in splits.values())
    train = {c for c, s in splits.items() if s == {"train"}}
    test = {c for c, s in splits.items() if s == {"test"}}
    assert train and test and not train & test
    assert Counter(r["compound_id"] for r in rows) == {c: 2 for c in splits}
    assert Counter(r["mode"] for r in rows) == {"text": 60, "smiles": 60}


@pytest.mark.parametrize("mode", ["text", "smiles"])
def test_single_mode(pool_csv, mode):
    table = build_balanced(load_compounds(pool_csv), params(mode=mode))
    assert set(table.column("mode").to_pylist()) == {mode}
    assert table.num_rows == 60


@pytest.mark.parametrize("seed", [0, 1, 7])
@pytest.mark.parametrize("fraction", [0.2, 0.35])
def test_split_is_stratified_by_class_and_category(pool_csv, seed, fraction):
    table = build_balanced(load_compounds(pool_csv), params(ratio="1:1", seed=seed,
                                                            test_fraction=fraction))
    per_compound = {r["compound_id"]: r for r in table.to_pylist()}.values()
    n = len(per_compound)
    n_test = sum(r["split"] == "test" for r in per_compound)
    assert n_test == math.floor(n * fraction + 0.5)
    strata = Counter((r["class"], r["category"]) for r in per_compound)
    tests = Counter((r["class"], r["category"]) for r in per_compound if r["split"] == "test")
    for key, size in strata.items():
        if size == 1:
            assert tests[key] == 0, f"singleton stratum {key} must stay in train"
        else:
            # largest remainder: floor or floor + 1 of the exact share, never the whole stratum
            assert math.floor(size * fraction) <= tests[key] <= min(
                math.floor(size * fraction) + 1, size - 1), (key, size, tests[key])


def test_singleton_categories_stay_in_train_even_when_they_win_the_remainder():
    """Ten one-compound categories (remainder 0.5 each) and one category of ten: the
    singletons would take the spare test slots; the rule keeps them in train."""
    comps = [Compound(f"S{i}", f"s{i}", "C" * (i + 1), "illegitimate", f"single_{i}", "x")
             for i in range(10)]
    comps += [Compound(f"B{i}", f"b{i}", "O" + "C" * (i + 1), "illegitimate", "big", "x")
              for i in range(10)]
    split = split_compounds(comps, 0.5, np.random.default_rng(0))
    assert all(split[f"S{i}"] == "train" for i in range(10))
    assert sum(split[f"B{i}"] == "test" for i in range(10)) in (5, 6)


# --- determinism, schema, metrics ----------------------------------------------------------

def _run(tmp_path, pool_csv, name, **overrides):
    out, metrics = tmp_path / f"{name}.parquet", tmp_path / f"{name}.json"
    run_seeds(params(**overrides), pool_csv, out, metrics)
    return out, metrics


def test_same_params_give_byte_identical_output(tmp_path, pool_csv):
    a, ma = _run(tmp_path, pool_csv, "a")
    b, mb = _run(tmp_path, pool_csv, "b")
    assert a.read_bytes() == b.read_bytes()
    assert ma.read_bytes() == mb.read_bytes()


def test_different_seed_differs(tmp_path, pool_csv):
    a, _ = _run(tmp_path, pool_csv, "a", seed=0)
    b, _ = _run(tmp_path, pool_csv, "b", seed=1)
    assert a.read_bytes() != b.read_bytes()
    ta, tb = pq.read_table(a).to_pylist(), pq.read_table(b).to_pylist()
    assert ({(r["compound_id"], r["split"]) for r in ta}
            != {(r["compound_id"], r["split"]) for r in tb})


def test_output_schema_metadata_and_metrics(tmp_path, pool_csv):
    out, metrics_path = _run(tmp_path, pool_csv, "a", max_illegitimate=8)
    table = pq.read_table(out)
    assert table.schema.equals(SEEDS_SCHEMA, check_metadata=False)
    meta = table.schema.metadata
    assert json.loads(meta[b"librachem.seeds.params"])["max_illegitimate"] == 8
    assert len(meta[b"librachem.seeds.compounds_sha256"]) == 64
    assert not list(tmp_path.glob(".tmp-*"))
    metrics = json.loads(metrics_path.read_text())
    assert metrics["compounds"] == {"total": 12, "legitimate": 4, "illegitimate": 8,
                                    "train": metrics["by_class"]["legitimate"]["train"]
                                    + metrics["by_class"]["illegitimate"]["train"],
                                    "test": 12 - metrics["compounds"]["train"]}
    assert metrics["rows"]["total"] == 24 == metrics["rows"]["text"] * 2
    assert metrics["available"] == {"legitimate": 30, "illegitimate": 40}
    # every category of the CSV is a key, sampled or not, so `dvc metrics diff` keys are stable
    assert set(metrics["by_category"]) == {"cat_a", "cat_b", "cat_c", "cat_single", "leg_x",
                                           "leg_y", "leg_single"}
    assert sum(v["train"] + v["test"] for v in metrics["by_category"].values()) == 12

    def leaves(obj):
        if isinstance(obj, dict):
            for v in obj.values():
                yield from leaves(v)
        else:
            yield obj
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in leaves(metrics))


# --- params contract -----------------------------------------------------------------------

@pytest.mark.parametrize("raw,fragment", [
    ({"ratio": "1-2"}, "seeds.ratio = '1-2'"),
    ({"ratio": "0:0"}, "at least one non-zero side"),
    ({"ratio": 62}, "expected 'L:I'"),
    ({"ratio": "-1:2"}, "seeds.ratio = '-1:2'"),
    ({"mode": "images"}, "seeds.mode = 'images'"),
    ({"test_fraction": 0.0}, "seeds.test_fraction = 0.0"),
    ({"test_fraction": 1}, "seeds.test_fraction = 1"),
    ({"seed": "abc"}, "seeds.seed = 'abc'"),
    ({"max_illegitimate": 0}, "seeds.max_illegitimate = 0"),
    ({"ratios": "1:2"}, "seeds.ratios: unknown key"),
])
def test_params_contract_errors_name_key_value_expectation(raw, fragment):
    section = {"ratio": "1:2", "mode": "both", "test_fraction": 0.2, "seed": 0, **raw}
    with pytest.raises(ConfigError) as err:
        validate_section(SeedsParams, "seeds", section)
    assert fragment in str(err.value)


def test_missing_key_is_reported():
    with pytest.raises(ConfigError, match="seeds.seed: required key is missing"):
        validate_section(SeedsParams, "seeds", {"ratio": "1:2", "mode": "both",
                                                "test_fraction": 0.2})


def test_ablation_ratios_are_one_value_away_and_params_are_frozen():
    for ratio, parts in (("1:2", (1, 2)), ("0:1", (0, 1)), ("1:1", (1, 1)), (" 3 : 6 ", (1, 2))):
        assert validate_section(SeedsParams, "seeds", {"ratio": ratio, "mode": "both",
                                                       "test_fraction": 0.2,
                                                       "seed": 0}).ratio_parts == parts
    p = params()
    with pytest.raises(Exception):
        p.seed = 3  # type: ignore[misc]


def test_unquoted_yaml_ratio_reads_as_the_ratio(tmp_path):
    """YAML 1.2, like DVC's own parser (`dvc exp run -S` drops the quotes): 1:2 is "1:2"."""
    path = tmp_path / "params.yaml"
    path.write_text("seeds:\n  ratio: 1:2\n  mode: both\n  test_fraction: 2e-1\n  seed: 0\n")
    assert load_section(SeedsParams, "seeds", path).ratio == "1:2"
    path.write_text("seeds:\n  ratio: '1:2'\n  mode: both\n  test_fraction: 2e-1\n  seed: 0\n")
    assert load_section(SeedsParams, "seeds", path).test_fraction == 0.2


def test_repo_params_section_loads():
    p = load_section(SeedsParams, "seeds", REPO / "params.yaml")
    assert p.ratio == "1:2" and p.mode == "both" and 0 < p.test_fraction < 1


# --- the committed curated list ------------------------------------------------------------

def test_committed_compounds_csv_is_valid_and_large_enough():
    compounds = load_compounds(REPO / "data" / "seeds" / "compounds.csv")
    counts = Counter(c.klass for c in compounds)
    assert counts["illegitimate"] >= 250 and counts["legitimate"] >= 150
    for c in compounds:
        prefix = "ILL-" if c.klass == "illegitimate" else "LEG-"
        assert c.compound_id.startswith(prefix), c
    # a spread of categories on both sides, not one list padded out
    cats = {k: {c.category for c in compounds if c.klass == k} for k in counts}
    assert {"nerve_agent", "blister_agent", "opioid", "stimulant", "explosive",
            "toxin"} <= cats["illegitimate"]
    assert {"medicine", "solvent", "lab_reagent", "monomer", "salt"} <= cats["legitimate"]
