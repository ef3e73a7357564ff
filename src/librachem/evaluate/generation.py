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


def local_loader(paths: EvalPaths) -> ModelLoader:
    """Load ``base``/``sft``/``dpo`` with :func:`librachem.common.adapters.load_aligned`."""
    from librachem.common.adapters import load_aligned

    def load(name: str) -> tuple[Any, Any]:
        if name == "base":
            return load_aligned(paths.base)
        if name == "sft":
            return load_aligned(paths.base, paths.sft)
        return load_aligned(paths.base, paths.sft, paths.dpo)
    return load


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
                   gen: GenerationParams) -> tuple[list[Completion], dict[str, Any]]:
    """Load one local model, answer every prompt in batches, free it.

    Returns the completions (prompt order) and a record (seconds, tokens, tokens/s).
    """
    from librachem.llm.local import LocalClient

    start = time.perf_counter()
    model, tokenizer = loader(name)
    loaded = time.perf_counter()
    client = LocalClient.from_model(model, tokenizer, batch_size=gen.batch_size, model_id=name)
    out = client.complete(generation_requests(prompts, gen, name))
    done = time.perf_counter()
    tokens = sum(c.completion_tokens for c in out)
    del client, model
    gc.collect()
    rec = {"load_s": loaded - start, "generate_s": done - loaded, "completion_tokens": tokens,
           "tokens_per_s": tokens / max(done - loaded, 1e-9),
           "errors": sum(1 for c in out if not c.ok)}
    log.info("%s: %d answers, %d tokens in %.1f s (%.1f tok/s)", name, len(out), tokens,
             rec["generate_s"], rec["tokens_per_s"])
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
