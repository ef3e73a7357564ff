"""Building blocks shared by the ``sft`` and ``dpo`` stages.

Params shared by both sections (:class:`TrainParams`, :class:`LoraParams`), reading the train
split of the augmented triplets, the LoRA config (every target must match a module), the device /
precision decision, TRL argument mapping, the DVCLive curve logger, the effective config and the
model card. The stage-specific parts live in :mod:`librachem.sft` and :mod:`librachem.dpo`.
"""

from __future__ import annotations

import json
import logging
import platform
import random
from importlib import metadata
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator

from librachem.atomic import replace_dir, write_bytes, write_json
from librachem.chat_format import Format
from librachem.config import Section
from librachem.hashing import sha256_file
from librachem.errors import DataError, TrainingError

log = logging.getLogger(__name__)

TRIPLET_COLUMNS = ("prompt", "chosen", "rejected", "split")
EFFECTIVE_CONFIG = "librachem_config.json"
TEMPLATE_REPORT = "template_check.json"
PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets")


class LoraParams(Section):
    """LoRA adapter shape (PEFT ``LoraConfig``). Paper: r 8, alpha 16, dropout 0.05 on q/v."""

    r: int = Field(8, gt=0)
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(default_factory=lambda: ["q_proj", "v_proj"], min_length=1)


class TrainParams(Section):
    """Params common to the ``sft`` and ``dpo`` sections (see params.yaml for the defaults).

    ``max_steps`` > 0 overrides ``epochs`` (as in ``transformers.TrainingArguments``).
    ``precision``: ``fp32``, or ``bf16`` = bf16 autocast on CPU, bf16 mixed precision on GPU.
    ``qlora``: 4-bit NF4 base weights (bitsandbytes, CUDA only).
    ``max_rows``: use at most this many train rows (0 = all), a seeded sample; sizes the default.
    ``check_sample``: rows collated and checked by the template check before training.
    ``max_drop_rate``: share of rows dropped as unfit above which the stage fails.
    """

    format: Format = "chat"
    learning_rate: float = Field(gt=0, lt=1)
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup",
                          "cosine_with_min_lr", "inverse_sqrt"] = "cosine"
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    epochs: float = Field(1.0, gt=0)
    max_steps: int = Field(-1, ge=-1)
    batch_size: int = Field(4, gt=0)
    grad_accum: int = Field(1, gt=0)
    max_length: int = Field(256, ge=16)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    lora: LoraParams = LoraParams()
    precision: Literal["fp32", "bf16"] = "fp32"
    qlora: bool = False
    activation_checkpointing: bool = False
    seed: int = Field(0, ge=0, le=2**32 - 1)  # transformers.set_seed seeds numpy (32-bit)
    max_rows: int = Field(0, ge=0)
    check_sample: int = Field(64, gt=0)
    max_drop_rate: float = Field(0.05, ge=0, le=1)
    logging_steps: int = Field(1, gt=0)

    @field_validator("max_steps")
    @classmethod
    def _steps(cls, value: int) -> int:
        if value == 0:
            raise ValueError("0 trains nothing; use -1 (train for `epochs`) or a positive count")
        return value


# ---------------------------------------------------------------- data

def read_train_rows(table: Any, *, max_rows: int, seed: int) -> tuple[list[dict[str, str]], dict]:
    """Train-split (prompt, chosen, rejected) rows of an augmented triplet table.

    Args:
        table: pyarrow Table with at least ``prompt``, ``chosen``, ``rejected``, ``split``
            (strings; ``compound_class`` (triplets schema) or ``class`` is counted for the
            model card).
        max_rows: keep a seeded random sample of this many rows (0 = all).

    Returns:
        (rows as dicts with the three text keys, counts: rows_total, rows_train, rows_used,
        and rows_used_by_class when a class column exists).

    Raises:
        DataError: a column is missing, a text cell is null, or there is no train row.
    """
    missing = [c for c in TRIPLET_COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(f"triplet table lacks columns {missing} (has {table.column_names})")
    class_col = next((c for c in ("compound_class", "class") if c in table.column_names), None)
    data = table.select([*TRIPLET_COLUMNS, *([class_col] if class_col else [])]).to_pydict()
    has_class = class_col is not None
    rows = []
    for i, split in enumerate(data["split"]):
        if split != "train":
            continue
        row = {k: data[k][i] for k in ("prompt", "chosen", "rejected")}
        if any(v is None for v in row.values()):
            raise DataError(f"triplet row {i} has a null prompt/chosen/rejected")
        if has_class:
            row["class"] = data[class_col][i]
        rows.append(row)
    if not rows:
        raise DataError(f"no train rows among {table.num_rows} triplets (column 'split')")
    counts: dict[str, Any] = {"rows_total": table.num_rows, "rows_train": len(rows)}
    if max_rows and len(rows) > max_rows:
        rows = random.Random(seed).sample(rows, max_rows)
    counts["rows_used"] = len(rows)
    if has_class:
        by_class: dict[str, int] = {}
        for row in rows:
            by_class[str(row["class"])] = by_class.get(str(row["class"]), 0) + 1
        counts["rows_used_by_class"] = dict(sorted(by_class.items()))
    return rows, counts


def read_triplets(in_dir: Path) -> Any:
    """Read the augmented shard set (manifest-checked) as a pyarrow Table."""
    from librachem.shards import read_shards

    return read_shards(in_dir)


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


def quantize_4bit(model: Any, tokenizer: Any, work_dir: Path) -> Any:
    """Reload ``model`` with 4-bit NF4 weights (QLoRA; CUDA only, bf16 compute), via a temporary
    save. The paper's official code trains its adapters on a 4-bit NF4 base the same way."""
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    tmp = Path(work_dir) / "qlora-base"
    model.save_pretrained(tmp)
    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                               bnb_4bit_compute_dtype=torch.bfloat16)
    return AutoModelForCausalLM.from_pretrained(tmp, quantization_config=quant, device_map={"": 0})


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




