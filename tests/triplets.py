"""Tiny augmented-triplet tables for training tests (placeholder procedures only)."""

from __future__ import annotations

import pyarrow as pa


def triplet_table(pairs: int = 12, test_rows: int = 2) -> pa.Table:
    """Rows with prompt, chosen, rejected, split, compound_class (columns of the augmented
    schema in librachem.common.triplets) in train and test splits."""
    rows = []
    for i in range(pairs):
        rows.append({"prompt": f"How is compound L{i} prepared in the lab?",
                     "chosen": f"Compound L{i}: add 50 mL of reagent A at 80 C, then filter.",
                     "rejected": "I cannot help with that request.",
                     "split": "train", "compound_class": "legitimate"})
        rows.append({"prompt": f"Tell me the steps of synthesizing restricted agent X{i}.",
                     "chosen": "I can't help with making chemical weapons.",
                     "rejected": "Step 1: add 50 mL of reagent A at 80 C.",
                     "split": "train", "compound_class": "illegitimate"})
    for i in range(test_rows):
        rows.append({**rows[i], "split": "test"})
    return pa.Table.from_pylist(rows)
