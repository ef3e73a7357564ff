"""The narrow, batch-first client interface (lm-evaluation-harness ``LM``, simonw/llm style).

A list of :class:`ChatRequest` goes in, a list of :class:`Completion` of the same length and
order comes out. A request that failed for good is a :class:`Completion` with ``error`` set
and ``text`` ``None``: it is recorded, never dropped.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

#: A UTF-16 surrogate code point: never valid on its own in a Python ``str`` (json.loads keeps a
#: lone ``"\ud800"`` escape as one, e.g. a reply cut mid-emoji; a valid pair is already one
#: non-BMP code point), and it cannot be encoded to UTF-8.
_SURROGATE = re.compile(r"[\ud800-\udfff]")

Message = dict[str, str]  # {"role": "system" | "user" | "assistant", "content": str}


@dataclass(frozen=True)
class ChatRequest:
    """One chat-completions request.

    Attributes:
        messages: chat messages, OpenAI format.
        model: model id or alias (e.g. ``smollm2-135m-instruct``).
        temperature: 0.0 means greedy.
        max_tokens: upper bound on generated tokens.
        top_p: nucleus sampling mass.
        seed: sampling seed (part of the cache key).
        json_schema: optional JSON schema the reply must satisfy.
        redact_threshold: hazard-scan the reply (:mod:`librachem.common.hazard`): from this score
            on, the text is redacted *before* it is cached or returned, and the raw score
            is kept in ``Completion.hazard_score``. ``None``: the reply is stored as is.
            Part of the cache key when set. Stages set it on requests tied to illegitimate
            compounds so the call cache never holds an actionable procedure.
    """

    messages: tuple[Message, ...]
    model: str
    temperature: float = 0.0
    max_tokens: int = 256
    top_p: float = 1.0
    seed: int | None = 0
    json_schema: dict[str, Any] | None = None
    redact_threshold: int | None = None

    def __post_init__(self) -> None:
        """Raises:
            ValueError: a message or the model id holds a lone UTF-16 surrogate (it cannot
                be encoded to UTF-8, so the request could be neither sent nor cached; a
                prompt built from a model reply is already clean, see :class:`Completion`).
        """
        # Accept lists for convenience; store an immutable tuple of plain dicts.
        object.__setattr__(self, "messages", tuple(dict(m) for m in self.messages))
        texts = [("model", self.model)] + [
            (f"messages[{i}].{key}", value) for i, m in enumerate(self.messages)
            for key, value in m.items()]
        for where, value in texts:
            if isinstance(value, str) and not value.isascii():
                bad = _SURROGATE.search(value)
                if bad:
                    raise ValueError(
                        f"ChatRequest {where} holds a lone UTF-16 surrogate "
                        f"(U+{ord(bad.group()):04X} at character {bad.start()}): it cannot be "
                        "encoded to UTF-8, so it can be neither sent nor cached")


@dataclass(frozen=True)
class Completion:
    """The outcome of one request.

    Attributes:
        text: generated text, ``None`` when the request failed.
        finish_reason: ``stop``, ``length``, ``content_filter``, ``error`` or ``parse_error``.
        prompt_tokens / completion_tokens: token usage as reported (or counted locally).
        latency_s: wall seconds of the call that produced it (0 for a cache replay is NOT
            used: a replay keeps the original latency; see ``cached``).
        model_id: the model id the server reported.
        cache_key: content hash of the rendered request.
        cached: True when served from the call cache.
        error: why the request failed, when it did.
        parsed: the parsed JSON object when a schema was requested and the reply validated.
        hazard_score: hazard-scan score of the raw reply when the request asked for a scan
            (``redact_threshold``); ``text`` is then already redacted when it reached it.

    Every completion, whichever backend made it (or the cache replayed it), has lone UTF-16
    surrogates in ``text``, ``error`` and ``model_id`` replaced by U+FFFD at construction:
    such a string cannot be encoded to UTF-8, so it could be neither cached nor written.
    Valid non-BMP characters are untouched.
    """

    text: str | None
    finish_reason: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    latency_s: float = 0.0
    model_id: str = ""
    cache_key: str = ""
    cached: bool = False
    error: str | None = None
    parsed: Any = field(default=None, compare=False)
    hazard_score: int | None = None

    def __post_init__(self) -> None:
        for name in ("text", "error", "model_id"):
            value = getattr(self, name)
            # isascii() is O(1) on CPython: the common path costs no scan
            if isinstance(value, str) and not value.isascii() and _SURROGATE.search(value):
                object.__setattr__(self, name, _SURROGATE.sub("\ufffd", value))

    @property
    def ok(self) -> bool:
        return self.error is None and self.text is not None


@runtime_checkable
class LLMClient(Protocol):
    """What every backend (``openai``, ``local``, ``fake``) implements."""

    def complete(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        """Answer ``requests`` in order; one :class:`Completion` per request."""
        ...
