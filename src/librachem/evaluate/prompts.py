"""Which prompts the models answer: the held-out test split, augment's rephrasings of
it and (optionally) the packaged XSTest prompts, with a seeded stratified sample."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import pyarrow as pa

from librachem.common.errors import DataError
from librachem.evaluate.params import PromptParams, XSTestParams

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------ prompts
def _prompt_rows(table: pa.Table, source: str) -> list[dict[str, Any]]:
    rows = []
    for r in table.to_pylist():
        label = r["label"]
        if label not in ("legitimate", "illegitimate"):
            raise DataError(f"row {r['row_id']}: label {label!r} is not legitimate/illegitimate")
        rows.append({
            "row_id": r["row_id"], "source": source, "prompt": r["prompt"], "label": label,
            "intent": r.get("intent"), "mode": r.get("mode"), "category": r.get("category"),
            "compound_id": r.get("compound_id"), "compound_class": r.get("compound_class"),
            "reference": r["chosen"] if label == "legitimate" else None,
        })
    return rows


def load_prompts(triplets_dir: Path, rephrased_dir: Path | None, params: PromptParams) -> list[dict]:
    """Test prompts (+ rephrased test prompts), deduplicated on (row_id, source).

    Returns dicts with row_id, source (``test``/``rephrased``), prompt, label, intent, mode,
    category, compound_id, compound_class, reference (the ``chosen`` answer of legitimate rows).

    Raises:
        SchemaError: a shard set without a valid manifest, or of another schema version.
        DataError: no test prompts, or an unknown label.
    """
    from librachem.common.shards import read_manifest, read_shards
    from librachem.common.triplets import AUGMENTED_SCHEMA, TRIPLET_SCHEMA

    manifest = read_manifest(triplets_dir)
    if "test" not in manifest.get("splits", {}):
        raise DataError(f"{triplets_dir}: no test split; generate writes both splits")
    rows = _prompt_rows(read_shards(triplets_dir, TRIPLET_SCHEMA, split="test"), "test")
    if params.include_rephrased and rephrased_dir is not None and rephrased_dir.exists():
        # a folder without a valid manifest is an error (read_shards), not "no prompts"
        import pyarrow.compute as pc

        aug = read_shards(rephrased_dir, AUGMENTED_SCHEMA)
        aug = aug.filter(pc.equal(aug["rephrased_test"], True))
        rows += _prompt_rows(aug, "rephrased")
        log.info("%d rephrased test prompts from %s", aug.num_rows, rephrased_dir)
    seen: set[tuple[str, str]] = set()
    unique = []
    for r in rows:
        key = (r["row_id"], r["source"])
        if key not in seen:
            seen.add(key)
            unique.append(r)
    if not unique:
        raise DataError(f"{triplets_dir}: the test split is empty")
    return unique


def stratified_sample(rows: list[dict], n: int, seed: int,
                      keys: Sequence[str] = ("source", "label", "mode")) -> list[dict]:
    """Keep ``n`` rows (all when ``n`` is 0 or >= len): seeded round-robin over the groups of
    ``keys``, so every (source, label, mode) cell keeps its share. Order of the input is kept."""
    import numpy as np

    if n <= 0 or n >= len(rows):
        return list(rows)
    rng = np.random.default_rng(seed)
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(rows):
        groups.setdefault(tuple(str(r.get(k)) for k in keys), []).append(i)
    # Round r takes the r-th row of every group, groups in a seeded order (fair to all cells).
    shuffle = rng.permutation(len(groups)).tolist()
    order = []
    for gi, g in enumerate(sorted(groups)):
        for rank, i in enumerate(rng.permutation(groups[g]).tolist()):
            order.append((rank, shuffle[gi], i))
    keep = sorted(i for _, _, i in sorted(order)[:n])
    return [rows[i] for i in keep]


def load_xstest(params: XSTestParams) -> list[dict]:
    """The packaged XSTest prompts (``resources/xstest``) as prompt rows: label
    ``legitimate`` for XSTest ``safe`` and ``illegitimate`` for ``unsafe``; ``intent`` =
    XSTest ``type``; ``category`` = ``focus``."""
    import csv
    import io

    text = resources.files("librachem").joinpath("resources", "xstest",
                                                  "xstest_prompts.csv").read_text("utf-8")
    rows = []
    for r in csv.DictReader(io.StringIO(text)):
        rows.append({"row_id": f"xstest-{int(r['id']):03d}", "source": "xstest",
                     "prompt": r["prompt"],
                     "label": "legitimate" if r["label"] == "safe" else "illegitimate",
                     "intent": r["type"], "mode": "text", "category": r["focus"] or None,
                     "compound_id": None, "reference": None})
    if len(rows) != 450:
        raise DataError(f"packaged XSTest prompts: expected 450 rows, found {len(rows)}")
    return stratified_sample(rows, params.max_prompts, params.seed, keys=("label", "intent"))
