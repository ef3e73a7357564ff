"""The ``sft`` stage: LoRA supervised fine-tuning on prompt + chosen (train split), with TRL.

As in the official code (``sft_llama2.py``: LoRA r 8 / alpha 16 / dropout 0.05 on q/v, lr 1e-4
cosine) but with the loss on the completion only (TRL ``completion_only_loss``) and without
packing, so every chosen answer is learned in its own context and ends with EOS. With
``enabled: false`` the stage writes a folder with no adapter and ``dpo`` starts from the base.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

from pydantic import Field

from librachem.atomic import remove_leftovers
from librachem.chat_format import apply_format, assistant_turn, drop_unfit_rows, user_turn
from librachem.training import (TrainParams, base_identity, fit, gate_drops, is_main_process,
                                read_train_rows, resolve_device, save_adapter,
                                write_disabled_curves, write_effective_config,
                                write_model_card)

log = logging.getLogger(__name__)

CURVE_KEYS = ("loss", "learning_rate", "grad_norm", "mean_token_accuracy", "entropy")


class SftParams(TrainParams):
    """The ``sft`` params section (see :class:`~librachem.training.TrainParams`)."""

    enabled: bool = True
    learning_rate: float = Field(2e-4, gt=0, lt=1)


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
        DataError, QualityGateError, TrainingError: see the helpers used.
    """
    out_dir, live_dir = Path(out_dir), Path(live_dir)
    is_main = is_main_process()
    if is_main:  # a failed or killed run must not leave the old adapter looking current
        shutil.rmtree(out_dir, ignore_errors=True)
        remove_leftovers(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record: dict[str, Any] = {"stage": "sft", "params": params.model_dump(mode="json"),
                              "inputs": {"base": base_identity(base_dir)}}
    if not params.enabled:
        for stale in ("adapter_config.json", "adapter_model.safetensors"):
            (out_dir / stale).unlink(missing_ok=True)
        record["summary"] = {"enabled": False}
        if is_main:
            write_disabled_curves(live_dir)
            write_effective_config(out_dir, record)
            write_model_card(out_dir, title="SFT stage (disabled)", record=record)
        log.info("sft disabled: %s holds no adapter; dpo starts from the base model", out_dir)
        return record["summary"]

    from datasets import Dataset
    from transformers import AutoTokenizer
    from trl import SFTConfig, SFTTrainer

    device = resolve_device(params)
    rows, counts = read_train_rows(table, max_rows=params.max_rows, seed=params.seed)
    tokenizer = apply_format(AutoTokenizer.from_pretrained(base_dir), params.format)
    rows, drops = drop_unfit_rows(rows, tokenizer, params.max_length, ["chosen"])
    gate_drops(drops, params.max_drop_rate)
    dataset = Dataset.from_list([{"prompt": user_turn(r["prompt"]),
                                  "completion": assistant_turn(r["chosen"])} for r in rows])

    from librachem.adapters import load_sft_merged

    model = load_sft_merged(base_dir, None).train()

    def make_trainer(model: Any, common: dict[str, Any], peft_config: Any,
                     callbacks: list[Any]) -> Any:
        args = SFTConfig(**common, completion_only_loss=True, packing=False)
        return SFTTrainer(model=model, args=args, train_dataset=dataset,
                          processing_class=tokenizer, peft_config=peft_config,
                          callbacks=callbacks)

    trainer, summary = fit(make_trainer, model=model, tokenizer=tokenizer, params=params,
                           device=device, out_dir=out_dir, live_dir=live_dir,
                           curve_keys=CURVE_KEYS, drops=drops, is_main=is_main)
    record.update(summary=summary, data={**counts, **drops.as_dict()})
    save_adapter(trainer, tokenizer, out_dir, record=record,
                 title="SFT LoRA adapter (prompt + chosen)", is_main=is_main)
    log.info("sft: %d steps, loss %s", summary["global_steps"], summary.get("loss"))
    return summary


def run_sft(params: SftParams, data_dir: Path, base_dir: Path, out_dir: Path,
            live_dir: Path) -> dict[str, Any]:
    """Stage entry: read the augmented shard set (manifest-checked) and :func:`train_sft`."""
    from librachem.training import read_triplets

    table = read_triplets(data_dir) if params.enabled else None
    return train_sft(params, table, base_dir, out_dir, live_dir)
