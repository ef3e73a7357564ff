"""The ``sft`` stage: LoRA supervised fine-tuning on prompt + chosen (train split), with TRL.

As in the official code (``sft_llama2.py``: LoRA r 8 / alpha 16 / dropout 0.05 on q/v, lr 1e-4
cosine) but with the loss on the completion only (TRL ``completion_only_loss``) and without
packing, so every chosen answer is learned in its own context and ends with EOS. With
``enabled: false`` the stage writes a folder with no adapter and ``dpo`` starts from the base.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pydantic import Field

from librachem.train.loop import AdapterRun, clear_outputs, train_adapter
from librachem.train.params import TrainParams
from librachem.train.record import (
    base_identity,
    write_disabled_curves,
    write_effective_config,
    write_model_card,
)

log = logging.getLogger(__name__)

CURVE_KEYS = ("loss", "learning_rate", "grad_norm", "mean_token_accuracy", "entropy")


class SftParams(TrainParams):
    """The ``sft`` params section (see :class:`~librachem.train.params.TrainParams`)."""

    enabled: bool = True
    learning_rate: float = Field(2e-4, gt=0, lt=1)


def _make_trainer(model: Any, common: dict[str, Any], peft_config: Any, callbacks: list[Any],
                  dataset: Any, tokenizer: Any) -> Any:
    from trl import SFTConfig, SFTTrainer

    args = SFTConfig(**common, completion_only_loss=True, packing=False)
    return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tokenizer,
                      peft_config=peft_config, callbacks=callbacks)


def train_sft(params: SftParams, table: Any, base_dir: Path, out_dir: Path,
              live_dir: Path) -> dict[str, Any]:
    """Train the SFT LoRA adapter and write ``out_dir``.

    Args:
        params: the ``sft`` section.
        table: augmented triplets (pyarrow Table: prompt, chosen, rejected, split, ...).
        base_dir: HF folder of the base model.
        out_dir: adapter folder (``adapter_model.safetensors``, ``adapter_config.json``,
            tokenizer, ``librachem_config.json``, ``template_check.json``, ``README.md``).
        live_dir: DVCLive folder for the curves.

    Returns:
        The training summary (also stored in the effective config).

    Raises:
        DataError, QualityGateError, TrainingError: see
        :func:`~librachem.train.loop.train_adapter`.
    """
    out_dir, live_dir = Path(out_dir), Path(live_dir)
    is_main = clear_outputs(out_dir)
    if not params.enabled:
        record: dict[str, Any] = {"stage": "sft", "params": params.model_dump(mode="json"),
                                  "inputs": {"base": base_identity(base_dir)},
                                  "summary": {"enabled": False}}
        if is_main:
            write_disabled_curves(live_dir)
            write_effective_config(out_dir, record)
            write_model_card(out_dir, title="SFT stage (disabled)", record=record)
        log.info("sft disabled: %s holds no adapter; dpo starts from the base model", out_dir)
        return record["summary"]
    run = AdapterRun(stage="sft", title="SFT LoRA adapter (prompt + chosen)",
                     fields={"completion": "chosen"}, curve_keys=CURVE_KEYS,
                     make_trainer=_make_trainer)
    summary = train_adapter(run, params, table, base_dir, None, out_dir, live_dir,
                            is_main)["summary"]
    log.info("sft: %d steps, loss %s", summary["global_steps"], summary.get("loss"))
    return summary


def run_sft(params: SftParams, data_dir: Path, base_dir: Path, out_dir: Path,
            live_dir: Path) -> dict[str, Any]:
    """Stage entry: read the augmented shard set (manifest-checked) and :func:`train_sft`."""
    from librachem.train.data import read_triplets

    table = read_triplets(data_dir) if params.enabled else None
    return train_sft(params, table, base_dir, out_dir, live_dir)
