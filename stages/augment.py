"""DVC stage ``augment``: rephrase train triplets into guarded, combined, deduplicated shards."""

from __future__ import annotations

from pathlib import Path

import click

from librachem.augment.stage import AugmentParams, run_augment
from librachem.common.config import load_section
from librachem.common.stagecli import stage_main

_Dir = click.Path(file_okay=False, path_type=Path)
_File = click.Path(dir_okay=False, path_type=Path)


@click.command()
@click.option("--params", "params_path", type=_File, default=Path("params.yaml"),
              show_default=True, help="params file (section `augment`)")
@click.option("--triplets", "triplets_dir", type=_Dir, default=Path("data/triplets"),
              show_default=True, help="triplet shard folder (from generate)")
@click.option("--out", "out_dir", type=_Dir, default=Path("data/augmented"),
              show_default=True, help="augmented train shard folder")
@click.option("--test-out", "test_out_dir", type=_Dir, default=Path("data/rephrased_test"),
              show_default=True, help="rephrased test prompts (never trained on)")
@click.option("--metrics", "metrics_path", type=_File, default=Path("metrics/augment.json"),
              show_default=True, help="augment report (JSON)")
@click.option("--cache-dir", type=_Dir, default=Path(".llm-cache"), show_default=True,
              help="LLM call cache")
@click.option("--base-model-dir", type=_Dir, default=Path("models/base"), show_default=True,
              help="folder the alias smollm2-135m-instruct resolves to")
@click.option("--replay-only", is_flag=True, envvar="LIBRACHEM_REPLAY_ONLY",
              help="fail on any LLM call-cache miss (or set LIBRACHEM_REPLAY_ONLY=1)")
@stage_main
def main(params_path: Path, triplets_dir: Path, out_dir: Path, test_out_dir: Path,
         metrics_path: Path, cache_dir: Path, base_model_dir: Path, replay_only: bool) -> None:
    """Rephrase prompts and answers of the train split, guard, combine, dedup, decontaminate."""
    from librachem.llm.factory import make_client
    from librachem.llm.keys import require_keys

    params = load_section(AugmentParams, "augment", params_path)
    require_keys([("augment.rephraser", params.rephraser)], replay_only=replay_only)
    client = make_client(params.rephraser, cache_dir=cache_dir, replay_only=replay_only,
                         local_model_dir=base_model_dir)
    metrics = run_augment(triplets_dir, out_dir, test_out_dir, metrics_path, params, client)
    click.echo(f"augment: {metrics['rows_in']} train triplets -> {metrics['rows_out']} rows; "
               f"{metrics['rephrased_test_rows']} rephrased test prompts")


if __name__ == "__main__":
    main()
