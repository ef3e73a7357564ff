"""DVC stage ``evaluate``: answer the test prompts with every model, judge, score.

Writes ``<out>/responses.parquet`` and ``<out>/eval_config.json``, ``--metrics`` (headline
JSON), ``--details`` (full metrics JSON), ``--runtime`` (timings and LLM-layer stats, which
change run to run) and the plot tables under ``--plots``. All logic is in
:mod:`librachem.evaluate`.
"""

from __future__ import annotations

from pathlib import Path

import click

from librachem.common.config import load_section
from librachem.common.stagecli import stage_main
from librachem.evaluate.params import EvalPaths, EvaluateParams
from librachem.evaluate.stage import evaluate

_DIR = click.Path(file_okay=False, path_type=Path)


@click.command()
@click.option("--params", "params_path", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("params.yaml"), show_default=True, help="params file")
@click.option("--triplets", type=_DIR, default=Path("data/triplets"), show_default=True,
              help="triplet shard set (its test split is evaluated)")
@click.option("--rephrased", type=_DIR, default=Path("data/rephrased_test"), show_default=True,
              help="augment's rephrased test prompts (used when present)")
@click.option("--base", type=_DIR, default=Path("models/base"), show_default=True)
@click.option("--sft", type=_DIR, default=Path("models/sft"), show_default=True)
@click.option("--dpo", type=_DIR, default=Path("models/dpo"), show_default=True)
@click.option("--out", "out_dir", type=_DIR, default=Path("data/eval"), show_default=True,
              help="folder for responses.parquet and eval_config.json")
@click.option("--metrics", "metrics_path", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("metrics/eval.json"), show_default=True,
              help="headline numbers per model (DVC metric)")
@click.option("--details", "details_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None,
              help="full metrics: intervals, breakdowns, judge statistics "
                   "[default: <metrics stem>_details.json beside --metrics]")
@click.option("--runtime", "runtime_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None,
              help="wall time, seconds and tokens/s per model, LLM call/cache stats "
                   "[default: <metrics stem>_runtime.json beside --metrics]")
@click.option("--plots", "plots_dir", type=_DIR, default=Path("metrics/eval_plots"),
              show_default=True)
@click.option("--cache-dir", type=_DIR, default=Path(".llm-cache"), show_default=True,
              help="LLM call cache (judges, baselines and the local models' answers)")
@click.option("--replay-only", is_flag=True, envvar="LIBRACHEM_REPLAY_ONLY",
              help="fail on any LLM call-cache miss (or set LIBRACHEM_REPLAY_ONLY=1)")
@stage_main
def main(params_path: Path, triplets: Path, rephrased: Path, base: Path, sft: Path, dpo: Path,
         out_dir: Path, metrics_path: Path, details_path: Path | None,
         runtime_path: Path | None, plots_dir: Path, cache_dir: Path, replay_only: bool) -> None:
    """Evaluate base / SFT / DPO (and baselines) for safety and utility."""
    params = load_section(EvaluateParams, "evaluate", params_path)
    evaluate(params, EvalPaths(triplets=triplets, rephrased=rephrased, base=base, sft=sft,
                               dpo=dpo, out_dir=out_dir, metrics=metrics_path,
                               details=details_path, runtime=runtime_path,
                               plots_dir=plots_dir, cache_dir=cache_dir,
                               replay_only=replay_only))


if __name__ == "__main__":
    main()
