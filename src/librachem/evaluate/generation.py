"""Answer the prompts: local models (base, sft, dpo) composed from their adapters and
run in batches, and one response row per (model, prompt)."""

from __future__ import annotations

import gc
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

from librachem.common.errors import DataError
from librachem.evaluate.params import (
    EvalPaths,
    EvaluateParams,
    GenerationParams,
    ReasoningParams,
)
from librachem.llm.base import ChatRequest, Completion

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------ generation
ModelLoader = Callable[[str], tuple[Any, Any]]


def local_loader(paths: EvalPaths, placement: Any = None) -> ModelLoader:
    """Load ``base``/``sft``/``dpo`` with :func:`librachem.common.adapters.load_aligned`, on
    CUDA in bf16 (fp16 without bf16) when present, else CPU fp32 composed as before
    (:func:`librachem.common.devices.inference_placement`; ``placement`` overrides it)."""
    from librachem.common.adapters import load_aligned
    from librachem.common.devices import inference_placement

    place = placement or inference_placement()
    kwargs: dict[str, Any] = ({"dtype": place.torch_dtype, "device": place.device}
                              if place.on_gpu else {})

    def load(name: str) -> tuple[Any, Any]:
        if name == "base":
            model, tok = load_aligned(paths.base, **kwargs)
        elif name == "sft":
            model, tok = load_aligned(paths.base, paths.sft, **kwargs)
        else:
            model, tok = load_aligned(paths.base, paths.sft, paths.dpo, **kwargs)
        log.info("%s: loaded on %s (%s)", name, model.device, model.dtype)
        return model, tok
    return load


def model_identity(name: str, paths: EvalPaths, dtype: str) -> str:
    """The call-cache revision of local model ``name``: base revision (the base folder's
    provenance), the SFT / DPO adapter digests it is composed of, and the inference dtype
    (greedy answers differ between fp32 and bf16)."""
    from librachem.common.adapters import adapter_digest
    from librachem.llm.models import folder_revision

    parts = [f"base:{folder_revision(paths.base)}"]
    if name != "base":
        parts.append(f"sft:{adapter_digest(paths.sft)}")
    if name == "dpo":
        parts.append(f"dpo:{adapter_digest(paths.dpo)}")
    return "|".join([*parts, dtype])


def available_models(params: EvaluateParams, paths: EvalPaths) -> tuple[list[str], dict[str, str]]:
    """The local models to run and the skipped ones with the reason.

    ``sft`` is skipped when its folder holds no adapter (stage disabled). A requested ``dpo``
    without an adapter is an error.

    Raises:
        DataError: ``dpo`` requested but ``paths.dpo`` holds no adapter.
        TrainingError: ``paths.sft`` holds neither an adapter nor a disabled-stage record.
    """
    from librachem.common.adapters import has_adapter, sft_has_adapter

    run, skipped = [], {}
    for name in params.models:
        if name == "sft" and not sft_has_adapter(paths.sft):
            skipped["sft"] = f"no adapter in {paths.sft} (sft disabled)"
            continue
        if name == "dpo" and not has_adapter(paths.dpo):
            raise DataError(f"evaluate.models lists dpo but {paths.dpo} holds no adapter; "
                            "run `dvc repro dpo` or remove dpo from evaluate.models")
        run.append(name)
    return run, skipped


def generation_requests(prompts: Sequence[dict], gen: GenerationParams, model: str) -> list[ChatRequest]:
    """One user-turn chat request per prompt (the same rendering the training stages use)."""
    from librachem.common.chat_format import user_turn

    return [ChatRequest(messages=user_turn(p["prompt"]), model=model,
                        temperature=gen.temperature, top_p=gen.top_p,
                        max_tokens=gen.max_new_tokens, seed=gen.seed) for p in prompts]


def generate_local(name: str, loader: ModelLoader, prompts: Sequence[dict],
                   gen: GenerationParams, *, identity: str | None = None,
                   cache_dir: Any = None, replay_only: bool = False,
                   ) -> tuple[list[Completion], dict[str, Any]]:
    """Answer every prompt with local model ``name`` through the call cache, in batches.

    The model is loaded only when some answer is not cached (the backend of
    :class:`~librachem.llm.client.CachedClient` is built on the first miss), so a rerun after a
    judge or quota failure replays the answers with no model load and no generation. The
    cache key holds the request and ``identity`` (:func:`model_identity`); without
    ``cache_dir`` nothing is cached.

    Returns the completions (prompt order) and a record (seconds, tokens, tokens/s, hits).

    Raises:
        CacheMissError: ``replay_only`` and some answer is not cached.
    """
    from librachem.llm.cache import CallCache
    from librachem.llm.client import CachedClient
    from librachem.llm.local import LocalClient

    start = time.perf_counter()
    timing = {"load_s": 0.0}

    def factory() -> LocalClient:
        t = time.perf_counter()
        model, tokenizer = loader(name)
        timing["load_s"] = time.perf_counter() - t
        return LocalClient.from_model(model, tokenizer, batch_size=gen.batch_size, model_id=name)

    client = CachedClient(factory, backend_name="local", revision=identity or f"unkeyed:{name}",
                          cache=CallCache(cache_dir) if cache_dir is not None else None,
                          replay_only=replay_only)
    out = client.complete(generation_requests(prompts, gen, name))
    done = time.perf_counter()
    stats = client.stats()
    del client
    gc.collect()
    gen_s = done - start - timing["load_s"]
    tokens = sum(c.completion_tokens for c in out)
    fresh = int(sum(c.completion_tokens for c in out if not c.cached))
    rec = {"load_s": timing["load_s"], "generate_s": gen_s, "completion_tokens": tokens,
           "tokens_per_s": fresh / max(gen_s, 1e-9), "cache_hits": int(stats["cache_hits"]),
           "errors": sum(1 for c in out if not c.ok), "answers": len(out)}
    log.info("%s: %d answers (%d cached), %d tokens in %.1f s (%.1f tok/s)", name, len(out),
             rec["cache_hits"], tokens, gen_s, rec["tokens_per_s"])
    return out, rec



def response_row(model: str, prompt: dict, c: Completion, reasoning: ReasoningParams) -> dict:
    """The generation part of a response row (judge columns are added later)."""
    from librachem.evaluate.reasoning import split_reasoning

    text = c.text if c.ok else None
    split = split_reasoning(text, reasoning.open_tag, reasoning.close_tag)
    return {"model": model, "model_id": c.model_id or model, **prompt, "response": text,
            "finish_reason": c.finish_reason, "completion_tokens": int(c.completion_tokens),
            "gen_error": c.error, "reasoning": split.reasoning, "final_answer": split.final,
            "reasoning_truncated": split.truncated, "raw_hazard_score": c.hazard_score}
