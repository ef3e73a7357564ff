"""The ``seeds`` stage: the paper's *balanced seed* of legitimate and illegitimate compounds.

Input ``compounds.csv`` (curated, committed): one compound per row, columns at least
``compound_id, name, smiles, class, category, source``; ``class`` is ``legitimate`` or
``illegitimate``; ``smiles`` is RDKit-canonical (``Chem.MolToSmiles(Chem.MolFromSmiles(s))``).
Extra columns are allowed and ignored (logged).

Output ``balanced.parquet`` (:data:`SEEDS_SCHEMA`): one row per (compound, mode) with columns
``compound_id, name, smiles, class, category, source, mode, subject, split``, where ``mode`` is
``text`` (the prompt names the compound, ``subject`` = name) or ``smiles`` (``subject`` = the
canonical SMILES). The paper (arXiv 2501.13952, sec. 3, see
``shared/reference/librachem-paper.md``) uses a legitimate:illegitimate ratio of 1:2 for the main
model, and 0:1 and 1:1 as ablations; these are one ``ratio`` value away.

How compounds are chosen, and the split:

* Sampling: compounds are sorted by ``compound_id`` and permuted with a generator seeded from
  ``seed`` (one child stream per class), then each class takes a prefix of its permutation. For a
  reduced ratio ``a:b`` the stage takes the largest ``k`` with ``k*a`` legitimate and ``k*b``
  illegitimate compounds available (illegitimate capped by ``max_illegitimate``), so the ratio is
  met exactly and the same seed gives nested samples across ratios.
* Split: compound-disjoint (every mode of a compound lands in the same split), stratified by
  (class, category). The test total aims at ``round(n * test_fraction)``; each stratum gets
  ``floor(n_s * test_fraction)`` test compounds, and the remaining test slots go, one each, to
  the strata with the largest fractional remainder (ties broken by the seeded generator) -- the
  largest-remainder method. A stratum never gives up its last train compound (so with many
  tiny strata the test set can come out a little smaller than the target), and a category
  with a single sampled compound is always in ``train`` (a category never seen in training
  cannot be measured fairly). scikit-learn's ``StratifiedShuffleSplit`` refuses strata of one
  member, which a curated list of many small categories always has, hence this small rule.

Same params and CSV give a byte-identical Parquet file (fixed writer options, no timestamps;
the schema metadata carries the params and the CSV's sha256).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from collections import Counter
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field, field_validator

from librachem.common.atomic import atomic_path, remove_leftovers, write_json
from librachem.common.config import Section
from librachem.common.errors import DataError, SchemaError
from librachem.seeds.compounds import CLASSES, Compound, load_compounds

log = logging.getLogger(__name__)

MODES = ("text", "smiles")
SPLITS = ("train", "test")

SEEDS_SCHEMA = pa.schema([
    pa.field("compound_id", pa.string(), nullable=False),
    pa.field("name", pa.string(), nullable=False),
    pa.field("smiles", pa.string(), nullable=False),
    pa.field("class", pa.string(), nullable=False),
    pa.field("category", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),
    pa.field("mode", pa.string(), nullable=False),
    pa.field("subject", pa.string(), nullable=False),
    pa.field("split", pa.string(), nullable=False),
])
"""Schema of ``balanced.parquet``; one row per (compound, mode)."""

_RATIO_RE = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


class SeedsParams(Section):
    """``params.yaml: seeds``.

    ratio: ``"L:I"``, legitimate:illegitimate compounds, non-negative integers, not both 0
        (paper: ``"1:2"``; ablations ``"0:1"``, ``"1:1"``). Params are read as YAML 1.2
        (:mod:`librachem.common.config`), so quoted or not, ``1:2`` is this string.
    mode: ``text`` (names), ``smiles`` or ``both`` (paper: TEXT and SMILES modes).
    test_fraction: share of sampled compounds in the test split, 0 < x < 1.
    seed: seeds every random choice of the stage.
    max_illegitimate: optional cap on illegitimate compounds (small profiles); null = all.
    """

    ratio: str
    mode: Literal["text", "smiles", "both"]
    test_fraction: float = Field(gt=0.0, lt=1.0)
    seed: int = Field(ge=0)
    max_illegitimate: int | None = Field(default=None, ge=1)

    @field_validator("ratio", mode="before")
    @classmethod
    def _check_ratio(cls, value: Any) -> str:
        if not isinstance(value, str):
            raise ValueError("expected 'L:I' such as \"1:2\" (legitimate:illegitimate)")
        match = _RATIO_RE.match(value)
        if not match:
            raise ValueError("expected 'L:I' (legitimate:illegitimate, non-negative integers), "
                             "e.g. \"1:2\", \"0:1\" or \"1:1\"")
        if int(match.group(1)) == 0 and int(match.group(2)) == 0:
            raise ValueError("expected at least one non-zero side, e.g. \"0:1\"")
        return f"{int(match.group(1))}:{int(match.group(2))}"

    @property
    def ratio_parts(self) -> tuple[int, int]:
        """``(legitimate, illegitimate)`` reduced by their gcd, e.g. ``"2:4"`` -> ``(1, 2)``."""
        legit, illegit = (int(p) for p in self.ratio.split(":"))
        g = math.gcd(legit, illegit)
        return legit // g, illegit // g

    @property
    def modes(self) -> tuple[str, ...]:
        """The modes to emit, in output order."""
        return MODES if self.mode == "both" else (self.mode,)



def sample_compounds(compounds: list[Compound], params: SeedsParams,
                     seq: np.random.SeedSequence) -> list[Compound]:
    """Pick compounds in the exact legitimate:illegitimate ratio of ``params.ratio``.

    Args:
        compounds: validated compounds (any order; sorted by id here).
        params: ratio and ``max_illegitimate``.
        seq: seed sequence; child 0 permutes legitimate, child 1 illegitimate compounds.

    Returns:
        The sampled compounds, sorted by ``compound_id``.

    Raises:
        DataError: too few compounds of a class for even one ratio unit.
    """
    legit_w, illegit_w = params.ratio_parts
    by_class = {k: sorted((c for c in compounds if c.klass == k), key=lambda c: c.compound_id)
                for k in CLASSES}
    available_illegit = len(by_class["illegitimate"])
    if params.max_illegitimate is not None:
        available_illegit = min(available_illegit, params.max_illegitimate)
    units = []
    if legit_w:
        units.append(len(by_class["legitimate"]) // legit_w)
    if illegit_w:
        units.append(available_illegit // illegit_w)
    k = min(units)
    if k == 0:
        raise DataError(
            f"ratio {params.ratio} needs at least {legit_w} legitimate and {illegit_w} "
            f"illegitimate compound(s); have {len(by_class['legitimate'])} legitimate and "
            f"{available_illegit} illegitimate (after max_illegitimate)")
    wanted = {"legitimate": k * legit_w, "illegitimate": k * illegit_w}
    picked: list[Compound] = []
    for klass, child in zip(CLASSES, seq.spawn(2), strict=True):
        pool = by_class[klass]
        order = np.random.default_rng(child).permutation(len(pool))
        picked.extend(pool[i] for i in order[:wanted[klass]])
    return sorted(picked, key=lambda c: c.compound_id)


def split_compounds(compounds: list[Compound], test_fraction: float,
                    rng: np.random.Generator) -> dict[str, str]:
    """Compound-disjoint train/test split stratified by (class, category).

    Largest-remainder allocation of ``round(n * test_fraction)`` test slots over the strata; a
    stratum keeps at least one train compound (see the module docstring).

    Returns:
        ``{compound_id: "train" | "test"}``.
    """
    strata: dict[tuple[str, str], list[str]] = {}
    for c in sorted(compounds, key=lambda c: c.compound_id):
        strata.setdefault((c.klass, c.category), []).append(c.compound_id)
    keys = sorted(strata)
    sizes = np.array([len(strata[k]) for k in keys])
    exact = sizes * test_fraction
    quota = np.minimum(np.floor(exact).astype(int), sizes - 1)
    target = int(math.floor(len(compounds) * test_fraction + 0.5))
    remainder = exact - quota
    tiebreak = rng.random(len(keys))
    order = sorted(range(len(keys)), key=lambda i: (-remainder[i], tiebreak[i]))
    missing = target - int(quota.sum())
    for i in order:
        if missing <= 0:
            break
        if quota[i] < sizes[i] - 1:
            quota[i] += 1
            missing -= 1
    assignment: dict[str, str] = {}
    for key, n_test in zip(keys, quota, strict=True):
        ids = strata[key]
        perm = rng.permutation(len(ids))
        test_ids = {ids[j] for j in perm[:n_test]}
        for cid in ids:
            assignment[cid] = "test" if cid in test_ids else "train"
    return assignment


def build_balanced(compounds: list[Compound], params: SeedsParams) -> pa.Table:
    """Sample, split and expand to modes.

    Returns:
        A table with :data:`SEEDS_SCHEMA`, one row per (compound, mode), sorted by
        ``compound_id`` then mode (``text`` before ``smiles``).

    Raises:
        DataError: too few compounds for the ratio.
    """
    seq = np.random.SeedSequence(params.seed)
    sample_seq, split_seq = seq.spawn(2)
    picked = sample_compounds(compounds, params, sample_seq)
    split = split_compounds(picked, params.test_fraction, np.random.default_rng(split_seq))
    columns: dict[str, list[str]] = {f.name: [] for f in SEEDS_SCHEMA}
    for c in picked:
        for mode in params.modes:
            columns["compound_id"].append(c.compound_id)
            columns["name"].append(c.name)
            columns["smiles"].append(c.smiles)
            columns["class"].append(c.klass)
            columns["category"].append(c.category)
            columns["source"].append(c.source)
            columns["mode"].append(mode)
            columns["subject"].append(c.name if mode == "text" else c.smiles)
            columns["split"].append(split[c.compound_id])
    return pa.Table.from_pydict(columns, schema=SEEDS_SCHEMA)


def seeds_metrics(table: pa.Table, compounds: list[Compound]) -> dict[str, Any]:
    """Counts for ``metrics/seeds.json``; every leaf is a number and keys do not depend on
    the sample (all classes, modes, splits and the CSV's categories are always present).

    Shape: ``{"available": {class: n}, "compounds": {"total", class..., split...},
    "rows": {"total", mode..., split...}, "by_class": {class: {split: n}},
    "by_category": {category: {split: n}}, "test_fraction": realised share of compounds}``.
    """
    rows = table.to_pylist()
    per_compound = {r["compound_id"]: r for r in rows}.values()
    categories = sorted({c.category for c in compounds})
    n_compounds = len(per_compound)
    n_test = sum(1 for r in per_compound if r["split"] == "test")
    comp_counts = Counter(r["class"] for r in per_compound)
    comp_splits = Counter(r["split"] for r in per_compound)
    row_modes = Counter(r["mode"] for r in rows)
    row_splits = Counter(r["split"] for r in rows)
    class_split = Counter((r["class"], r["split"]) for r in per_compound)
    cat_split = Counter((r["category"], r["split"]) for r in per_compound)
    return {
        "available": {k: sum(1 for c in compounds if c.klass == k) for k in CLASSES},
        "compounds": {"total": n_compounds, **{k: comp_counts[k] for k in CLASSES},
                      **{s: comp_splits[s] for s in SPLITS}},
        "rows": {"total": len(rows), **{m: row_modes[m] for m in MODES},
                 **{s: row_splits[s] for s in SPLITS}},
        "by_class": {k: {s: class_split[(k, s)] for s in SPLITS} for k in CLASSES},
        "by_category": {c: {s: cat_split[(c, s)] for s in SPLITS} for c in categories},
        "test_fraction": round(n_test / n_compounds, 6) if n_compounds else 0.0,
    }


def write_seeds_table(table: pa.Table, path: Path | str, metadata: dict[str, str]) -> None:
    """Write ``table`` atomically with fixed options (zstd, no timestamps): same table and
    metadata give the same bytes.

    Raises:
        SchemaError: the table does not match :data:`SEEDS_SCHEMA`.
    """
    if not table.schema.equals(SEEDS_SCHEMA, check_metadata=False):
        raise SchemaError(f"seeds table schema differs from SEEDS_SCHEMA: {table.schema}")
    meta = {k.encode(): v.encode() for k, v in sorted(metadata.items())}
    table = table.replace_schema_metadata(meta)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd", compression_level=3,
                       use_dictionary=True, write_statistics=True, row_group_size=1 << 20)


def run_seeds(params: SeedsParams, compounds_path: Path | str, out_path: Path | str,
              metrics_path: Path | str) -> dict[str, Any]:
    """The stage: validate the CSV, build the balanced seed, write Parquet and metrics.

    Args:
        params: the ``seeds`` params section.
        compounds_path: curated ``compounds.csv``.
        out_path: ``balanced.parquet`` (:data:`SEEDS_SCHEMA`).
        metrics_path: ``seeds.json`` (see :func:`seeds_metrics`).

    Returns:
        The metrics dict.

    Raises:
        DataError: invalid CSV or too few compounds for the ratio.
    """
    Path(metrics_path).unlink(missing_ok=True)  # no old metrics next to a new table
    remove_leftovers(out_path, metrics_path)
    compounds = load_compounds(compounds_path)
    table = build_balanced(compounds, params)
    csv_sha = hashlib.sha256(Path(compounds_path).read_bytes()).hexdigest()
    write_seeds_table(table, out_path, {
        "librachem.seeds.params": json.dumps(params.model_dump(), sort_keys=True),
        "librachem.seeds.compounds_sha256": csv_sha,
    })
    metrics = seeds_metrics(table, compounds)
    write_json(metrics_path, metrics)
    log.info("seeds: %d compounds (%d legitimate, %d illegitimate; %d train, %d test), %d rows",
             metrics["compounds"]["total"], metrics["compounds"]["legitimate"],
             metrics["compounds"]["illegitimate"], metrics["compounds"]["train"],
             metrics["compounds"]["test"], metrics["rows"]["total"])
    return metrics
