"""The LoRA training loop shared by the ``sft`` and ``dpo`` stages.

The device / precision decision, the LoRA config (every target must match a module), TRL
argument mapping, the DVCLive curve logger, the template check and the run itself
(:func:`train_adapter`). The stage-specific parts (TRL config and trainer class, dataset
columns, record inputs) live in :mod:`librachem.train.sft` and :mod:`librachem.train.dpo`.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from librachem.common.atomic import remove_leftovers, write_json
from librachem.common.errors import TrainingError
from librachem.train.params import LoraParams, TrainParams
from librachem.train.record import TEMPLATE_REPORT

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- model

def resolve_device(params: TrainParams) -> dict[str, Any]:
    """Decide device and precision flags for TRL; QLoRA needs CUDA and bitsandbytes.

    Returns:
        ``{"device": "cuda"|"cpu", "bf16": bool, "use_cpu": bool}``.

    Raises:
        TrainingError: ``qlora`` without CUDA or without bitsandbytes.
    """
    import torch

    cuda = torch.cuda.is_available()
    if params.qlora:
        if not cuda:
            raise TrainingError("qlora: true needs a CUDA GPU (bitsandbytes 4-bit); this machine "
                                "has none. Set qlora: false to train the LoRA in fp32/bf16.")
        try:
            import bitsandbytes  # noqa: F401
        except ImportError as exc:
            raise TrainingError("qlora: true needs the bitsandbytes package on the GPU machine "
                                "(pip install bitsandbytes)") from exc
    bf16 = params.precision == "bf16"
    return {"device": "cuda" if cuda else "cpu", "bf16": bf16, "use_cpu": not cuda}


def lora_config(params: LoraParams, model: Any, *, seed_note: str = "") -> Any:
    """PEFT ``LoraConfig`` for a causal LM, after checking every target matches a module.

    PEFT only fails when *no* target matches; a misspelt one next to a good one would be
    ignored silently. We match each name like PEFT does (exact name or ``.name`` suffix).

    Raises:
        TrainingError: a target module name matches no module of ``model``.
    """
    from peft import LoraConfig

    names = [n for n, _ in model.named_modules()]
    unmatched = [t for t in params.target_modules
                 if not any(n == t or n.endswith("." + t) for n in names)]
    if unmatched:
        leaves = sorted({n.rsplit(".", 1)[-1] for n in names if n and "." in n})
        raise TrainingError(f"lora.target_modules {unmatched} match no module of the model "
                            f"(module names include {leaves[:24]})")
    return LoraConfig(r=params.r, lora_alpha=params.alpha, lora_dropout=params.dropout,
                      target_modules=list(params.target_modules), bias="none",
                      task_type="CAUSAL_LM")


def trl_common_args(params: TrainParams, out_dir: Path, device: dict[str, Any]) -> dict[str, Any]:
    """Keyword arguments shared by ``SFTConfig`` and ``DPOConfig``.

    Checkpoints are not written (``save_strategy="no"``): the stage saves the final adapter
    itself. ``report_to="none"``: curves go through :class:`LiveCurves` only.
    """
    return dict(
        output_dir=str(out_dir),
        learning_rate=params.learning_rate,
        lr_scheduler_type=params.lr_scheduler,
        warmup_steps=params.warmup_ratio,  # a float < 1 is a ratio in transformers 5
        num_train_epochs=params.epochs,
        max_steps=params.max_steps,
        per_device_train_batch_size=params.batch_size,
        gradient_accumulation_steps=params.grad_accum,
        max_length=params.max_length,
        weight_decay=params.weight_decay,
        max_grad_norm=params.max_grad_norm,
        bf16=device["bf16"],
        use_cpu=device["use_cpu"],
        activation_checkpointing=params.activation_checkpointing,
        seed=params.seed,
        data_seed=params.seed,
        logging_steps=params.logging_steps,
        # transformers logs a NaN/inf loss as the previous value by default, which hid a
        # diverged run from check_finite (the adapter was saved all-NaN)
        logging_nan_inf_filter=False,
        save_strategy="no",
        report_to="none",
        dataloader_pin_memory=False,
        disable_tqdm=False,
    )


# ---------------------------------------------------------------- curves and records

class LiveCurves:
    """Factory of a transformers ``TrainerCallback`` logging chosen keys to DVCLive.

    Writes ``<dir>/plots/metrics/<key>.tsv`` per key and ``<dir>/metrics.json`` (last values);
    no ``dvc.yaml`` edits, no DVC experiment (``dvcyaml=None``, ``save_dvc_exp=False``): the
    plots are declared once in the repository's ``dvc.yaml``.
    """

    @staticmethod
    def make(live_dir: Path, keys: tuple[str, ...], history: list[dict[str, float]],
             enabled: bool = True) -> Any:
        from transformers import TrainerCallback

        class _Callback(TrainerCallback):
            def __init__(self) -> None:
                self.live = None
                if enabled:
                    from dvclive import Live

                    self.live = Live(dir=str(live_dir), save_dvc_exp=False, dvcyaml=None)

            def on_log(self, args, state, control, logs=None, **kwargs):  # noqa: ANN001
                logs = logs or {}
                if self.live is not None and "train_runtime" in logs:
                    # wall clock belongs in the (uncached) metrics file, not the adapter folder
                    self.live.summary["train_runtime_s"] = round(float(logs["train_runtime"]), 2)
                row = {k: float(logs[k]) for k in keys if k in logs}
                if not row:
                    return
                row["step"] = state.global_step
                history.append(row)
                if self.live is not None:
                    self.live.step = state.global_step
                    for key, value in row.items():
                        if key != "step":
                            self.live.log_metric(key, value)
                    self.live.next_step()

            def on_train_end(self, args, state, control, **kwargs):  # noqa: ANN001
                if self.live is not None:
                    self.live.end()

        return _Callback()





def summarize(history: list[dict[str, float]], keys: tuple[str, ...]) -> dict[str, Any]:
    """First / last values of each logged key (for the effective config and metrics)."""
    out: dict[str, Any] = {"logged_steps": len(history)}
    for key in keys:
        values = [row[key] for row in history if key in row]
        if values:
            out[key] = {"first": values[0], "last": values[-1]}
    return out


def check_finite(history: list[dict[str, float]]) -> None:
    """Raise TrainingError when a logged loss or gradient norm is NaN or infinite (the
    trainer logs them unfiltered: ``logging_nan_inf_filter=False``)."""
    import math

    for row in history:
        for key in ("loss", "grad_norm"):
            value = row.get(key)
            if value is not None and not math.isfinite(value):
                raise TrainingError(f"training {key} became {value} at step {row.get('step')}; "
                                    "nothing was saved. Lower the learning rate, check the "
                                    "LoRA params or use precision: fp32")



# ---------------------------------------------------------------------------- the training run
def is_main_process() -> bool:
    """True on the process that writes files (rank 0 under accelerate; always True alone)."""
    from accelerate import PartialState

    return PartialState().is_main_process


def clear_outputs(out_dir: Path, *files: Path | None) -> bool:
    """Start a training stage: on the main process, remove the old adapter folder, killed
    runs' leftovers and the given metric ``files``, so a failed or killed run never leaves the
    old adapter (or its metrics) looking current. Returns whether this is the main process."""
    is_main = is_main_process()
    if is_main:
        shutil.rmtree(out_dir, ignore_errors=True)
        remove_leftovers(out_dir)
        for path in files:
            if path is not None:
                Path(path).unlink(missing_ok=True)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    return is_main


def run_check(trainer: Any, tokenizer: Any, params: TrainParams, out_dir: Path,
              drops: Any, is_main: bool) -> dict[str, Any]:
    """Template check over a sample of the trainer's own batches; the report is written next
    to the adapter before training.

    Raises:
        TrainingError: a failing check fired (see ``template_check.json``).
    """
    from librachem.common.chat_format import TEMPLATE_VERSIONS, check_trainer_sample

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


def fit(make_trainer: Any, *, model: Any, tokenizer: Any, params: TrainParams,
        device: dict[str, Any], out_dir: Path, live_dir: Path, curve_keys: tuple[str, ...],
        drops: Any, is_main: bool) -> tuple[Any, dict[str, Any]]:
    """The part of a LoRA run that SFT and DPO share: optional 4-bit quantization, the LoRA
    config, the trainer, the template check, ``train()``, the finite-loss check, the summary.

    Args:
        make_trainer: ``(model, common_args, peft_config, callbacks) -> trainer``; builds the
            stage's TRL config from ``common_args`` (:func:`trl_common_args`) and its trainer.
        curve_keys: logged keys kept in the summary and sent to DVCLive.

    Returns:
        ``(trainer, summary)``: summary has first/last of each curve key, ``global_steps``,
        ``train_runtime_s`` (seconds), ``device`` and ``template_check_sequences``.

    Raises:
        TrainingError: template check failure, non-finite loss, QLoRA without CUDA, bad LoRA
            target.
    """
    import tempfile

    with tempfile.TemporaryDirectory() as work:
        peft_config = lora_config(params.lora, model)
        common = trl_common_args(params, Path(work) / "trainer", device)
        history: list[dict[str, float]] = []
        callbacks = [LiveCurves.make(live_dir, curve_keys, history, is_main)]
        trainer = make_trainer(model, common, peft_config, callbacks)
        check = run_check(trainer, tokenizer, params, out_dir, drops, is_main)
        result = trainer.train()
    check_finite(history)
    summary = {**summarize(history, curve_keys), "global_steps": result.global_step,
               "train_runtime_s": round(result.metrics.get("train_runtime", 0.0), 2),
               "device": device["device"], "template_check_sequences": check["sequences_checked"]}
    return trainer, summary


@dataclass(frozen=True)
class AdapterRun:
    """What differs between the ``sft`` and ``dpo`` stages; :func:`train_adapter` does the rest.

    Attributes:
        stage: ``"sft"`` or ``"dpo"`` (recorded in the effective config).
        title: the model card's title.
        fields: dataset column -> triplet column of the completion(s): SFT
            ``{"completion": "chosen"}`` (TRL prompt-completion), DPO ``{"chosen": "chosen",
            "rejected": "rejected"}`` (TRL preference); each becomes an assistant turn.
        curve_keys: logged keys kept in the summary and sent to DVCLive.
        make_trainer: ``(model, common_args, peft_config, callbacks, dataset, tokenizer) ->
            trainer``: the stage's TRL config and trainer class.
        inputs: extra ``inputs`` of the effective config (e.g. the SFT adapter's digest).
    """

    stage: str
    title: str
    fields: dict[str, str]
    curve_keys: tuple[str, ...]
    make_trainer: Callable[..., Any]
    inputs: dict[str, Any] = field(default_factory=dict)


def train_adapter(run: AdapterRun, params: TrainParams, table: Any, base_dir: Path,
                  sft_dir: Path | None, out_dir: Path, live_dir: Path,
                  is_main: bool) -> dict[str, Any]:
    """One LoRA run, the same for SFT and DPO: the train rows, the chat-formatted dataset,
    the model (base + SFT adapter merged, :func:`~librachem.common.adapters.load_sft_merged`,
    loaded as :func:`~librachem.train.loading.load_kwargs` says),
    :func:`fit` (LoRA, template check, train) and the atomic save of the adapter folder with its
    effective config and model card.

    Args:
        run: the stage's parts (:class:`AdapterRun`).
        table: augmented triplets (pyarrow Table: prompt, chosen, rejected, split, ...).
        sft_dir: the SFT adapter merged under the new one (None for SFT itself).
        out_dir: adapter folder, already cleared by :func:`clear_outputs`.

    Returns:
        The effective-config record: ``stage``, ``params``, ``inputs``, ``summary`` (see
        :func:`fit`), ``data`` (row counts and drops by reason).

    Raises:
        DataError, QualityGateError (too many rows unfit), TrainingError (see :func:`fit`).
    """
    from datasets import Dataset
    from transformers import AutoTokenizer

    from librachem.common.adapters import load_sft_merged
    from librachem.common.chat_format import (
        apply_format,
        assistant_turn,
        drop_unfit_rows,
        user_turn,
    )
    from librachem.train.data import gate_drops, read_train_rows
    from librachem.train.loading import fsdp_rank_loads_nothing, load_kwargs, zero3_init
    from librachem.train.record import base_identity, save_adapter

    device = resolve_device(params)
    rows, counts = read_train_rows(table, max_rows=params.max_rows, seed=params.seed)
    tokenizer = apply_format(AutoTokenizer.from_pretrained(base_dir), params.format)
    rows, drops = drop_unfit_rows(rows, tokenizer, params.max_length, list(run.fields.values()),
                                  min_completion_tokens=params.min_completion_tokens,
                                  min_completion_share=params.min_completion_share)
    gate_drops(drops, params.max_drop_rate)
    dataset = Dataset.from_list([{"prompt": user_turn(r["prompt"]),
                                  **{col: assistant_turn(r[key]) for col, key in run.fields.items()}}
                                 for r in rows])
    # bf16 / 4-bit straight from the stored weights on a GPU, fp32 on the CPU (load_kwargs);
    # under QLoRA PEFT merges the SFT adapter into the 4-bit layers (see load_sft_merged).
    with zero3_init("bf16" if device.get("bf16") else None):
        model = load_sft_merged(base_dir, None if fsdp_rank_loads_nothing() else sft_dir,
                                **load_kwargs(params, device)).train()

    def make_trainer(model: Any, common: dict[str, Any], peft_config: Any,
                     callbacks: list[Any]) -> Any:
        return run.make_trainer(model, common, peft_config, callbacks, dataset, tokenizer)

    trainer, summary = fit(make_trainer, model=model, tokenizer=tokenizer, params=params,
                           device=device, out_dir=out_dir, live_dir=live_dir,
                           curve_keys=run.curve_keys, drops=drops, is_main=is_main)
    record = {"stage": run.stage, "params": params.model_dump(mode="json"),
              "inputs": {"base": base_identity(base_dir), **run.inputs},
              "summary": summary, "data": {**counts, **drops.as_dict()}}
    save_adapter(trainer, tokenizer, out_dir, record=record, title=run.title, is_main=is_main)
    return record
