"""How the ``sft`` and ``dpo`` stages load the base model on each kind of machine: CPU
fp32, one GPU (bf16 or QLoRA 4-bit), DDP (each rank its own GPU), FSDP (local rank 0 loads)
and DeepSpeed ZeRO-3 (partitioned while loading). See resources/accelerate/README.md."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from librachem.train.params import TrainParams


def bnb_4bit_config() -> Any:
    """QLoRA's quantization: NF4 weights, double quantization, bf16 compute; the embeddings
    and the LM head are not quantized (bitsandbytes skips ``lm_head``; embeddings are not
    linear layers) and load in bf16. The paper's official code trains on a 4-bit NF4 base too."""
    import torch
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                              bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=torch.bfloat16,
                              bnb_4bit_quant_storage=torch.bfloat16)


def local_rank() -> int:
    """This process's GPU index on its machine (0 alone; the rank under ``accelerate launch``)."""
    from accelerate import PartialState

    return PartialState().local_process_index


def load_kwargs(params: TrainParams, device: dict[str, Any]) -> dict[str, Any]:
    """How the base model is loaded for training (:func:`~librachem.common.adapters.load_sft_merged`).

    * CPU: nothing (fp32, as the embedded default always did).
    * GPU, ``qlora``: the stored weights quantized while loading (:func:`bnb_4bit_config`, no
      temporary re-save), bf16 elsewhere, on this rank's own GPU (``device_map={"": local
      rank}``: under DDP every rank on its own GPU, not all on GPU 0).
    * GPU, ``precision: bf16``: bf16 straight from the stored weights (no fp32 copy in host
      memory); the trainer places it (DDP / FSDP / ZeRO-3).
    * GPU, fp32: fp32.
    """
    import torch

    if device["device"] != "cuda":
        return {}
    if params.qlora:
        return {"dtype": torch.bfloat16, "quantization_config": bnb_4bit_config(),
                "device_map": {"": local_rank()}}
    return {"dtype": torch.bfloat16 if device["bf16"] else torch.float32}


def fsdp_rank_loads_nothing() -> bool:
    """True on local ranks > 0 under FSDP with ``fsdp_cpu_ram_efficient_loading`` (the
    packaged ``fsdp.yaml``): transformers loads the weights on local rank 0 only (the others
    hold empty tensors and receive rank 0's at wrap time), so host memory holds about one model,
    and only rank 0 merges the SFT adapter."""
    import os

    efficient = os.environ.get("FSDP_CPU_RAM_EFFICIENT_LOADING", "").lower() in {"1", "true"}
    fsdp = os.environ.get("ACCELERATE_USE_FSDP", "").lower() in {"1", "true"}
    return fsdp and efficient and local_rank() > 0


@contextmanager
def zero3_init(mixed_precision: str | None = None) -> Iterator[bool]:
    """Load the model partitioned under DeepSpeed ZeRO-3 (``zero3_init_flag: true``, the
    packaged ``zero3.yaml``); yields whether it does.

    transformers partitions weights while loading (``deepspeed.zero.Init``: each rank builds
    only its slice; rank 0 reads the checkpoint's values, the other ranks none) only while an
    ``HfDeepSpeedConfig`` is registered, which the trainer's config does too late (after the
    stage has loaded the model). This context registers accelerate's ``DeepSpeedPlugin`` (read
    from the ``ACCELERATE_*`` variables that ``accelerate launch`` sets) over the load and the
    SFT merge (:func:`~librachem.common.adapters.merge_into_base` gathers one layer at a time),
    as ``TrainingArguments`` does, then restores whatever was registered before. Elsewhere it
    does nothing. Source: transformers ``integrations/deepspeed.py`` (``HfDeepSpeedConfig``,
    "ZeRO-3 and non-Trainer integration") and ``TrainingArguments``' DeepSpeed setup.

    Args:
        mixed_precision: ``"bf16"`` / ``"fp16"`` / ``"no"``, the dtype the partitions are
            created in (the stage's ``precision``, as the trainer will use); None reads
            ``ACCELERATE_MIXED_PRECISION``. Without it ``zero.Init`` partitions in fp32.
    """
    import os

    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "").lower() not in {"1", "true"}:
        yield False
        return
    from accelerate.utils import DeepSpeedPlugin
    from transformers.integrations import deepspeed as hf_deepspeed

    plugin = DeepSpeedPlugin()
    if not plugin.zero3_init_flag:
        yield False
        return
    previous = hf_deepspeed._hf_deepspeed_config_weak_ref
    plugin.set_mixed_precision(mixed_precision
                               or os.environ.get("ACCELERATE_MIXED_PRECISION", "no"))
    plugin.set_deepspeed_weakref()  # registered while plugin.dschf lives
    try:
        yield True
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = previous
