"""Apply the rule-tier refusal detector to a CSV column (backs ``librachem judge-refusals``)."""

from __future__ import annotations

from pathlib import Path

from librachem.common.atomic import atomic_path
from librachem.common.errors import DataError, SchemaError
from librachem.common.refusal import default_patterns, detect, load_patterns


def judge_csv(input_csv: Path, text_column: str, out_csv: Path, *, with_label: bool = False,
              patterns_path: Path | None = None) -> dict[str, int | str]:
    """Read ``input_csv``, add ``refused`` (bool) and optionally ``refusal_label`` (str),
    write ``out_csv`` atomically. Every input column and row is kept, in order.

    Returns:
        counts: ``rows``, ``refused``, ``unsure``, ``empty`` and ``patterns_version``.
    Raises:
        DataError: the CSV cannot be parsed.
        SchemaError: ``text_column`` is missing, or the output column already exists.
    """
    import polars as pl

    try:
        df = pl.read_csv(input_csv, infer_schema=False)  # every column as text: no lossy casts
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataError(f"{input_csv}: cannot read as CSV ({exc})") from exc
    if text_column not in df.columns:
        raise SchemaError(f"{input_csv}: no column {text_column!r}; columns are {df.columns}")
    new_cols = ["refused"] + (["refusal_label"] if with_label else [])
    clash = [c for c in new_cols if c in df.columns]
    if clash:
        raise SchemaError(f"{input_csv}: already has column(s) {clash}; rename them first")
    ps = load_patterns(patterns_path) if patterns_path else default_patterns()
    verdicts = [detect(t, ps) for t in df[text_column].to_list()]
    df = df.with_columns(pl.Series("refused", [v.label == "refusal" for v in verdicts],
                                   dtype=pl.Boolean))
    if with_label:
        df = df.with_columns(pl.Series("refusal_label", [v.label for v in verdicts]))
    with atomic_path(out_csv) as tmp:
        df.write_csv(tmp)
    return {
        "rows": df.height,
        "refused": sum(v.label == "refusal" for v in verdicts),
        "unsure": sum(v.label == "unsure" for v in verdicts),
        "empty": sum(v.tier == "empty" for v in verdicts),
        "patterns_version": ps.version,
    }
