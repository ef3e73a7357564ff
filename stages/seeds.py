"""DVC stage ``seeds``: the balanced seed of legitimate and illegitimate compounds."""

from __future__ import annotations

from pathlib import Path

import click

from librachem.common.config import load_section
from librachem.common.stagecli import stage_main
from librachem.seeds.stage import SeedsParams, run_seeds


@click.command()
@click.option("--params", "params_path", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("params.yaml"), show_default=True, help="params file")
@click.option("--compounds", "compounds_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="curated compounds CSV (data/seeds/compounds.csv)")
@click.option("--out", "out_path", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="output Parquet (data/seeds/balanced.parquet)")
@click.option("--metrics", "metrics_path", required=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="output metrics JSON (metrics/seeds.json)")
@stage_main
def main(params_path: Path, compounds_path: Path, out_path: Path, metrics_path: Path) -> None:
    """Validate the compounds CSV, sample by ratio, split train/test, expand to modes."""
    params = load_section(SeedsParams, "seeds", params_path)
    run_seeds(params, compounds_path, out_path, metrics_path)


if __name__ == "__main__":
    main()
