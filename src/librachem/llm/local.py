"""``LocalClient``: batched in-process generation with a transformers causal LM.

One model per client (``ChatRequest.model`` is reported, not used to pick weights). Requests
are grouped by decoding settings (temperature, top_p, max_tokens, seed), sorted by prompt
length (long first) so each batch pads little, and run ``batch_size`` at a time:

* prompt = the tokenizer's chat template with the generation prompt, tokenized without extra
  special tokens (the template writes them), **left** padded so generation continues every row
  right after its own prompt;
* ``temperature == 0`` is greedy; otherwise sampling with ``temperature``/``top_p`` after
  ``torch.manual_seed`` of a value derived from the request seed and the batch content, so the
  same request list reproduces the same text;
* generation stops at the tokenizer's EOS (``<|im_end|>`` for SmolLM2); ``finish_reason`` is
  ``stop`` when EOS was produced, ``length`` when ``max_tokens`` ran out.

``from_pretrained`` puts the model on CUDA in bf16 when a GPU is present, CPU fp32 otherwise.
``from_model`` wraps an already loaded (model, tokenizer), e.g. base + trained adapters from
``librachem.common.adapters.load_aligned``; the tokenizer object is not modified.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from typing import Any

from librachem.llm.base import ChatRequest, Completion

log = logging.getLogger(__name__)


def _batch_seed(seed: int | None, prompts: Sequence[str]) -> int:
    h = hashlib.sha256(str(seed).encode())
    for p in prompts:
        h.update(b"\0" + p.encode())
    return int.from_bytes(h.digest()[:4], "little")


class LocalClient:
    """Batched local generation (see module docstring).

    Args:
        model: a causal LM (``transformers`` ``PreTrainedModel``), already on its device.
        tokenizer: its tokenizer, with a chat template and an EOS token.
        batch_size: prompts per ``generate`` call.
        model_id: reported as ``Completion.model_id`` (default: the model's name/path).
        progress: show a tqdm bar (auto-disabled when stderr is not a terminal).
    """

    #: Tells :class:`librachem.llm.client.CachedClient` that ``complete`` accepts
    #: ``on_result`` (called per finished request, so results are cached batch by batch).
    streams_results = True

    def __init__(self, model: Any, tokenizer: Any, *, batch_size: int = 8,
                 model_id: str | None = None, progress: bool = True) -> None:
        if tokenizer.chat_template is None:
            raise ValueError("tokenizer has no chat template")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.model_id = model_id or str(getattr(model.config, "_name_or_path", "") or "local")
        self.progress = progress
        self.eos_id = tokenizer.eos_token_id
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.eos_id
        self.max_length = getattr(model.config, "max_position_embeddings", None)

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, batch_size: int = 8,
                   model_id: str | None = None, progress: bool = True) -> LocalClient:
        """Wrap a loaded ``(model, tokenizer)`` pair (no device or dtype change)."""
        return cls(model, tokenizer, batch_size=batch_size, model_id=model_id, progress=progress)

    @classmethod
    def from_pretrained(cls, location: str, *, batch_size: int = 8,
                        model_id: str | None = None) -> LocalClient:
        """Load a folder or hub id: CUDA + bf16 when available, else CPU fp32."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from librachem.common.devices import inference_placement

        place = inference_placement()
        device, dtype = place.device, place.torch_dtype
        tokenizer = AutoTokenizer.from_pretrained(location)
        model = AutoModelForCausalLM.from_pretrained(location, dtype=dtype).to(device)
        log.info("loaded %s on %s (%s)", location, device, dtype)
        return cls(model, tokenizer, batch_size=batch_size, model_id=model_id or location)

    # ------------------------------------------------------------------
    def render(self, request: ChatRequest) -> str:
        """The prompt text: chat template + generation prompt."""
        return self.tokenizer.apply_chat_template(list(request.messages), tokenize=False,
                                                  add_generation_prompt=True)

    def complete(self, requests: Sequence[ChatRequest],
                 on_result: Any = None) -> list[Completion]:
        """Answer ``requests`` in order; ``on_result(index, completion)`` per finished one."""
        from tqdm.auto import tqdm

        requests = list(requests)
        out: list[Completion | None] = [None] * len(requests)
        prompts = [self.render(r) for r in requests]
        lengths = [len(self.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
        groups: dict[tuple[float, float, int, int | None], list[int]] = {}
        for i, r in enumerate(requests):
            groups.setdefault((r.temperature, r.top_p, r.max_tokens, r.seed), []).append(i)
        batches: list[list[int]] = []
        for idx in groups.values():
            idx.sort(key=lambda i: -lengths[i])
            batches.extend(idx[j:j + self.batch_size] for j in range(0, len(idx), self.batch_size))
        bar = tqdm(total=len(requests), desc=f"generate {self.model_id}", unit="req",
                   disable=None if self.progress else True)
        try:
            for batch in batches:
                for i, c in zip(batch, self._run_batch([requests[i] for i in batch],
                                                        [prompts[i] for i in batch],
                                                        [lengths[i] for i in batch])):
                    out[i] = c
                    if on_result is not None:
                        on_result(i, c)
                bar.update(len(batch))
        finally:
            bar.close()
        return [c for c in out if c is not None]

    def _run_batch(self, reqs: list[ChatRequest], prompts: list[str],
                   lengths: list[int]) -> list[Completion]:
        import torch

        first = reqs[0]
        too_long = [self.max_length is not None and n + first.max_tokens > self.max_length
                    for n in lengths]
        results: list[Completion | None] = [
            Completion(text=None, finish_reason="error", prompt_tokens=n, model_id=self.model_id,
                       error=f"prompt of {n} tokens + max_tokens {first.max_tokens} exceeds "
                             f"the model's {self.max_length} positions") if bad else None
            for n, bad in zip(lengths, too_long)]
        keep = [i for i, bad in enumerate(too_long) if not bad]
        if not keep:
            return [r for r in results if r is not None]
        enc = self.tokenizer([prompts[i] for i in keep], add_special_tokens=False, padding=True,
                             padding_side="left", return_tensors="pt").to(self.model.device)
        gen_kwargs: dict[str, Any] = dict(max_new_tokens=first.max_tokens,
                                          eos_token_id=self.eos_id, pad_token_id=self.pad_id)
        if first.temperature > 0:
            torch.manual_seed(_batch_seed(first.seed, [prompts[i] for i in keep]))
            gen_kwargs.update(do_sample=True, temperature=first.temperature, top_p=first.top_p,
                              top_k=0)
        else:
            gen_kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        start = time.perf_counter()
        with torch.inference_mode():
            seqs = self.model.generate(**enc, **gen_kwargs)
        latency = time.perf_counter() - start
        new = seqs[:, enc["input_ids"].shape[1]:].tolist()
        for row, i in zip(new, keep):
            if self.eos_id in row:
                cut, reason = row.index(self.eos_id), "stop"
                n_tokens = cut + 1
            else:
                cut, reason = len(row), "length"
                n_tokens = cut
            text = self.tokenizer.decode(row[:cut], skip_special_tokens=True)
            results[i] = Completion(text=text, finish_reason=reason, prompt_tokens=lengths[i],
                                    completion_tokens=n_tokens, latency_s=latency,
                                    model_id=self.model_id)
        return [r for r in results if r is not None]
