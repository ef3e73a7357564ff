"""``OpenAIClient``: any OpenAI-compatible chat-completions server through ``AsyncOpenAI``.

* Bounded concurrency: ``LLMParams.concurrency`` worker tasks, each sending its next request
  as soon as the previous one is answered (a request waiting out a backoff keeps its slot,
  which eases pressure on a limiting server). Workers rather than one task per request
  behind a semaphore: a freed slot is reused by the task that freed it instead of waking a
  waiter at the back of the event loop's ready queue, which shortens the gap between
  answers and new sends when 64 answers arrive together (bench/llm_throughput.py: ~+1-2%).
* The ``openai`` client's own retries are off (``max_retries=0``); tenacity retries
  **429** (rate limit), **5xx**, **408** and other timeouts, connection errors and
  malformed/empty 200 replies, ``max_retries`` times after the first attempt, waiting a full-jitter exponential
  backoff (``backoff_initial_s`` .. ``backoff_max_s``) or, when the server sends
  ``Retry-After`` / ``retry-after-ms``, that long (capped at ``retry_after_max_s``).
  After the bound the request is recorded as failed (``finish_reason="error"``, reason in
  ``error``), never dropped.
* Fail at once, never retried: a 429 whose code/type is ``insufficient_quota`` and 401/403/404
  raise :class:`~librachem.common.errors.LLMError` with the server's message (every further request
  would fail the same way, so the stage stops; completions already finished have been handed
  to ``on_result`` and cached). Other 4xx (400, 409, 413, 422, ...) concern one request: it is
  recorded as failed with the server's message.
* Timeouts: ``timeout_s`` is the client's connect and read timeout (aiohttp's ``sock_read``:
  silence while waiting for the answer), and the body-write timeout: aiohttp starts its read
  timer only once the body is written and the vendored aiohttp transport drops httpx's write
  timeout, so a server that stopped reading a large body held the request forever; a body
  not written within ``timeout_s`` now fails the attempt as a timeout (the connection is
  aborted) and it is retried. An answer that keeps arriving is never cut off. Connection
  errors are reported as such (the vendored transport maps every aiohttp connection error to
  ``ConnectTimeout``; the cause is read back from the exception chain).
* ``finish_reason`` ``length`` is kept (text, ``ok``); ``content_filter`` is recorded with
  ``error="content_filter ..."`` (not ``ok``) and whatever text came back.
* JSON schema: sent as ``response_format={"type": "json_schema", ...}`` (non-strict);
  validation and re-asks happen in :class:`librachem.llm.client.CachedClient`.
* Per-request CPU: the client uses ``openai``'s aiohttp transport (``DefaultAioHttpClient``,
  "With aiohttp" in the openai-python README) and posts the already-built body with
  ``client.post("/chat/completions", cast_to=httpx2.Response)`` ("Undocumented endpoints"
  in the same README), then reads the JSON itself. Errors, headers, timeouts and status
  mapping are the client's own; what is skipped is the TypedDict transform of the request
  (a no-op for string messages and numbers) and the pydantic response model. Measured on
  2 cores (bench/llm_throughput.py): client CPU per request ~1.3 ms -> ~0.5 ms, which is
  what lets the call cache's writes fit in the time budget of a plain ``create`` loop.
* Request bodies leave with their headers: aiohttp writes a body in a task of its own,
  which from Python 3.12 starts eagerly (``eager_start``, aiohttp's ``ClientRequest.send``);
  on 3.11 that task waits for the event loop's next round, behind every other ready
  callback, so at 64 answers per train each request reached the server ~3.5 ms late
  (measured: client write -> server ASGI start, bench/llm_throughput.py). On 3.11 the
  session's ``request_class`` (:class:`_BodyRequest`, aiohttp's documented
  ``ClientSession(request_class=...)``) runs the body write's first step at once, as 3.12
  does; vs_ideal 0.85 -> ~0.92 on 2 cores.
* The API key comes only from the environment variable named by ``api_key_env``; it is never
  logged, cached or written anywhere.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from librachem.common.errors import LLMError
from librachem.llm.aiohttp_transport import aiohttp_http_client
from librachem.llm.base import ChatRequest, Completion
from librachem.llm.config import LLMParams

log = logging.getLogger(__name__)

FATAL_STATUS = frozenset({401, 403, 404})

T = TypeVar("T")


class RetryableError(Exception):
    """A failed attempt worth retrying; ``retry_after`` in seconds when the server said."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class RequestFailed(Exception):
    """A request that must not be retried; recorded as a failed completion."""


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
            return RetryableError(f"HTTP 429: {msg}", parse_retry_after(exc.response.headers))
        if status >= 500 or status == 408:
            return RetryableError(f"HTTP {status}: {msg}", parse_retry_after(exc.response.headers))
        if status in FATAL_STATUS:
            return LLMError(f"HTTP {status} from the LLM server: {msg}")
        return RequestFailed(f"HTTP {status}: {msg}")
    if isinstance(exc, openai.APIResponseValidationError | ValueError):
        return RetryableError(f"malformed response: {exc}")
    return RequestFailed(f"{type(exc).__name__}: {exc}")


