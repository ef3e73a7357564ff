"""The ``dpo`` stage: a DPO LoRA adapter on top of the SFT model, with TRL ``DPOTrainer``.

Reference model = the SFT model = the policy with the DPO adapter disabled. We get it by merging
the SFT adapter into the fp32 base weights in memory and training a fresh LoRA on that with
``ref_model=None``: TRL then computes reference log-probs with the adapter disabled (stack notes,
TRL 1.16). The official code instead loads the SFT adapter as the trainable one (old TRL); merging
keeps the SFT weights fixed and the reference exact. :func:`librachem.common.adapters.load_aligned`
rebuilds the same composition for inference.

Paper defaults (``dpo_llama2.py``): beta 0.1, sigmoid loss, lr 5e-4 cosine, warmup 10, 60 steps,
batch 1 x grad-accum 4, max length 1,024. Our embedded default keeps beta, loss and lr
(5e-4 moves a 135M model in tens of steps) and is sized for 2 CPU cores (params.yaml).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from librachem.common.adapters import (
    adapter_digest,
    read_effective_config,
    sft_has_adapter,
)
from librachem.common.atomic import write_json
from librachem.common.errors import TrainingError
from librachem.train.loop import AdapterRun, clear_outputs, train_adapter
from librachem.train.params import TrainParams

log = logging.getLogger(__name__)

CURVE_KEYS = ("loss", "rewards/chosen", "rewards/rejected", "rewards/margins",
              "rewards/accuracies", "learning_rate", "grad_norm", "logps/chosen",
              "logps/rejected")

LossType = Literal["sigmoid", "hinge", "ipo", "exo_pair", "nca_pair", "robust", "bco_pair",
                   "sppo_hard", "aot", "aot_unpaired", "apo_zero", "apo_down", "discopop",
                   "sft", "sigmoid_norm"]


class DpoParams(TrainParams):
    """The ``dpo`` section: :class:`~librachem.train.params.TrainParams` plus the DPO loss.

    ``loss_type`` is a list (TRL 1.16); ``loss_weights`` (same length, or null = all 1.0) mixes
    them, e.g. ``[sigmoid, sft]`` with ``[1.0, 0.2]`` adds an SFT term on chosen (RPO-like).
    ``precompute_ref_log_probs`` computes reference log-probs once before training.
    """

    learning_rate: float = Field(5e-4, gt=0, lt=1)
    beta: float = Field(0.1, gt=0)
    loss_type: list[LossType] = Field(default_factory=lambda: ["sigmoid"], min_length=1)
    loss_weights: list[float] | None = None
    label_smoothing: float = Field(0.0, ge=0, lt=0.5)
    precompute_ref_log_probs: bool = False

    @model_validator(mode="after")
    def _weights(self) -> DpoParams:
        if self.loss_weights is not None and len(self.loss_weights) != len(self.loss_type):
            raise ValueError(f"loss_weights {self.loss_weights} needs one weight per loss_type "
                             f"{self.loss_type}")
        if self.loss_weights is not None and (any(w < 0 for w in self.loss_weights)
                                              or not any(w > 0 for w in self.loss_weights)):
            raise ValueError(f"loss_weights {self.loss_weights} must be >= 0 with at least one "
                             "> 0 (a negative weight maximises that loss)")
        if "exo_pair" in self.loss_type and self.label_smoothing == 0:
            raise ValueError("loss_type exo_pair needs label_smoothing > 0 (EXO paper: 1e-3)")
        return self


def _trainer_factory(params: DpoParams) -> Any:
    def make(model: Any, common: dict[str, Any], peft_config: Any, callbacks: list[Any],
             dataset: Any, tokenizer: Any) -> Any:
        from trl import DPOConfig, DPOTrainer

        args = DPOConfig(**common, beta=params.beta, loss_type=list(params.loss_type),
                         loss_weights=params.loss_weights, label_smoothing=params.label_smoothing,
                         precompute_ref_log_probs=params.precompute_ref_log_probs)
        return DPOTrainer(model=model, ref_model=None, args=args, train_dataset=dataset,
                          processing_class=tokenizer, peft_config=peft_config,
                          callbacks=callbacks)
    return make


def train_dpo(params: DpoParams, table: Any, base_dir: Path, sft_dir: Path | None,
              out_dir: Path, live_dir: Path, summary_path: Path | None = None) -> dict[str, Any]:
    """Train the DPO LoRA adapter and write ``out_dir`` (and ``summary_path``).

    Args:
        params: the ``dpo`` section.
        table: augmented triplets (pyarrow Table: prompt, chosen, rejected, split, ...).
        base_dir: HF folder of the base model.
        sft_dir: output of the ``sft`` stage (may hold no adapter when sft is disabled), or None.
        out_dir: adapter folder (adapter safetensors + config, tokenizer, effective config
            ``librachem_config.json``, ``template_check.json``, model card ``README.md``).
        live_dir: DVCLive folder (curves: loss, rewards/*, learning_rate ...).
        summary_path: ``metrics/train.json`` (flat numbers of the sft and dpo runs).

    Returns:
        The metrics summary written to ``summary_path``.

    Raises:
        DataError, QualityGateError, TrainingError (bad LoRA target, QLoRA without CUDA,
        template check failure, non-finite loss, SFT/DPO format mismatch).
    """
    out_dir, live_dir = Path(out_dir), Path(live_dir)
    is_main = clear_outputs(out_dir, summary_path)
    sft_record = read_effective_config(sft_dir) if sft_has_adapter(sft_dir) else None
    if sft_record is not None and sft_record["params"]["format"] != params.format:
        raise TrainingError(f"dpo.format {params.format!r} differs from the SFT adapter's "
                            f"{sft_record['params']['format']!r}; train both in one format")
    run = AdapterRun(stage="dpo", title="DPO LoRA adapter (LibraChem alignment)",
                     fields={"chosen": "chosen", "rejected": "rejected"},
                     curve_keys=CURVE_KEYS, make_trainer=_trainer_factory(params),
                     inputs={"sft_dir": str(sft_dir) if sft_dir is not None else None,
                             "sft_adapter_sha256": adapter_digest(sft_dir),
                             "reference": "base + SFT merged (policy with the DPO adapter "
                                          "disabled)"})
    record = train_adapter(run, params, table, base_dir, sft_dir, out_dir, live_dir, is_main)
    summary = record["summary"]
    metrics = flat_metrics(summary, record["data"], sft_record)
    if is_main and summary_path is not None:
        write_json(summary_path, metrics)
    log.info("dpo: %d steps, loss %s, reward accuracy %s", summary["global_steps"],
             summary.get("loss"), summary.get("rewards/accuracies"))
    return metrics


def flat_metrics(summary: dict[str, Any], data: dict[str, Any],
                 sft_record: dict[str, Any] | None) -> dict[str, Any]:
    """``metrics/train.json``: numbers only, grouped by stage (DVC metrics); each stage's
    block counts the rows dropped before training by reason (``dropped_identical_pair``,
    ``dropped_completion_budget_below_min``, ``dropped_completion_cut_below_share``, ...)."""
    def last(s: dict[str, Any], key: str) -> float | None:
        return s.get(key, {}).get("last") if isinstance(s.get(key), dict) else None

    dpo = {"steps": summary["global_steps"], "runtime_s": summary["train_runtime_s"],
           "loss_first": summary.get("loss", {}).get("first"), "loss_last": last(summary, "loss"),
           "reward_accuracy_last": last(summary, "rewards/accuracies"),
           "reward_margin_last": last(summary, "rewards/margins"),
           "rows_used": data.get("rows_kept"), "rows_dropped": data.get("rows_in", 0)
           - data.get("rows_kept", 0), **drop_counts(data)}
    out: dict[str, Any] = {"dpo": dpo}
    if sft_record is not None:
        s = sft_record.get("summary", {})
        sft_data = sft_record.get("data", {})
        out["sft"] = {"steps": s.get("global_steps"),  # runtime: metrics/sft/metrics.json
                      "loss_first": s.get("loss", {}).get("first"), "loss_last": last(s, "loss"),
                      "rows_used": sft_data.get("rows_kept"), **drop_counts(sft_data)}
    return out


def drop_counts(data: dict[str, Any]) -> dict[str, int]:
    """The rows dropped before training, by reason (``dropped_*`` keys of the effective
    config's ``data``, :class:`librachem.common.chat_format.DropCounts`)."""
    return {k: v for k, v in sorted(data.items()) if k.startswith("dropped_")}


def run_dpo(params: DpoParams, data_dir: Path, base_dir: Path, sft_dir: Path | None,
            out_dir: Path, live_dir: Path, summary_path: Path | None) -> dict[str, Any]:
    """Stage entry: read the augmented shard set (manifest-checked) and :func:`train_dpo`."""
    from librachem.train.data import read_triplets

    return train_dpo(params, read_triplets(data_dir), base_dir, sft_dir, out_dir, live_dir,
                     summary_path)
