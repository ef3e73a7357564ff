"""``make_client``: the client a stage uses, built from its LLM params block (a plain mapping
from ``backend`` to the backend class; every backend sits behind the same
:class:`~librachem.llm.client.CachedClient`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from librachem.common.errors import ConfigError
from librachem.llm.budget import Budget
from librachem.llm.client import STREAMING_BACKENDS, CachedClient
from librachem.llm.cache import (
    CallCache,
)
from librachem.llm.config import LLMParams
from librachem.llm.fake import echo_script, load_fake_script
from librachem.llm.pricing import PriceTable, load_prices


def make_client(params: LLMParams, *, cache_dir: Path | None, replay_only: bool = False,
                local_model_dir: Path | None = None) -> CachedClient:
    """Build the client a stage uses.

    Args:
        params: the stage's LLM params block.
        cache_dir: call-cache folder (``.llm-cache``), or ``None`` for no cache.
        replay_only: fail with :class:`CacheMissError` on any cache miss.
        local_model_dir: folder the alias ``smollm2-135m-instruct`` resolves to
            (``models/base``), for the ``local`` backend.

    Returns:
        A :class:`CachedClient` with ``complete(requests)`` and ``stats()``.

    Raises:
        ConfigError: bad ``fake_script``, or the alias without a model folder (local backend).
        LLMError: (openai, on first miss) the API key variable is not set.
    """
    cache = CallCache(cache_dir) if cache_dir is not None else None
    if cache is not None and not replay_only:
        cache.clean_tmp()  # temporary files of writers killed over an hour ago
    backend = params.backend
    prices: PriceTable | None = None
    if backend == "fake":
        script = load_fake_script(params.fake_script) if params.fake_script else echo_script
        revision = params.revision or (params.fake_script or "echo")

        def factory() -> Any:
            from librachem.llm.fake import FakeClient
            return FakeClient(script, model_id=f"fake:{params.model}")
    elif backend == "local":
        from librachem.llm.models import resolve_model
        resolved = resolve_model(params.model, revision=params.revision,
                                 local_model_dir=local_model_dir)
        revision = resolved.revision

        def factory() -> Any:
            from librachem.llm.local import LocalClient
            return LocalClient.from_pretrained(resolved.location, batch_size=params.batch_size,
                                               model_id=params.model)
    elif backend == "openai":
        revision = params.revision or ""
        prices = load_prices()

        def factory() -> Any:
            from librachem.llm.openai_backend import OpenAIClient
            return OpenAIClient(params, progress=False)  # the CachedClient's bar covers it
    elif backend == "openai_batch":
        from librachem.llm.batch_api import BATCH_STAT_KEYS, STATE_DIR, BatchClient
        if cache is None:
            raise ConfigError("backend openai_batch needs a call-cache directory (--cache-dir): "
                              "its results and batch states live there, so a rerun never "
                              "submits (and pays for) the same batch twice")
        revision = params.revision or ""
        prices = load_prices().for_batch()
        state_dir = cache.root / STATE_DIR

        def factory() -> Any:
            return BatchClient(params, state_dir=state_dir)
    else:  # pragma: no cover - LLMParams validates the value
        raise ConfigError(f"unknown backend {backend!r}")
    budget = None
    if params.max_cost_usd is not None and prices is not None:
        budget = Budget(params.max_cost_usd, prices, label=f"{backend} {params.model}")
    batch = backend == "openai_batch"
    client = CachedClient(
        factory, backend_name="openai" if batch else backend,  # batch keys = online keys
        revision=revision, cache=cache, replay_only=replay_only,
        json_retries=params.json_retries, prices=prices, budget=budget,
        streams=backend in STREAMING_BACKENDS,
        model_alias=(params.model, params.model_alias) if params.model_alias else None,
        backend_stat_keys=BATCH_STAT_KEYS if batch else ())
    client.prefers_one_call = batch
    return client
