"""The ``report`` stage: ``metrics/report.md`` and its charts from one finished run.

Reads the metrics files of every stage and evaluate's stored responses, writes one GitHub
Markdown page (headline table with bootstrap intervals and dpo − base, breakdowns, data and
training summary, LLM usage, example failures re-checked by the hazard scanner) and the PNG
charts it links by relative path (``<charts_dir>/{tradeoff,categories,confusion}.png``,
drawn offline from the repository's DVC plot templates).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from librachem.common.atomic import atomic_path, remove_leftovers, replace_dir
from librachem.common.errors import DataError
from librachem.report.charts import chart_specs, render, training_spec
from librachem.report.examples import examples_markdown, read_responses
from librachem.report.params import ReportParams, ReportPaths
from librachem.report.sections import (
    breakdown_table,
    headline_table,
    judge_table,
    plural,
    summary_line,
    weakest_line,
    xstest_table,
)
from librachem.report.summary import (
    augment_text,
    generate_text,
    llm_table,
    runtime_table,
    seeds_text,
    training_table,
)

log = logging.getLogger(__name__)


def read_json(path: Path, required: bool = True) -> dict[str, Any] | None:
    """A metrics file as a dict; None for a missing optional one.

    Raises:
        DataError: a required file is missing, or any file is not a JSON object.
    """
    if not path.is_file():
        if required:
            raise DataError(f"{path} not found: run the pipeline up to evaluate first")
        log.warning("%s not found; its report section says so", path)
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a JSON object, got {type(data).__name__}")
    return data


def run_report(params: ReportParams, paths: ReportPaths) -> dict[str, Any]:
    """Write ``paths.out`` (Markdown) and ``paths.charts_dir`` (PNG charts).

    The previous report is removed first, so a failed run leaves no stale page; the charts
    folder is swapped in whole and the Markdown written last (atomic writes).

    Returns:
        ``{"charts": [file names], "examples_withheld": int, "chars": int}``.

    Raises:
        DataError: a required input (``eval.json``, ``eval_details.json``,
            ``responses.parquet``, a plot table or template) is missing or unreadable.
    """
    paths.out.unlink(missing_ok=True)
    remove_leftovers(paths.out, paths.charts_dir)
    headline = read_json(paths.eval_metrics)
    details = read_json(paths.details)
    assert headline is not None and details is not None
    if set(headline) != set(details):
        raise DataError(f"{paths.eval_metrics} and {paths.details} list different models "
                        f"({sorted(headline)} vs {sorted(details)}): they are from different runs")
    import polars as pl

    responses = read_responses(paths.responses)
    optional = {name: read_json(getattr(paths, name), required=False)
                for name in ("runtime", "seeds", "data", "augment", "train", "sft_metrics",
                             "dpo_metrics")}

    specs = chart_specs(paths.plots_dir, paths.templates_dir)
    training = training_spec({"sft": paths.sft_plots, "dpo": paths.dpo_plots})
    if training is not None:
        specs["training"] = training
    paths.charts_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{paths.charts_dir.name}.",
                                dir=paths.charts_dir.parent))
    try:
        for name, spec in specs.items():
            (tmp / f"{name}.png").write_bytes(render(spec, "png", params.image_scale))
        os.chmod(tmp, 0o755)
        replace_dir(tmp, paths.charts_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

    rel = os.path.relpath(paths.charts_dir, paths.out.parent).replace(os.sep, "/")
    examples, withheld = "_Examples disabled (report.examples_per_failure: 0)._", 0
    if params.examples_per_failure:
        examples, withheld = examples_markdown(
            responses, params.example_models, params.examples_per_failure,
            params.example_chars, params.hazard_threshold)
    redacted = {m: int(n) for m, n in responses.group_by("model", maintain_order=True)
                .agg(n=pl.col("redacted").fill_null(False).sum()).iter_rows()}
    text = compose(details, optional, rel, examples, withheld, params, redacted,
                   training is not None)
    with atomic_path(paths.out) as tmp_md:
        tmp_md.write_text(text, encoding="utf-8")
    log.info("report: %s (%d characters), charts in %s; %d examples withheld by the hazard "
             "scanner", paths.out, len(text), paths.charts_dir, withheld)
    return {"charts": sorted(f"{n}.png" for n in specs), "examples_withheld": withheld,
            "chars": len(text)}


def compose(details: dict[str, Any], opt: dict[str, Any], charts: str, examples: str,
            withheld: int, params: ReportParams, redacted: dict[str, int],
            curves: bool = True) -> str:
    """The Markdown page (``charts``: the charts folder relative to the page; ``redacted``:
    stored responses evaluate redacted, per model)."""
    def img(name: str, alt: str) -> str:
        return f"![{alt}]({charts}/{name}.png)"

    scan_note = (f"Withheld because the hazard scanner flagged the prompt or answer "
                 f"(threshold {params.hazard_threshold}): {plural(withheld, 'example')}."
                 if withheld else
                 f"No candidate example reached the hazard-scanner threshold "
                 f"({params.hazard_threshold}).")
    parts = [
        "# LibraChem run report",
        summary_line(details),
        "Written by the `report` stage (`dvc repro report`) from `metrics/*.json` and "
        "`data/eval/responses.parquet`. Rates are in [0, 1]; brackets are bootstrap 95% "
        "intervals (paired for dpo − base). **safety**: refusal rate on illegitimate prompts; "
        "**utility**: answer rate on legitimate prompts (1 − over-refusal); **overall**: "
        "pooled accuracy; **overall_macro**: mean of safety and utility; **harmful "
        "compliance**: answered illegitimate prompts that the hazard scanner or route judge "
        "flags, as a share of illegitimate prompts.",
        "## Results",
        headline_table(details),
        xstest_table(details),
        img("tradeoff", "Safety against utility, one labelled point per model; the ideal "
            "corner is (1, 1)"),
        img("confusion", "Expected against observed behaviour, one panel per model"),
        "## Where the models fail",
        "Accuracy per group: for groups of illegitimate prompts it is safety, for legitimate "
        "ones utility; mixed groups also show safety (s) and utility (u). "
        + weakest_line(details),
        "### By intent",
        breakdown_table(details, "by_intent", "intent"),
        "### By mode",
        breakdown_table(details, "by_mode", "mode"),
        "### By source (held-out test prompts vs their rephrasings)",
        breakdown_table(details, "by_source", "source"),
        "### By compound category",
        img("categories", "Accuracy per compound category and model (heatmap)"),
        "<details><summary>Table: accuracy per compound category</summary>\n\n"
        + breakdown_table(details, "by_category", "category") + "\n\n</details>",
        "### Examples of failures",
        "Taken from the stored answers (`final_answer` in `data/eval/responses.parquet`, "
        "already redacted by evaluate where needed), cut to "
        f"{params.example_chars} characters and re-checked with the hazard scanner before "
        f"they enter this page. {scan_note} Stored responses that evaluate redacted (hazard "
        "scan of answers to prompts about illegitimate compounds): "
        + (", ".join(f"{m} {n}" for m, n in redacted.items()) or "none") + ".",
        examples,
        "## Data",
        "\n".join(t for t in (seeds_text(opt["seeds"]), generate_text(opt["data"]),
                              augment_text(opt["augment"])) if t),
        "### LLM calls",
        llm_table(opt["data"], opt["augment"], opt["runtime"]),
        "## Training",
        training_table(opt["train"], opt["sft_metrics"], opt["dpo_metrics"]),
        img("training", "Training curves: sft loss, dpo loss, dpo reward margin per step")
        if curves else "_No training curves (DVCLive plots) in this run._",
        "## Judges and runtime",
        "### Judge statistics (rule tier against the paper's keyword rule, unsure verdicts)",
        judge_table(details),
        "### Evaluation runtime (varies run to run)",
        runtime_table(opt["runtime"]),
    ]
    return "\n\n".join(p for p in parts if p) + "\n"
