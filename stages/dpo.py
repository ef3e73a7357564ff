"""DVC stage ``dpo``: DPO LoRA on top of the SFT model (reference = SFT model), TRL DPOTrainer.

Multi-GPU: ``accelerate launch --config_file src/librachem/resources/accelerate/ddp.yaml
stages/dpo.py --params params.yaml`` (or zero3.yaml / fsdp.yaml; see
src/librachem/resources/accelerate/README.md).
"""

from __future__ import annotations

from pathlib import Path

import click

from librachem.common.config import load_section
from librachem.common.stagecli import stage_main
from librachem.train.dpo import DpoParams, run_dpo

_dir = click.Path(file_okay=False, path_type=Path)


@click.command()
@click.option("--params", "params_path", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("params.yaml"), show_default=True, help="params file")
@click.option("--data", "data_dir", type=_dir, default=Path("data/augmented"), show_default=True,
              help="augmented triplet shard set")
@click.option("--base", "base_dir", type=_dir, default=Path("models/base"), show_default=True,
              help="base model HF folder")
@click.option("--sft", "sft_dir", type=_dir, default=Path("models/sft"), show_default=True,
              help="sft stage output (may hold no adapter when sft is disabled)")
@click.option("--out", "out_dir", type=_dir, default=Path("models/dpo"), show_default=True,
              help="output adapter folder")
@click.option("--live", "live_dir", type=_dir, default=Path("metrics/dpo"), show_default=True,
              help="DVCLive folder for the training curves")
@click.option("--summary", "summary_path", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("metrics/train.json"), show_default=True,
              help="training summary metrics (sft + dpo)")
@stage_main
def main(params_path: Path, data_dir: Path, base_dir: Path, sft_dir: Path, out_dir: Path,
         live_dir: Path, summary_path: Path) -> None:
    """Train the DPO LoRA adapter and write the model card and metrics."""
    params = load_section(DpoParams, "dpo", params_path)
    run_dpo(params, data_dir, base_dir, sft_dir, out_dir, live_dir, summary_path)


if __name__ == "__main__":
    main()
