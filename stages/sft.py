"""DVC stage ``sft``: LoRA SFT on prompt + chosen of the augmented triplets (train split).

Multi-GPU: ``accelerate launch --config_file src/librachem/resources/accelerate/ddp.yaml
stages/sft.py --params params.yaml`` (see src/librachem/resources/accelerate/README.md).
"""

from __future__ import annotations

from pathlib import Path

import click

from librachem.common.config import load_section
from librachem.common.stagecli import stage_main
from librachem.train.sft import SftParams, run_sft

_dir = click.Path(file_okay=False, path_type=Path)


@click.command()
@click.option("--params", "params_path", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("params.yaml"), show_default=True, help="params file")
@click.option("--data", "data_dir", type=_dir, default=Path("data/augmented"), show_default=True,
              help="augmented triplet shard set")
@click.option("--base", "base_dir", type=_dir, default=Path("models/base"), show_default=True,
              help="base model HF folder")
@click.option("--out", "out_dir", type=_dir, default=Path("models/sft"), show_default=True,
              help="output adapter folder")
@click.option("--live", "live_dir", type=_dir, default=Path("metrics/sft"), show_default=True,
              help="DVCLive folder for the training curves")
@stage_main
def main(params_path: Path, data_dir: Path, base_dir: Path, out_dir: Path,
         live_dir: Path) -> None:
    """Train the SFT LoRA adapter (or write an empty folder when sft.enabled is false)."""
    params = load_section(SftParams, "sft", params_path)
    run_sft(params, data_dir, base_dir, out_dir, live_dir)


if __name__ == "__main__":
    main()