class OpenAIClient:
    """Batch client for an OpenAI-compatible server (see module docstring).

    Raises:
        LLMError: at construction when the API key variable is unset or empty.
    """

    streams_results = True

    def __init__(self, params: LLMParams, *, progress: bool = True) -> None:
        key = os.environ.get(params.api_key_env, "")
        if not key:
            raise LLMError(
                f"the environment variable {params.api_key_env} is not set. Export your API key "
                f"there (`export {params.api_key_env}=...`); for a local server without auth any "
                "value works. Keys are read only from the environment, never from params.")
        self._key = key
        for name in ("httpx", "httpx2"):  # one INFO line per HTTP request drowns stage logs
            if logging.getLogger(name).level == logging.NOTSET:
                logging.getLogger(name).setLevel(logging.WARNING)
        self.params = params
        self.progress = progress
        self.attempts = 0  # total HTTP attempts (for tests and benchmarks)

    def complete(self, requests: Sequence[ChatRequest],
                 on_result: Callable[[int, Completion], None] | None = None) -> list[Completion]:
        """Answer ``requests`` in order (runs its own event loop).

        Raises:
            LLMError: a fatal error (quota, auth, unknown model) -- see module docstring.
        """
        return asyncio.run(self._complete(list(requests), on_result))

    async def _complete(self, requests: list[ChatRequest],
                        on_result: Callable[[int, Completion], None] | None) -> list[Completion]:
        import openai
        from tqdm.auto import tqdm

        out: list[Completion | None] = [None] * len(requests)
        bar = tqdm(total=len(requests), desc=f"openai {self.params.model}", unit="req",
                   disable=None if self.progress else True)
        async with openai.AsyncOpenAI(api_key=self._key, base_url=self.params.base_url,
                                      timeout=self.params.timeout_s, max_retries=0,
                                      http_client=aiohttp_http_client(self.params.timeout_s)) as client:

            todo = iter(enumerate(requests))

            async def worker() -> None:
                for i, req in todo:
                    c = await self._with_retries(client, req)
                    out[i] = c
                    if on_result is not None:
                        on_result(i, c)
                    bar.update(1)

            try:
                async with asyncio.TaskGroup() as tg:
                    for _ in range(min(self.params.concurrency, len(requests))):
                        tg.create_task(worker())
            except BaseExceptionGroup as group:
                fatal = [e for e in _leaves(group) if isinstance(e, LLMError)]
                raise (fatal[0] if fatal else group.exceptions[0]) from None
            finally:
                bar.close()
        return [c for c in out if c is not None]

    async def _with_retries(self, client: Any, req: ChatRequest) -> Completion:
        import random

        from tenacity import (
            AsyncRetrying,
            RetryError,
            retry_if_exception_type,
            stop_after_attempt,
            wait_random_exponential,
        )

        p = self.params
        start = time.perf_counter()
        # Fast path: the first attempt runs outside tenacity (most requests need no retry;
        # this keeps per-request overhead at the level of a plain AsyncOpenAI loop).
        try:
            return _with_latency(await self._attempt(client, req), time.perf_counter() - start)
        except RequestFailed as exc:
            return self._failed(str(exc), start)
        except RetryableError as exc:
            if p.max_retries == 0:
                return self._failed(f"gave up after 1 attempts: {exc.reason}", start)
            first_wait = random.uniform(0, min(p.backoff_initial_s, p.backoff_max_s))
            await asyncio.sleep(backoff_seconds(exc, first_wait, p.retry_after_max_s))

        jitter = wait_random_exponential(multiplier=p.backoff_initial_s * 2, max=p.backoff_max_s)

        def wait(state: Any) -> float:
            exc = state.outcome.exception() if state.outcome else None
            return backoff_seconds(exc, jitter(state), p.retry_after_max_s)

        attempts = 1
        try:
            async for attempt in AsyncRetrying(retry=retry_if_exception_type(RetryableError),
                                               stop=stop_after_attempt(p.max_retries),
                                               wait=wait, reraise=False):
                with attempt:
                    attempts += 1
                    c = await self._attempt(client, req)
            return _with_latency(c, time.perf_counter() - start)
        except RetryError as exc:
            last = exc.last_attempt.exception()
            reason = getattr(last, "reason", str(last))
            return self._failed(f"gave up after {attempts} attempts: {reason}", start)
        except RequestFailed as exc:
            return self._failed(str(exc), start)

    def _failed(self, reason: str, start: float) -> Completion:
        return Completion(text=None, finish_reason="error", model_id=self.params.model,
                          latency_s=time.perf_counter() - start, error=reason)

    async def _attempt(self, client: Any, req: ChatRequest) -> Completion:
        import httpx2
        import openai

        kwargs: dict[str, Any] = dict(model=req.model, messages=list(req.messages),
                                      temperature=req.temperature, top_p=req.top_p,
                                      max_tokens=req.max_tokens)
        if req.seed is not None:
            kwargs["seed"] = req.seed
        if req.json_schema is not None:
            kwargs["response_format"] = {"type": "json_schema", "json_schema": {
                "name": "reply", "schema": req.json_schema, "strict": False}}
        self.attempts += 1
        try:
            resp = await client.post("/chat/completions", body=kwargs, cast_to=httpx2.Response)
            data = json.loads(resp.content)
        except openai.OpenAIError as exc:
            mapped = classify_error(exc)
            raise mapped from None
        except ValueError as exc:  # JSON body that does not decode
            raise RetryableError(f"malformed response: {exc}") from None
        return parse_response(data, req)


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


def _with_latency(c: Completion, latency: float) -> Completion:
    from dataclasses import replace

    return replace(c, latency_s=latency)


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for e in group.exceptions:
        out.extend(_leaves(e) if isinstance(e, BaseExceptionGroup) else [e])
    return out
