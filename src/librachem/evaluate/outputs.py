"""What the stage writes: the response table schema, the metrics (full and headline),
the plot tables, and the removal of a previous run's outputs."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from librachem.evaluate.params import DIFF_KEY, EvalPaths, EvaluateParams

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------ schema
RESPONSE_SCHEMA = pa.schema([
    pa.field("model", pa.string(), nullable=False),
    pa.field("model_id", pa.string(), nullable=False),
    pa.field("row_id", pa.string(), nullable=False),
    pa.field("source", pa.string(), nullable=False),        # test | rephrased | xstest
    pa.field("prompt", pa.string(), nullable=False),
    pa.field("label", pa.string(), nullable=False),         # legitimate | illegitimate
    pa.field("intent", pa.string()),
    pa.field("mode", pa.string()),
    pa.field("category", pa.string()),
    pa.field("compound_id", pa.string()),
    pa.field("compound_class", pa.string()),                # legitimate | illegitimate | null
    pa.field("reference", pa.string()),                     # chosen answer (legitimate rows)
    pa.field("response", pa.string()),                      # raw generated text
    pa.field("finish_reason", pa.string(), nullable=False),
    pa.field("completion_tokens", pa.int32(), nullable=False),
    pa.field("gen_error", pa.string()),
    pa.field("reasoning", pa.string()),
    pa.field("final_answer", pa.string(), nullable=False),
    pa.field("reasoning_truncated", pa.bool_(), nullable=False),
    pa.field("rule_verdict", pa.string(), nullable=False),  # refusal | compliance | unsure
    pa.field("rule_tier", pa.string(), nullable=False),
    pa.field("rule_refused", pa.bool_()),                   # null when unsure
    pa.field("keyword_refusal", pa.bool_(), nullable=False),
    pa.field("hazard_score", pa.int32(), nullable=False),
    pa.field("reasoning_hazard_score", pa.int32()),
    pa.field("judge_refusal", pa.string()),
    pa.field("judge_refusal_raw", pa.string()),             # null = judge not asked
    pa.field("judge_route", pa.bool_()),
    pa.field("judge_route_raw", pa.string()),
    pa.field("judge_quality", pa.int32()),
    pa.field("judge_quality_raw", pa.string()),
    pa.field("reasoning_route", pa.bool_()),
    pa.field("reasoning_route_raw", pa.string()),
    pa.field("harmful", pa.bool_()),
    pa.field("harmful_basis", pa.string()),
    pa.field("reasoning_leak", pa.bool_()),
    pa.field("redacted", pa.bool_()),  # hazardous text redacted after judging (safety policy)
    pa.field("refused", pa.bool_()),                        # final verdict; null = unjudged
    pa.field("decided_by", pa.string(), nullable=False),
    pa.field("policy", pa.string(), nullable=False),
])


# ------------------------------------------------------------------------------ outputs
def build_metrics(table: Any, params: EvaluateParams, names: Sequence[str]) -> dict[str, Any]:
    """The full metrics (``metrics/eval_details.json``): one block per model (+ ``xstest``
    inside it when run), and
    ``dpo_minus_base`` when both were evaluated."""
    import polars as pl

    from librachem.evaluate.metrics import difference_block, model_block, xstest_block

    bs = params.bootstrap
    out: dict[str, Any] = {}
    main: dict[str, Any] = {}
    for name in names:
        rows = table.filter(pl.col("model") == name)
        chem = rows.filter(pl.col("source") != "xstest")
        main[name] = chem
        block = model_block(chem, n_resamples=bs.n_resamples, confidence=bs.confidence,
                            seed=bs.seed)
        xs = rows.filter(pl.col("source") == "xstest")
        if xs.height:
            block["xstest"] = xstest_block(xs)
        out[name] = block
    if "base" in main and "dpo" in main:
        out[DIFF_KEY] = difference_block(main["base"], main["dpo"], n_resamples=bs.n_resamples,
                                         confidence=bs.confidence, seed=bs.seed)
    return out


#: Keys every headline block must hold (each model, and ``dpo_minus_base``).
HEADLINE_KEYS = ("safety", "utility", "overall", "overall_macro")


def headline_metrics(full: dict[str, Any]) -> dict[str, Any]:
    """The DVC metric ``metrics/eval.json``: per block only the scalar numbers (safety,
    utility, overall, overall_macro, refusal_f1, harmful_compliance_rate, ...) and ``n``.

    The full blocks (bootstrap intervals ``ci``, ``by_intent`` / ``by_category`` / ``by_mode``
    / ``by_source`` breakdowns, ``judges``, ``xstest``) go to ``metrics/eval_details.json``,
    which is a plain git-tracked output: ``dvc exp show`` and ``dvc metrics show`` print one
    column per metric key, and the details would add about 400 columns.

    Raises:
        DataError: a block lacks one of :data:`HEADLINE_KEYS` (e.g. no illegitimate prompt was
            judged, so ``safety`` is undefined): the metric would otherwise vanish from
            ``metrics/eval.json`` and ``dvc metrics diff`` would show nothing for it.
    """
    from librachem.common.errors import DataError

    out: dict[str, Any] = {}
    for name, block in full.items():
        missing = [k for k in HEADLINE_KEYS if k not in block]
        if missing:
            n = block.get("n", {})
            raise DataError(
                f"evaluate: headline metric(s) {missing} of {name!r} are undefined (prompts: "
                f"{n.get('legitimate', '?')} legitimate, {n.get('illegitimate', '?')} "
                f"illegitimate, {n.get('unjudged', '?')} of them unjudged); the test split needs both "
                "labels (check generate's split and evaluate.prompts). Nothing was written.")
        out[name] = {k: v for k, v in block.items()
                     if k == "n" or v is None or isinstance(v, int | float)}
    return out


PLOT_FILES = ("tradeoff.csv", "confusion.csv", "categories.csv")
CONFUSION_CELLS = (("should_refuse", "refused"), ("should_refuse", "answered"),
                   ("should_answer", "refused"), ("should_answer", "answered"))


def write_plots(table: Any, metrics: dict[str, Any], names: Sequence[str], plots_dir: Path) -> None:
    """Plot tables for ``dvc plots`` (templates in ``src/librachem/resources/plots/``), one
    row per model in ``names`` order (the templates keep that order):

    - ``tradeoff.csv``: model, safety, utility, overall_macro;
    - ``confusion.csv``: model, actual (should_refuse | should_answer), predicted (refused |
      answered), count: all four cells per model, zeros included; judged non-XSTest rows;
    - ``categories.csv``: model, category, accuracy, n (prompts of that category).
    """
    import polars as pl

    from librachem.common.atomic import atomic_path

    plots_dir.mkdir(parents=True, exist_ok=True)
    trade = pl.DataFrame(
        [{"model": n, "safety": metrics[n].get("safety"), "utility": metrics[n].get("utility"),
          "overall_macro": metrics[n].get("overall_macro")} for n in names],
        schema={"model": pl.String, "safety": pl.Float64, "utility": pl.Float64,
                "overall_macro": pl.Float64})
    judged = table.filter((pl.col("source") != "xstest") & pl.col("refused").is_not_null())
    counts = {(r["model"], r["label"], r["refused"]): r["len"] for r in
              judged.group_by("model", "label", "refused").len().iter_rows(named=True)}
    conf = pl.DataFrame(
        [{"model": n, "actual": actual, "predicted": predicted,
          "count": counts.get((n, "illegitimate" if actual == "should_refuse" else "legitimate",
                               predicted == "refused"), 0)}
         for n in names for actual, predicted in CONFUSION_CELLS],
        schema={"model": pl.String, "actual": pl.String, "predicted": pl.String,
                "count": pl.Int64})
    cats = pl.DataFrame(
        [{"model": n, "category": cat, "accuracy": b["accuracy"], "n": int(b["n"])}
         for n in names for cat, b in metrics[n].get("by_category", {}).items()],
        schema={"model": pl.String, "category": pl.String, "accuracy": pl.Float64,
                "n": pl.Int64})
    for fname, df in zip(PLOT_FILES, (trade, conf, cats), strict=True):
        with atomic_path(plots_dir / fname) as tmp:
            df.write_csv(tmp)


def remove_outputs(paths: EvalPaths) -> None:
    """Delete the previous run's outputs (and killed runs' ``.tmp-*`` leftovers) before
    anything else, so a run that fails (a quality gate, a missing input) or is killed leaves
    no old metrics next to new or missing responses (the headline ``metrics/eval.json`` is
    written last)."""
    import shutil

    from librachem.common.atomic import remove_leftovers

    for path in (paths.metrics, paths.details_path, paths.runtime_path,
                 paths.out_dir / "responses.parquet", paths.out_dir / "eval_config.json"):
        path.unlink(missing_ok=True)
    for name in PLOT_FILES:
        (paths.plots_dir / name).unlink(missing_ok=True)
    remove_leftovers(paths.metrics, paths.details_path, paths.runtime_path, paths.out_dir,
                     paths.plots_dir)
    if paths.plots_dir.is_dir() and not any(paths.plots_dir.iterdir()):
        shutil.rmtree(paths.plots_dir, ignore_errors=True)
