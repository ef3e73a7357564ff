"""The shipped accelerate launch configs parse with accelerate's own loader."""

from pathlib import Path

import pytest

CONFIGS = Path(__file__).parents[2] / "src" / "librachem" / "resources" / "accelerate"


@pytest.mark.parametrize(("name", "kind"), [("ddp", "MULTI_GPU"), ("zero3", "DEEPSPEED"),
                                            ("fsdp", "FSDP")])
def test_config_loads(name, kind):
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(CONFIGS / f"{name}.yaml"))
    assert config.distributed_type.value == kind and config.mixed_precision == "bf16"
    assert f"{name}.yaml" in (CONFIGS / "README.md").read_text()
