"""Where local inference runs: CUDA in bf16 (fp16 where the GPU has no bf16), else CPU fp32.

One decision shared by ``evaluate`` (:func:`librachem.evaluate.generation.local_loader`) and
the local LLM backend (:meth:`librachem.llm.local.LocalClient.from_pretrained`). The CPU path
is the embedded default's and stays fp32 (its outputs are unchanged). The dtype name is part of
the evaluate call-cache identity: a GPU run never replays CPU answers, or the reverse.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Placement:
    """``device``: ``cuda`` or ``cpu``; ``dtype``: ``bfloat16``, ``float16`` or ``float32``."""

    device: str
    dtype: str

    @property
    def torch_dtype(self) -> Any:
        import torch

        return getattr(torch, self.dtype)

    @property
    def on_gpu(self) -> bool:
        return self.device == "cuda"


def inference_placement(*, cuda: bool | None = None, bf16: bool | None = None) -> Placement:
    """The placement for inference on this machine (``cuda``/``bf16`` override the probes,
    for tests and for callers that already know).

    CUDA present: bf16 when ``torch.cuda.is_bf16_supported()`` (Ampere and newer), else fp16
    (V100, T4). No CUDA: CPU fp32.
    """
    import torch

    if cuda is None:
        cuda = torch.cuda.is_available()
    if not cuda:
        return Placement("cpu", "float32")
    if bf16 is None:
        bf16 = torch.cuda.is_bf16_supported()
    return Placement("cuda", "bfloat16" if bf16 else "float16")
