"""DVC stage ``base_model``: convert the embedded SmolLM2 GGUF into ``models/base/``."""

from __future__ import annotations

from pathlib import Path

import click

from librachem.base_model.stage import BaseModelParams, convert_base_model
from librachem.common.config import load_section
from librachem.common.stagecli import stage_main


@click.command()
@click.option("--params", "params_path", type=click.Path(dir_okay=False, path_type=Path),
              default=Path("params.yaml"), show_default=True, help="params file")
@click.option("--out", "out_dir", type=click.Path(file_okay=False, path_type=Path),
              default=Path("models/base"), show_default=True, help="output HF model folder")
@stage_main
def main(params_path: Path, out_dir: Path) -> None:
    """Write models/base: the embedded SmolLM2-135M-Instruct as fp32 (offline, ~20 s), or
    base_model.pretrained (hub id or folder) with its weights as stored."""
    params = load_section(BaseModelParams, "base_model", params_path)
    convert_base_model(params, out_dir)


if __name__ == "__main__":
    main()
