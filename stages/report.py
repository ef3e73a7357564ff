"""DVC stage ``report``: one Markdown report per run, ``metrics/report.md``, and its charts.

Reads every stage's metrics file, evaluate's plot tables and stored responses; writes
``--out`` and the PNG charts under ``--charts``. All logic is in :mod:`librachem.report`.
"""

from __future__ import annotations

from pathlib import Path

import click

from librachem.common.config import load_section
from librachem.common.stagecli import stage_main
from librachem.report.params import ReportParams, ReportPaths
from librachem.report.stage import run_report

_FILE = click.Path(dir_okay=False, path_type=Path)
_DIR = click.Path(file_okay=False, path_type=Path)


@click.command()
@click.option("--params", "params_path", type=_FILE, default=Path("params.yaml"),
              show_default=True, help="params file")
@click.option("--eval", "eval_metrics", type=_FILE, default=Path("metrics/eval.json"),
              show_default=True, help="evaluate's headline metrics (required)")
@click.option("--details", type=_FILE, default=Path("metrics/eval_details.json"),
              show_default=True, help="evaluate's full metrics (required)")
@click.option("--runtime", type=_FILE, default=Path("metrics/eval_runtime.json"),
              show_default=True)
@click.option("--responses", type=_FILE, default=Path("data/eval/responses.parquet"),
              show_default=True, help="evaluate's stored responses (required)")
@click.option("--seeds", type=_FILE, default=Path("metrics/seeds.json"), show_default=True)
@click.option("--data", type=_FILE, default=Path("metrics/data.json"), show_default=True)
@click.option("--augment", type=_FILE, default=Path("metrics/augment.json"), show_default=True)
@click.option("--train", type=_FILE, default=Path("metrics/train.json"), show_default=True)
@click.option("--sft-metrics", type=_FILE, default=Path("metrics/sft/metrics.json"),
              show_default=True)
@click.option("--dpo-metrics", type=_FILE, default=Path("metrics/dpo/metrics.json"),
              show_default=True)
@click.option("--sft-plots", type=_DIR, default=Path("metrics/sft/plots/metrics"),
              show_default=True, help="sft's DVCLive curves (loss.tsv)")
@click.option("--dpo-plots", type=_DIR, default=Path("metrics/dpo/plots/metrics"),
              show_default=True, help="dpo's DVCLive curves (loss.tsv, rewards/margins.tsv)")
@click.option("--plots", "plots_dir", type=_DIR, default=Path("metrics/eval_plots"),
              show_default=True, help="evaluate's plot tables")
@click.option("--templates", "templates_dir", type=_DIR,
              default=Path("src/librachem/resources/plots"), show_default=True,
              help="the DVC plot templates that draw them")
@click.option("--out", type=_FILE, default=Path("metrics/report.md"), show_default=True)
@click.option("--charts", "charts_dir", type=_DIR, default=Path("metrics/report"),
              show_default=True, help="folder for the report's PNG charts")
@stage_main
def main(params_path: Path, **paths: Path) -> None:
    """Write the run report (Markdown + PNG charts) from the finished pipeline's outputs."""
    params = load_section(ReportParams, "report", params_path)
    run_report(params, ReportPaths(**paths))


if __name__ == "__main__":
    main()
