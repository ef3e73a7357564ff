"""The ``sft`` stage: LoRA supervised fine-tuning on prompt + chosen (train split), with TRL.

As in the official code (``sft_llama2.py``: LoRA r 8 / alpha 16 / dropout 0.05 on q/v, lr 1e-4
cosine) but with the loss on the completion only (TRL ``completion_only_loss``) and without
packing, so every chosen answer is learned in its own context and ends with EOS. With
``enabled: false`` the stage writes a folder with no adapter and ``dpo`` starts from the base.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Any

from pydantic import Field

from librachem.atomic import write_json
from librachem.chat_format import (TEMPLATE_VERSIONS, apply_format, assistant_turn,
                                   check_trainer_sample, drop_unfit_rows, user_turn)
from librachem.errors import QualityGateError, TrainingError
from librachem.training import (TEMPLATE_REPORT, LiveCurves, TrainParams, base_identity,
                                check_finite, lora_config, quantize_4bit, read_train_rows,
                                resolve_device, summarize, trl_common_args,
                                write_effective_config, write_model_card)

log = logging.getLogger(__name__)

CURVE_KEYS = ("loss", "learning_rate", "grad_norm", "mean_token_accuracy", "entropy")


class SftParams(TrainParams):
    """The ``sft`` params section (see :class:`~librachem.training.TrainParams`)."""

    enabled: bool = True
    learning_rate: float = Field(2e-4, gt=0, lt=1)


def gate_drops(drops: Any, max_drop_rate: float) -> None:
    """Raise QualityGateError when too many rows were unfit for training."""
    if drops.rows_in and drops.dropped / drops.rows_in > max_drop_rate:
        raise QualityGateError(f"{drops.dropped} of {drops.rows_in} rows unfit for training "
                               f"({drops.as_dict()}), above max_drop_rate {max_drop_rate}; "
                               "raise max_length or fix the data")
    if drops.rows_in == drops.dropped:
        raise QualityGateError(f"every row is unfit for training: {drops.as_dict()}")


def run_check(trainer: Any, tokenizer: Any, params: TrainParams, out_dir: Path,
              drops: Any, is_main: bool) -> dict[str, Any]:
    """Template check over a sample of the trainer's own batches; report written next to the
    adapter before training. Raises TrainingError when a failing check fires."""
    report = check_trainer_sample(trainer, tokenizer, sample=params.check_sample,
                                  max_length=params.max_length)
    record = {**report.as_dict(), "drops": drops.as_dict(), "format": params.format,
              "template_version": TEMPLATE_VERSIONS[params.format],
              "bos_token": tokenizer.bos_token, "eos_token": tokenizer.eos_token,
              "pad_token": tokenizer.pad_token}
    if is_main:
        write_json(Path(out_dir) / TEMPLATE_REPORT, record)
    if not report.ok:
        raise TrainingError(f"template check failed ({'; '.join(report.failures())}); "
                            f"see {Path(out_dir) / TEMPLATE_REPORT}")
    return record


def is_main_process() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


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
    out_dir.mkdir(parents=True, exist_ok=True)
    is_main = is_main_process()
    record: dict[str, Any] = {"stage": "sft", "params": params.model_dump(mode="json"),
                              "inputs": {"base": base_identity(base_dir)}}
    if not params.enabled:
        for stale in ("adapter_config.json", "adapter_model.safetensors"):
            (out_dir / stale).unlink(missing_ok=True)
        record["summary"] = {"enabled": False}
        if is_main:
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
    with tempfile.TemporaryDirectory() as work:
        if params.qlora:
            model = quantize_4bit(model, tokenizer, Path(work))
        peft_config = lora_config(params.lora, model)
        args = SFTConfig(**trl_common_args(params, Path(work) / "trainer", device),
                         completion_only_loss=True, packing=False)
        history: list[dict[str, float]] = []
        trainer = SFTTrainer(model=model, args=args, train_dataset=dataset,
                             processing_class=tokenizer, peft_config=peft_config,
                             callbacks=[LiveCurves.make(live_dir, CURVE_KEYS, history, is_main)])
        check = run_check(trainer, tokenizer, params, out_dir, drops, is_main)
        result = trainer.train()
    check_finite(history)
    summary = {**summarize(history, CURVE_KEYS), "global_steps": result.global_step,
               "train_runtime_s": round(result.metrics.get("train_runtime", 0.0), 2),
               "device": device["device"], "template_check_sequences": check["sequences_checked"]}
    record.update(summary=summary, data={**counts, **drops.as_dict()})
    trainer.save_model(str(out_dir))  # every rank: gathers ZeRO-3 / FSDP shards; rank 0 writes
    if is_main:
        (out_dir / "training_args.bin").unlink(missing_ok=True)  # pickle; the JSON record replaces it
        tokenizer.save_pretrained(out_dir)
        write_effective_config(out_dir, record)
        write_model_card(out_dir, title="SFT LoRA adapter (prompt + chosen)", record=record)
    log.info("sft: %d steps, loss %s", result.global_step, summary.get("loss"))
    return summary


def run_sft(params: SftParams, data_dir: Path, base_dir: Path, out_dir: Path,
            live_dir: Path) -> dict[str, Any]:
    """Stage entry: read the augmented shard set (manifest-checked) and :func:`train_sft`."""
    from librachem.training import read_triplets

    table = read_triplets(data_dir) if params.enabled else None
    return train_sft(params, table, base_dir, out_dir, live_dir)
