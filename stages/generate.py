"""DVC stage ``generate``: three-phase generation of (prompt, chosen, rejected) triplet shards."""

from __future__ import annotations

from pathlib import Path

import click

from librachem.common.config import load_section
from librachem.common.stagecli import stage_main
from librachem.generate.stage import GenerateParams, run_generate

_Dir = click.Path(file_okay=False, path_type=Path)
_File = click.Path(dir_okay=False, path_type=Path)


@click.command()
@click.option("--params", "params_path", type=_File, default=Path("params.yaml"),
              show_default=True, help="params file (section `generate`)")
@click.option("--seeds", "seeds_path", type=_File, default=Path("data/seeds/balanced.parquet"),
              show_default=True, help="balanced seeds table")
@click.option("--out", "out_dir", type=_Dir, default=Path("data/triplets"), show_default=True,
              help="triplet shard folder")
@click.option("--metrics", "metrics_path", type=_File, default=Path("metrics/data.json"),
              show_default=True, help="data report (JSON)")
@click.option("--cache-dir", type=_Dir, default=Path(".llm-cache"), show_default=True,
              help="LLM call cache")
@click.option("--base-model-dir", type=_Dir, default=Path("models/base"), show_default=True,
              help="folder the alias smollm2-135m-instruct resolves to")
@click.option("--replay-only", is_flag=True, envvar="LIBRACHEM_REPLAY_ONLY",
              help="fail on any LLM call-cache miss (or set LIBRACHEM_REPLAY_ONLY=1)")
@stage_main
def main(params_path: Path, seeds_path: Path, out_dir: Path, metrics_path: Path,
         cache_dir: Path, base_model_dir: Path, replay_only: bool) -> None:
    """Craft requests from the seeds, have the generator answer them, write triplet shards."""
    from librachem.llm.factory import make_client
    from librachem.llm.keys import require_keys

    params = load_section(GenerateParams, "generate", params_path)
    require_keys([("generate.generator", params.generator)], replay_only=replay_only)
    client = make_client(params.generator, cache_dir=cache_dir, replay_only=replay_only,
                         local_model_dir=base_model_dir)
    metrics = run_generate(seeds_path, out_dir, metrics_path, params, client)
    click.echo(f"generate: {metrics['rows']} triplets from {metrics['requests']} requests "
               f"(drop rate {metrics['drop_rate']:.3f})")


if __name__ == "__main__":
    main()
