"""What a training stage writes besides the weights: the effective config, the model
card, the template-check report, the DVCLive folder of a disabled stage, and the
atomic save of the adapter folder (a function of its inputs: no wall-clock values)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from librachem.common.adapters import EFFECTIVE_CONFIG
from librachem.common.atomic import replace_dir, write_bytes, write_json
from librachem.common.hashing import sha256_file
from librachem.common.provenance import versions

log = logging.getLogger(__name__)


TEMPLATE_REPORT = "template_check.json"


def base_identity(base_dir: Path) -> dict[str, Any]:
    """What identifies the base model folder: its path, config digest and weight digests."""
    base = Path(base_dir)
    weights = sorted(base.glob("*.safetensors"))
    return {"path": str(base),
            "config_sha256": sha256_file(base / "config.json"),
            "weights_sha256": {w.name: sha256_file(w) for w in weights}}


def write_effective_config(out_dir: Path, record: dict[str, Any]) -> None:
    """Write ``librachem_config.json`` (resolved params, versions, inputs) into the adapter dir."""
    write_json(Path(out_dir) / EFFECTIVE_CONFIG, {**record, "versions": versions()})



def write_model_card(out_dir: Path, *, title: str, record: dict[str, Any]) -> None:
    """README.md model card: what it is, how to load it, data counts, params, training summary."""
    params = record.get("params", {})
    summary = record.get("summary", {})
    lines = [
        f"# {title}", "",
        "LoRA adapter of the LibraChem reproduction (arXiv 2501.13952): a chemistry assistant",
        "that refuses illegitimate synthesis requests and helps with legitimate ones.", "",
        "## Load", "",
        "```python",
        "from librachem.common.adapters import load_aligned",
        "model, tokenizer = load_aligned(\"models/base\", sft_dir=\"models/sft\", "
        "dpo_dir=\"models/dpo\")",
        "```", "",
        "Composition: base weights + SFT LoRA merged in fp32, then this adapter "
        "(`librachem.common.adapters.load_aligned`).", "",
        "## Data", "", "```json", json.dumps(record.get("data", {}), indent=2, sort_keys=True),
        "```", "",
        "## Params", "", "```json", json.dumps(params, indent=2, sort_keys=True), "```", "",
        "## Training summary", "", "```json", json.dumps(summary, indent=2, sort_keys=True),
        "```", "",
        f"Prompt format: `{params.get('format', '?')}` (see `librachem.common.chat_format`). "
        "The full effective config is in `librachem_config.json`; the pre-training template check "
        f"in `{TEMPLATE_REPORT}`.", "",
    ]
    write_bytes(Path(out_dir) / "README.md", "\n".join(lines).encode("utf-8"))



def write_disabled_curves(live_dir: Path) -> None:
    """The DVCLive folder of a stage that trained nothing (``sft.enabled: false``): the old
    curves are removed and the outputs ``dvc.yaml`` declares still exist --
    ``metrics.json`` = ``{"enabled": false, "step": 0}`` and an empty ``plots/metrics/loss.tsv``
    (DVCLive's layout) -- so ``dvc repro`` does not fail on a missing output."""
    import shutil

    live = Path(live_dir)
    shutil.rmtree(live, ignore_errors=True)
    write_json(live / "metrics.json", {"enabled": False, "step": 0})
    write_bytes(live / "plots" / "metrics" / "loss.tsv", b"step\tloss\n")



#: Summary keys that measure the machine, not the result: kept out of the adapter folder so
#: a rerun with the same inputs writes a byte-identical folder (same DVC hash); the runtime
#: goes to the stage's DVCLive ``metrics.json`` (``train_runtime_s``) instead.
WALL_CLOCK_KEYS = frozenset({"train_runtime_s"})


def without_wall_clock(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` with :data:`WALL_CLOCK_KEYS` removed from its ``summary`` (a copy)."""
    summary = record.get("summary")
    if not isinstance(summary, dict):
        return record
    return {**record, "summary": {k: v for k, v in summary.items() if k not in WALL_CLOCK_KEYS}}


def canonicalize_adapter_config(adapter_dir: Path) -> None:
    """Sort ``target_modules`` in PEFT's ``adapter_config.json``.

    PEFT keeps ``target_modules`` as a ``set`` and writes it in set order, which follows the
    per-process string hash seed (``PYTHONHASHSEED``), so two identical runs wrote different
    files. The order has no meaning to PEFT (it loads the list back into a set).
    """
    path = Path(adapter_dir) / "adapter_config.json"
    config = json.loads(path.read_text(encoding="utf-8"))
    modules = config.get("target_modules")
    if isinstance(modules, list) and all(isinstance(m, str) for m in modules):
        config["target_modules"] = sorted(modules)
        write_json(path, config)


def save_adapter(trainer: Any, tokenizer: Any, out_dir: Path, *, record: dict[str, Any],
                 title: str, is_main: bool) -> None:
    """Write the adapter folder atomically: weights + ``adapter_config.json``, tokenizer,
    effective config, model card and the template-check report go to a temporary sibling
    folder that replaces ``out_dir`` at the end, so a kill never leaves a folder with a
    half-written adapter. Every rank calls ``save_model`` (it gathers ZeRO-3 / FSDP shards;
    rank 0 writes). The trainer's pickled ``training_args.bin`` is removed (the JSON effective
    config replaces it). The folder is a function of the inputs: no wall-clock values, and
    ``adapter_config.json`` in a canonical order (:func:`canonicalize_adapter_config`)."""
    import shutil

    out_dir = Path(out_dir)
    tmp = out_dir.parent / f".tmp-{out_dir.name}"
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.save_model(str(tmp))
    if not is_main:
        return
    (tmp / "training_args.bin").unlink(missing_ok=True)
    canonicalize_adapter_config(tmp)
    tokenizer.save_pretrained(tmp)
    if (out_dir / TEMPLATE_REPORT).is_file():
        shutil.copy2(out_dir / TEMPLATE_REPORT, tmp / TEMPLATE_REPORT)
    record = without_wall_clock(record)
    write_effective_config(tmp, record)
    write_model_card(tmp, title=title, record=record)
    replace_dir(tmp, out_dir)
