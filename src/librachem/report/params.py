"""``params.yaml: report`` and the paths the ``report`` stage reads and writes."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from pydantic import Field

from librachem.common.config import Section


class ReportParams(Section):
    """How ``metrics/report.md`` is written.

    Attributes:
        examples_per_failure: example responses shown per failure type (over-refusal,
            harmful compliance) and model; 0 = none.
        example_models: models whose failures are shown (a model not evaluated is noted and
            skipped).
        example_chars: an example prompt or response longer than this is cut at a word
            boundary and ends with an ellipsis.
        hazard_threshold: hazard-scanner score (``librachem.common.hazard``) at or above
            which a stored response or prompt is left out of the report (counted and said).
            Evaluate already redacts at ``evaluate.judge.redact_threshold`` (3); this is a
            second check before text reaches a page meant for sharing.
        image_scale: PNG pixel scale of the charts (1 = the templates' own size).
    """

    examples_per_failure: int = Field(default=3, ge=0, le=20)
    example_models: list[str] = Field(default_factory=lambda: ["dpo"], min_length=1)
    example_chars: int = Field(default=300, ge=40, le=2000)
    hazard_threshold: int = Field(default=3, ge=1)
    image_scale: float = Field(default=1.0, gt=0.0, le=4.0)


@dataclass(frozen=True)
class ReportPaths:
    """Every file the stage reads or writes (all stated in ``dvc.yaml``).

    ``eval_metrics``, ``details`` and ``responses`` are required; a missing optional input
    (e.g. ``metrics/sft/metrics.json`` when sft is disabled) leaves its section as a note.
    """

    eval_metrics: Path        # metrics/eval.json
    details: Path             # metrics/eval_details.json
    runtime: Path             # metrics/eval_runtime.json
    responses: Path           # data/eval/responses.parquet
    seeds: Path               # metrics/seeds.json
    data: Path                # metrics/data.json
    augment: Path             # metrics/augment.json
    train: Path               # metrics/train.json
    sft_metrics: Path         # metrics/sft/metrics.json
    dpo_metrics: Path         # metrics/dpo/metrics.json
    sft_plots: Path           # metrics/sft/plots/metrics (DVCLive curves)
    dpo_plots: Path           # metrics/dpo/plots/metrics
    plots_dir: Path           # metrics/eval_plots (tradeoff.csv, confusion.csv, categories.csv)
    templates_dir: Path       # src/librachem/resources/plots
    out: Path                 # metrics/report.md
    charts_dir: Path          # metrics/report (the report's PNG charts)
