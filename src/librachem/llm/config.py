"""``LLMParams``: the typed params block every LLM-using stage embeds.

Stages put it under their own section (``generate.generator``, ``augment.rephraser``,
``evaluate.judge`` ...) and hand it to :func:`librachem.llm.factory.make_client`. Values that
only govern *how* a call is made (concurrency, timeouts, retries, backoff, batch size) are not
part of the call-cache key; values that change *what* is asked are (see
:mod:`librachem.llm.cache`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

from pydantic import Field, field_validator

from librachem.common.config import Section
from librachem.llm.base import ChatRequest, Message

#: The alias of the embedded default model (SmolLM2-135M-Instruct, converted by the
#: ``base_model`` stage into ``models/base/``).
DEFAULT_MODEL_ALIAS = "smollm2-135m-instruct"


class LLMParams(Section):
    """One LLM endpoint and its decoding defaults.

    Attributes:
        backend: ``openai`` (any OpenAI-compatible chat-completions server),
            ``openai_batch`` (the OpenAI Batch API: half price, results within 24 h, see
            :mod:`librachem.llm.batch_api`; same call-cache keys as ``openai``), ``local``
            (in-process transformers) or ``fake`` (scripted, for tests).
        model: model id sent to the server, a local HF folder / hub id, or the alias
            ``smollm2-135m-instruct`` (resolved to the folder the stage passes in).
        model_alias: optional name that stands for ``model`` in the call-cache key (and
            the cached request); the backend is still sent ``model``. Set it when
            ``model`` is a file path or host-specific id (vLLM serving ``/data/m``, a GGUF
            path), so caches stay shared across machines. Changing it misses the cache.
        revision: optional pin of the model revision, part of the cache key. Local models
            written by the ``base_model`` stage carry their own revision (the GGUF sha256);
            for ``openai`` set it to tell apart two servers that use the same model name.
        base_url: OpenAI-compatible endpoint (``None`` = the ``openai`` default). Not part of
            the cache key, so a pulled cache replays from any host.
        api_key_env: name of the environment variable holding the key (never the key).
        temperature / top_p / max_tokens / seed: decoding defaults for :meth:`request`.
        concurrency: in-flight requests (``openai``).
        batch_size: prompts per forward batch (``local``).
        timeout_s: seconds (``openai``): connect timeout, read timeout (silence while waiting
            for the answer) and request-body write timeout, per attempt.
        max_retries: retries after the first attempt for 5xx / timeout / connection errors
            and malformed replies; then the request is recorded as failed. 429s (rate limit)
            are not counted here: see ``rate_limit_deadline_s``.
        rate_limit_deadline_s: a request that keeps getting 429 (rate limit, not an
            exhausted quota) is retried -- waiting ``Retry-After``, else the backoff -- until
            this many seconds after its first attempt; then it is recorded as failed.
        requests_per_minute / tokens_per_minute: client-side throttle (``None``: none); the
            server's ``x-ratelimit-*`` headers and 429s throttle in any case
            (:mod:`librachem.llm.ratelimit`). Tokens: prompt estimate + ``max_tokens``.
        max_cost_usd: stop before this client's spend could exceed this many dollars at
            list prices (:mod:`librachem.llm.budget`); ``None``: no bound. Priced backends
            (``openai``) only; a model missing from the price table is then a config error.
        backoff_initial_s / backoff_max_s: bounds (seconds) of the full-jitter exponential
            backoff between attempts.
        retry_after_max_s: a 429/503 ``Retry-After`` header replaces the computed wait,
            capped at this many seconds.
        json_retries: re-asks when a JSON-schema reply does not validate; then the
            completion is recorded with ``finish_reason="parse_error"``.
        batch_poll_max_s: longest wait (seconds) between two polls of a Batch API batch
            (``openai_batch``); polling starts at 1 s and doubles up to it.
        fake_script: ``"package.module:function"`` taking a ``ChatRequest`` and returning a
            ``str`` (or ``Completion`` / exception instance); ``None`` = deterministic echo.
    """

    backend: Literal["openai", "openai_batch", "local", "fake"] = "local"
    model: str = DEFAULT_MODEL_ALIAS
    model_alias: str | None = Field(default=None, min_length=1)
    revision: str | None = None
    base_url: str | None = None
    api_key_env: str = Field(default="OPENAI_API_KEY", pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    temperature: float = Field(default=0.0, ge=0.0, le=2.0)
    top_p: float = Field(default=1.0, gt=0.0, le=1.0)
    max_tokens: int = Field(default=256, ge=1, le=32768)
    seed: int = Field(default=0, ge=0)
    concurrency: int = Field(default=16, ge=1, le=1024)
    batch_size: int = Field(default=8, ge=1, le=1024)
    timeout_s: float = Field(default=60.0, gt=0.0)
    max_retries: int = Field(default=5, ge=0, le=50)
    backoff_initial_s: float = Field(default=1.0, ge=0.0)
    backoff_max_s: float = Field(default=30.0, ge=0.0)
    retry_after_max_s: float = Field(default=60.0, ge=0.0)
    rate_limit_deadline_s: float = Field(default=900.0, ge=0.0)
    requests_per_minute: int | None = Field(default=None, ge=1)
    tokens_per_minute: int | None = Field(default=None, ge=1)
    max_cost_usd: float | None = Field(default=None, ge=0.0)
    json_retries: int = Field(default=2, ge=0, le=10)
    batch_poll_max_s: float = Field(default=60.0, gt=0.0)
    fake_script: str | None = Field(default=None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")

    @field_validator("model")
    @classmethod
    def _model_not_blank(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("model must be a non-empty model id, path or alias")
        return value

    def request(
        self,
        messages: Sequence[Message],
        *,
        seed: int | None = None,
        json_schema: dict[str, Any] | None = None,
        max_tokens: int | None = None,
        temperature: float | None = None,
        redact_threshold: int | None = None,
    ) -> ChatRequest:
        """Build a :class:`ChatRequest` with these decoding defaults.

        ``seed`` overrides the params seed (e.g. a per-row seed derived from it);
        ``redact_threshold`` asks for the hazard scan of the reply (see ``ChatRequest``).
        """
        return ChatRequest(
            messages=tuple(messages),
            model=self.model,
            temperature=self.temperature if temperature is None else temperature,
            max_tokens=self.max_tokens if max_tokens is None else max_tokens,
            top_p=self.top_p,
            seed=self.seed if seed is None else seed,
            json_schema=json_schema,
            redact_threshold=redact_threshold,
        )
