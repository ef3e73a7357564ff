"""Training data for the ``sft`` and ``dpo`` stages: the train split of the augmented
triplets (seeded sample, class counts) and the gate on rows unfit for training."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

from librachem.common.errors import DataError

log = logging.getLogger(__name__)


TRIPLET_COLUMNS = ("prompt", "chosen", "rejected", "split")


# ---------------------------------------------------------------- data

def read_train_rows(table: Any, *, max_rows: int, seed: int) -> tuple[list[dict[str, str]], dict]:
    """Train-split (prompt, chosen, rejected) rows of an augmented triplet table.

    Args:
        table: pyarrow Table with at least ``prompt``, ``chosen``, ``rejected``, ``split``
            (strings; ``compound_class`` (triplets schema) or ``class`` is counted for the
            model card).
        max_rows: keep a seeded random sample of this many rows (0 = all).

    Returns:
        (rows as dicts with the three text keys, counts: rows_total, rows_train, rows_used,
        and rows_used_by_class when a class column exists).

    Raises:
        DataError: a column is missing, a text cell is null, or there is no train row.
    """
    missing = [c for c in TRIPLET_COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(f"triplet table lacks columns {missing} (has {table.column_names})")
    class_col = next((c for c in ("compound_class", "class") if c in table.column_names), None)
    data = table.select([*TRIPLET_COLUMNS, *([class_col] if class_col else [])]).to_pydict()
    has_class = class_col is not None
    rows = []
    for i, split in enumerate(data["split"]):
        if split != "train":
            continue
        row = {k: data[k][i] for k in ("prompt", "chosen", "rejected")}
        if any(v is None for v in row.values()):
            raise DataError(f"triplet row {i} has a null prompt/chosen/rejected")
        if has_class:
            row["class"] = data[class_col][i]
        rows.append(row)
    if not rows:
        raise DataError(f"no train rows among {table.num_rows} triplets (column 'split')")
    counts: dict[str, Any] = {"rows_total": table.num_rows, "rows_train": len(rows)}
    if max_rows and len(rows) > max_rows:
        rows = random.Random(seed).sample(rows, max_rows)
    counts["rows_used"] = len(rows)
    if has_class:
        by_class: dict[str, int] = {}
        for row in rows:
            by_class[str(row["class"])] = by_class.get(str(row["class"]), 0) + 1
        counts["rows_used_by_class"] = dict(sorted(by_class.items()))
    return rows, counts


def read_triplets(in_dir: Path) -> Any:
    """Read the augmented shard set (manifest-checked) as a pyarrow Table."""
    from librachem.common.shards import read_shards

    return read_shards(in_dir)



def gate_drops(drops: Any, max_drop_rate: float) -> None:
    """Raise QualityGateError when too many rows were unfit for training.

    Args:
        drops: :class:`librachem.common.chat_format` drop counts (``rows_in``, ``dropped``).
        max_drop_rate: the section's ``max_drop_rate`` (fraction, 0..1).
    """
    from librachem.common.errors import QualityGateError

    if drops.rows_in and drops.dropped / drops.rows_in > max_drop_rate:
        raise QualityGateError(f"{drops.dropped} of {drops.rows_in} rows unfit for training "
                               f"({drops.as_dict()}), above max_drop_rate {max_drop_rate}; "
                               "raise max_length or fix the data")
    if drops.rows_in == drops.dropped:
        raise QualityGateError(f"every row is unfit for training: {drops.as_dict()}")
