"""Client-side throttling of one stage's requests: requests and tokens per minute.

Three sources, all shared by the stage's workers (one event loop, one client):

* **params** (``LLMParams.requests_per_minute`` / ``tokens_per_minute``): two
  ``aiolimiter.AsyncLimiter`` leaky buckets (a maintained library, not a hand-written
  bucket), per 60 s, sized to the configured limits; each attempt takes one request and its
  estimated tokens (prompt estimate + ``max_tokens``, as the OpenAI API counts a request
  against its token limit when it arrives).
* **the server's ``x-ratelimit-*`` headers** (OpenAI's names; vLLM/LiteLLM proxies send the
  same): when ``x-ratelimit-remaining-requests`` (or ``-tokens``) says that no more than
  what is already in flight is left, sending pauses until ``x-ratelimit-reset-requests``
  (``-tokens``), e.g. ``"1s"``, ``"6m0s"``, ``"20ms"``. This adapts to whatever period the
  server counts over, so no period has to be configured.
* **429s**: a rate-limit reply pauses every worker for its ``Retry-After`` (else the
  backoff), not only the one that got it, so a limited server is not hammered by the other
  slots meanwhile.

``throttle_wait_s`` in the counters is the sum over attempts of the seconds spent waiting here.
"""

from __future__ import annotations

import asyncio
import re
import time
from typing import Any

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_reset(value: str | None) -> float | None:
    """Seconds in an ``x-ratelimit-reset-*`` value: ``"1s"``, ``"6m0s"``, ``"1h2m3.5s"``,
    ``"20ms"`` or plain seconds (``"0.5"``); ``None`` when absent or unreadable."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    parts = _DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    return sum(float(n) * scale[u] for n, u in parts)


def _int(value: str | None) -> int | None:
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None


def estimate_tokens(messages: Any, max_tokens: int) -> int:
    """Tokens a request counts against a token limit: ~4 characters per prompt token
    (OpenAI's rule of thumb, which its own limiter uses), 4 per message of overhead, plus
    ``max_tokens``. Only for throttling: costs use the reported usage."""
    chars = sum(len(str(m.get("content", ""))) for m in messages)
    return chars // 4 + 4 * len(messages) + 3 + max_tokens


class RateLimiter:
    """Shared throttle of one client (see module docstring).

    Args:
        requests_per_minute / tokens_per_minute: client-side limits (``None``: none; the
            server's headers and 429s still apply).
    """

    def __init__(self, requests_per_minute: int | None, tokens_per_minute: int | None) -> None:
        from aiolimiter import AsyncLimiter

        self._rpm = AsyncLimiter(requests_per_minute, 60) if requests_per_minute else None
        self._tpm = AsyncLimiter(tokens_per_minute, 60) if tokens_per_minute else None
        self._paused_until = 0.0  # time.monotonic() before which nothing is sent
        self.in_flight = 0
        self.in_flight_tokens = 0
        self.wait_s = 0.0
        self.pauses = 0

    @property
    def idle(self) -> bool:
        """True when nothing can make :meth:`acquire` wait (the per-request fast path)."""
        return self._rpm is None and self._tpm is None and self._paused_until == 0.0

    def pause(self, seconds: float) -> None:
        """Hold every worker's next send for ``seconds`` (a 429, or a spent header budget)."""
        if seconds > 0:
            until = time.monotonic() + seconds
            if until > self._paused_until:
                self._paused_until = until
                self.pauses += 1

    async def acquire(self, tokens: int) -> None:
        """Wait until this attempt may be sent, then count it as in flight
        (:meth:`release` when its answer is back)."""
        if self.idle:  # no limits configured, no pause ever requested: no clock reads
            self.in_flight += 1
            self.in_flight_tokens += tokens
            return
        start = time.monotonic()
        while True:
            now = time.monotonic()
            if now >= self._paused_until:
                break
            await asyncio.sleep(self._paused_until - now)
        if self._rpm is not None:
            await self._rpm.acquire(1)
        if self._tpm is not None:
            await self._tpm.acquire(min(tokens, self._tpm.max_rate))
        while time.monotonic() < self._paused_until:  # a 429 arrived while we waited
            await asyncio.sleep(self._paused_until - time.monotonic())
        self.wait_s += time.monotonic() - start
        self.in_flight += 1
        self.in_flight_tokens += tokens

    def release(self, tokens: int) -> None:
        self.in_flight -= 1
        self.in_flight_tokens -= tokens

    def observe(self, headers: Any) -> None:
        """Read ``x-ratelimit-remaining-*`` / ``x-ratelimit-reset-*`` from a reply (any
        status) and pause when what is left is already in flight."""
        if headers is None:
            return
        get = headers.get
        left = _int(get("x-ratelimit-remaining-requests"))
        if left is not None and left <= max(self.in_flight - 1, 0):
            self.pause(parse_reset(get("x-ratelimit-reset-requests")) or 0.0)
        left_tokens = _int(get("x-ratelimit-remaining-tokens"))
        if left_tokens is not None and left_tokens <= max(self.in_flight_tokens, 0) and \
                self.in_flight_tokens:
            self.pause(parse_reset(get("x-ratelimit-reset-tokens")) or 0.0)
