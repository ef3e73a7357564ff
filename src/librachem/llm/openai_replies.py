"""What an OpenAI-compatible server's replies mean to
:class:`~librachem.llm.openai_backend.OpenAIClient`: retry, fail the request, or stop the
stage (:func:`classify_error`); ``Retry-After`` parsing; a 200 body turned into a
:class:`~librachem.llm.base.Completion` (:func:`parse_response`). The policy is described in
:mod:`librachem.llm.openai_backend`'s docstring."""

from __future__ import annotations

import asyncio
import email.utils
import time
from typing import Any

from librachem.common.errors import LLMError
from librachem.llm.base import ChatRequest, Completion

FATAL_STATUS = frozenset({401, 403, 404})

class RetryableError(Exception):
    """A failed attempt worth retrying; ``retry_after`` in seconds when the server said;
    ``rate_limited`` for a 429 (retried until ``rate_limit_deadline_s``, not counted
    against ``max_retries``)."""

    def __init__(self, reason: str, retry_after: float | None = None, *,
                 rate_limited: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.rate_limited = rate_limited


class RequestFailed(Exception):
    """A request that must not be retried; recorded as a failed completion."""


def chat_body(req: ChatRequest) -> dict[str, Any]:
    """The chat-completions body for ``req``, the same online (``openai`` backend) and in a
    Batch API line: model, messages, temperature, top_p, max_tokens, seed, and
    ``response_format`` for a JSON schema."""
    body: dict[str, Any] = {"model": req.model, "messages": list(req.messages),
                           "temperature": req.temperature, "top_p": req.top_p,
                           "max_tokens": req.max_tokens}
    if req.seed is not None:
        body["seed"] = req.seed
    if req.json_schema is not None:
        body["response_format"] = {"type": "json_schema", "json_schema": {
            "name": "reply", "schema": req.json_schema, "strict": False}}
    return body


def parse_retry_after(headers: Any) -> float | None:
    """Seconds from ``retry-after-ms`` / ``Retry-After`` (delta seconds or HTTP date)."""
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def backoff_seconds(exc: BaseException | None, jittered: float, retry_after_max_s: float) -> float:
    """Wait before the next attempt: the server's ``Retry-After`` (capped at
    ``retry_after_max_s``) when it sent one, else the jittered exponential value."""
    if isinstance(exc, RetryableError) and exc.retry_after is not None:
        return min(exc.retry_after, retry_after_max_s)
    return jittered


def _server_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return str(getattr(exc, "message", exc))


def timeout_reason(exc: BaseException) -> str:
    """What a timeout exception of the client really was: ``connection error: ...`` when an
    aiohttp connection error (not a timeout) caused it, ``timeout: <message>`` for an aiohttp
    timeout with a message (e.g. the body-write timeout), else ``timeout``.

    openai's vendored aiohttp transport raises every aiohttp ``ClientConnectionError``
    (refused, reset, closed by the server) as httpx2's ``ConnectTimeout``, which the client
    reports as ``APITimeoutError``; the original is in the ``__cause__`` chain. The walk stops
    at the first aiohttp or asyncio timeout and at a repeated exception (cyclic chains).
    """
    import aiohttp

    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, asyncio.TimeoutError | aiohttp.ServerTimeoutError):
            return f"timeout: {cause}" if str(cause) else "timeout"
        if isinstance(cause, aiohttp.ClientConnectionError):
            return f"connection error: {type(cause).__name__}: {cause}"
        cause = cause.__cause__ or cause.__context__
    return "timeout"


def classify_error(exc: BaseException) -> BaseException:
    """Map an ``openai`` exception to :class:`RetryableError`, :class:`RequestFailed` or a
    fatal :class:`LLMError` (returned, not raised)."""
    import openai

    if isinstance(exc, openai.APITimeoutError):
        return RetryableError(timeout_reason(exc))
    if isinstance(exc, openai.APIConnectionError):
        return RetryableError(f"connection error: {exc}")
    if isinstance(exc, openai.APIStatusError):
        status = exc.status_code
        msg = _server_message(exc)
        if status == 429:
            if "insufficient_quota" in {getattr(exc, "code", None), getattr(exc, "type", None)}:
                return LLMError(f"quota exhausted (HTTP 429 insufficient_quota): {msg}")
            return RetryableError(f"HTTP 429: {msg}", parse_retry_after(exc.response.headers),
                                  rate_limited=True)
        if status >= 500 or status == 408:
            return RetryableError(f"HTTP {status}: {msg}", parse_retry_after(exc.response.headers))
        if status in FATAL_STATUS:
            return LLMError(f"HTTP {status} from the LLM server: {msg}")
        return RequestFailed(f"HTTP {status}: {msg}")
    if isinstance(exc, openai.APIResponseValidationError | ValueError):
        return RetryableError(f"malformed response: {exc}")
    return RequestFailed(f"{type(exc).__name__}: {exc}")


def parse_response(data: Any, req: ChatRequest) -> Completion:
    """Turn a decoded chat-completions JSON body into a :class:`Completion`.

    Args:
        data: the JSON body, ``{"choices": [{"message": {"content": ...}, "finish_reason":
            ...}], "usage": {...}, "model": ...}`` (OpenAI chat-completions object).

    Raises:
        RetryableError: the response is not a usable completion (no choices, not an object,
            empty content with finish reason ``stop``).
    """
    try:
        choice = data["choices"][0]
        text = choice["message"].get("content")
        finish = choice.get("finish_reason") or "stop"
        if text is not None and not isinstance(text, str):
            raise TypeError(f"content is {type(text).__name__}, not a string")
    except (AttributeError, IndexError, KeyError, TypeError) as exc:
        raise RetryableError(f"malformed response ({type(exc).__name__}: {exc})") from None
    usage = data.get("usage") or {}
    try:
        prompt_tokens = int(usage.get("prompt_tokens") or 0)
        completion_tokens = int(usage.get("completion_tokens") or 0)
    except (AttributeError, TypeError, ValueError):
        prompt_tokens = completion_tokens = 0
    model_id = str(data.get("model") or req.model)
    if finish == "content_filter":
        return Completion(text=text or "", finish_reason="content_filter",
                          prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                          model_id=model_id,
                          error="content_filter: the provider's filter stopped the reply")
    if not text:
        raise RetryableError(f"empty content (finish_reason {finish})")
    if finish not in {"stop", "length"}:
        finish = "stop" if finish in {"eos", "end_turn", "tool_calls"} else finish
    return Completion(text=text, finish_reason=finish, prompt_tokens=prompt_tokens,
                      completion_tokens=completion_tokens, model_id=model_id)
