"""Params common to the ``sft`` and ``dpo`` sections: :class:`TrainParams` and the LoRA
shape :class:`LoraParams`. Stage-specific fields live in :mod:`librachem.train.sft` and
:mod:`librachem.train.dpo`."""

from __future__ import annotations

import logging
from typing import Literal

from pydantic import Field, field_validator

from librachem.common.chat_format import Format
from librachem.common.config import Section

log = logging.getLogger(__name__)


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
    ``min_completion_tokens``: rows whose completion budget (``max_length`` minus prompt
    tokens) is smaller are dropped and counted; ``min_completion_share``: rows that
    ``max_length`` would cut to less than this share of a completion's tokens are dropped and
    counted (:func:`librachem.common.chat_format.drop_unfit_rows`; DPO also drops identical
    pairs).
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
    min_completion_tokens: int = Field(16, ge=1)
    min_completion_share: float = Field(0.5, ge=0, le=1)
    logging_steps: int = Field(1, gt=0)

    @field_validator("max_steps")
    @classmethod
    def _steps(cls, value: int) -> int:
        if value == 0:
            raise ValueError("0 trains nothing; use -1 (train for `epochs`) or a positive count")
        return value