def versions() -> dict[str, str]:
    found = {"python": platform.python_version()}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


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


def read_effective_config(adapter_dir: Path) -> dict[str, Any]:
    path = Path(adapter_dir) / EFFECTIVE_CONFIG
    if not path.is_file():
        raise TrainingError(f"{adapter_dir}: no {EFFECTIVE_CONFIG}; not an adapter written by "
                            "the sft/dpo stage")
    return json.loads(path.read_text(encoding="utf-8"))


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
        "from librachem.adapters import load_aligned",
        "model, tokenizer = load_aligned(\"models/base\", sft_dir=\"models/sft\", "
        "dpo_dir=\"models/dpo\")",
        "```", "",
        "Composition: base weights + SFT LoRA merged in fp32, then this adapter "
        "(`librachem.adapters.load_aligned`).", "",
        "## Data", "", "```json", json.dumps(record.get("data", {}), indent=2, sort_keys=True),
        "```", "",
        "## Params", "", "```json", json.dumps(params, indent=2, sort_keys=True), "```", "",
        "## Training summary", "", "```json", json.dumps(summary, indent=2, sort_keys=True),
        "```", "",
        f"Prompt format: `{params.get('format', '?')}` (see `librachem.chat_format`). "
        "The full effective config is in `librachem_config.json`; the pre-training template check "
        f"in `{TEMPLATE_REPORT}`.", "",
    ]
    write_bytes(Path(out_dir) / "README.md", "\n".join(lines).encode("utf-8"))


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


def ensure_dirs(*paths: Path) -> None:
    for path in paths:
        Path(path).mkdir(parents=True, exist_ok=True)



# ---------------------------------------------------------------------------- the training run
def is_main_process() -> bool:
    """True on the process that writes files (rank 0 under accelerate; always True alone)."""
    from accelerate import PartialState

    return PartialState().is_main_process


def gate_drops(drops: Any, max_drop_rate: float) -> None:
    """Raise QualityGateError when too many rows were unfit for training.

    Args:
        drops: :class:`librachem.chat_format` drop counts (``rows_in``, ``dropped``).
        max_drop_rate: the section's ``max_drop_rate`` (fraction, 0..1).
    """
    from librachem.errors import QualityGateError

    if drops.rows_in and drops.dropped / drops.rows_in > max_drop_rate:
        raise QualityGateError(f"{drops.dropped} of {drops.rows_in} rows unfit for training "
                               f"({drops.as_dict()}), above max_drop_rate {max_drop_rate}; "
                               "raise max_length or fix the data")
    if drops.rows_in == drops.dropped:
        raise QualityGateError(f"every row is unfit for training: {drops.as_dict()}")


def run_check(trainer: Any, tokenizer: Any, params: TrainParams, out_dir: Path,
              drops: Any, is_main: bool) -> dict[str, Any]:
    """Template check over a sample of the trainer's own batches; the report is written next
    to the adapter before training.

    Raises:
        TrainingError: a failing check fired (see ``template_check.json``).
    """
    from librachem.chat_format import TEMPLATE_VERSIONS, check_trainer_sample

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
        if params.qlora:
            model = quantize_4bit(model, tokenizer, Path(work))
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
