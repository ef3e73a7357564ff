"""``OpenAIClient``: any OpenAI-compatible chat-completions server through ``AsyncOpenAI``.

* Bounded concurrency: ``LLMParams.concurrency`` worker tasks, each sending its next request
  as soon as the previous one is answered (a request waiting out a backoff keeps its slot,
  which eases pressure on a limiting server). Workers rather than one task per request
  behind a semaphore: a freed slot is reused by the task that freed it instead of waking a
  waiter at the back of the event loop's ready queue, which shortens the gap between
  answers and new sends when 64 answers arrive together (bench/llm_throughput.py: ~+1-2%).
* The ``openai`` client's own retries are off (``max_retries=0``); tenacity retries
  **5xx**, **408** and other timeouts, connection errors and malformed/empty 200 replies,
  ``max_retries`` times after the first attempt, and **429** (rate limit) until
  ``rate_limit_deadline_s`` after the request's first attempt (a limited server is a
  matter of waiting, not of a fixed number of tries), waiting a full-jitter exponential
  backoff (``backoff_initial_s`` .. ``backoff_max_s``) or, when the server sends
  ``Retry-After`` / ``retry-after-ms``, that long (capped at ``retry_after_max_s``).
  After the bound the request is recorded as failed (``finish_reason="error"``, reason in
  ``error``, prefixed ``gave up after N attempts``), never dropped. Attempts, retries and
  their causes are counted (:meth:`OpenAIClient.transport_stats`).
* Throttling (:mod:`librachem.llm.ratelimit`): requests and tokens per minute from params
  (``aiolimiter``), pauses from the server's ``x-ratelimit-*`` headers, and a 429 pauses
  every worker, not only the one that got it.
* Endpoint check: :meth:`OpenAIClient.check_endpoint` (``GET /models``) runs when the
  client is built (the first cache miss of a stage), so a server that is down fails the
  stage in seconds with the URL and the connection error.
* Budget: ``complete(..., admit=...)`` asks before each first send; a refusal stops the
  sending, lets requests in flight finish (and be cached) and raises
  :class:`~librachem.llm.budget.BudgetExceededError` (:mod:`librachem.llm.budget`).
* Fail at once, never retried: a 429 whose code/type is ``insufficient_quota`` and 401/403/404
  raise :class:`~librachem.common.errors.LLMError` with the server's message (every further request
  would fail the same way, so the stage stops sending at once; requests already in flight
  finish and, like every completion finished before, are handed to ``on_result`` and cached). Other 4xx (400, 409, 413, 422, ...) concern one request: it is
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
import json
import logging
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

from librachem.common.errors import LLMError
from librachem.llm.aiohttp_transport import aiohttp_http_client
from librachem.llm.base import ChatRequest, Completion
from librachem.llm.budget import BudgetExceededError
from librachem.llm.config import LLMParams
from librachem.llm.failures import FailureLog
from librachem.llm.keys import api_key
from librachem.llm.openai_replies import (  # noqa: F401 - re-exported for callers and tests
    FATAL_STATUS,
    RequestFailed,
    RetryableError,
    backoff_seconds,
    chat_body,
    classify_error,
    parse_response,
    parse_retry_after,
    timeout_reason,
)
from librachem.llm.ratelimit import RateLimiter, estimate_tokens

log = logging.getLogger(__name__)

class OpenAIClient:
    """Batch client for an OpenAI-compatible server (see module docstring).

    Args:
        params: the endpoint and its limits.
        progress: show this client's own progress bar (``CachedClient`` shows one over the
            whole stage instead and turns this off).
        check_endpoint: at construction, ``GET {base_url}/models`` (:meth:`check_endpoint`).

    Raises:
        LLMError: at construction when the API key variable is unset or empty, or the
            endpoint is unreachable or refuses the key.
    """

    streams_results = True
    supports_admit = True  # complete(..., admit=...): the max_cost_usd guard per request

    def __init__(self, params: LLMParams, *, progress: bool = True,
                 check_endpoint: bool = True) -> None:
        self._key = api_key(params)
        for name in ("httpx", "httpx2"):  # one INFO line per HTTP request drowns stage logs
            if logging.getLogger(name).level == logging.NOTSET:
                logging.getLogger(name).setLevel(logging.WARNING)
        self.params = params
        self.progress = progress
        self.attempts = 0  # total HTTP attempts
        self.retries = 0
        self.rate_limited = 0  # 429 replies (rate limit) seen, retried or not
        self.retry_log = FailureLog()
        self.limiter = RateLimiter(params.requests_per_minute, params.tokens_per_minute)
        if check_endpoint:
            self.check_endpoint()

    @property
    def base_url(self) -> str:
        return (self.params.base_url or os.environ.get("OPENAI_BASE_URL")
                or "https://api.openai.com/v1").rstrip("/")

    def check_endpoint(self) -> None:
        """One cheap ``GET {base_url}/models`` before any chat request, so a stage whose
        server is down fails in seconds (at most ``min(timeout_s, 10)``) with the URL and the
        connection error, instead of after every request's retries. Any HTTP answer but
        401/403 counts as up (servers without ``/models`` answer 404).

        Raises:
            LLMError: connection refused / DNS / TLS error / timeout, or HTTP 401/403.
        """
        import urllib.error
        import urllib.request

        url = self.base_url + "/models"
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {self._key}"})
        wait = min(self.params.timeout_s, 10.0)
        try:
            with urllib.request.urlopen(req, timeout=wait):
                return
        except urllib.error.HTTPError as exc:
            if exc.code in (401, 403):
                raise LLMError(f"the LLM endpoint {self.base_url} refused the key in "
                               f"{self.params.api_key_env} (HTTP {exc.code} on GET {url}: "
                               f"{exc.read()[:300].decode('utf-8', 'replace')})") from None
            return
        except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise LLMError(
                f"the LLM endpoint {self.base_url} is unreachable: {type(reason).__name__}: "
                f"{reason} (checked with GET {url} within {wait:g} s, before any request was "
                "sent). Is the server running, and are base_url and the port right?") from None

    def transport_stats(self) -> dict[str, Any]:
        """``attempts``, ``retries``, ``rate_limited`` (429s seen), ``throttle_wait_s``
        (seconds attempts waited for the rate limiter), ``throttle_pauses``,
        ``retries_by_cause`` and ``last_retry_error`` (see :mod:`librachem.llm.failures`)."""
        return {"attempts": self.attempts, "retries": self.retries,
                "rate_limited": self.rate_limited, "throttle_wait_s": self.limiter.wait_s,
                "throttle_pauses": self.limiter.pauses,
                "retries_by_cause": dict(self.retry_log.retries),
                "last_retry_error": dict(self.retry_log.last_retry_error)}

    def complete(self, requests: Sequence[ChatRequest],
                 on_result: Callable[[int, Completion], None] | None = None,
                 admit: Callable[[int, ChatRequest], str | None] | None = None,
                 ) -> list[Completion]:
        """Answer ``requests`` in order (runs its own event loop: one per stage when the
        stage sends all its requests in one call, as :func:`librachem.llm.batching.complete_all`
        does).

        Args:
            on_result: called with (index, completion) as each answer arrives.
            admit: called before a request is first sent; a returned reason stops sending
                (requests in flight finish), then :class:`BudgetExceededError` is raised.

        Raises:
            LLMError: a fatal error (quota, auth, unknown model) -- see module docstring;
                requests in flight finish and are handed to ``on_result`` first.
            BudgetExceededError: ``admit`` refused a request.
        """
        return asyncio.run(self._complete(list(requests), on_result, admit))

    async def _complete(self, requests: list[ChatRequest],
                        on_result: Callable[[int, Completion], None] | None,
                        admit: Callable[[int, ChatRequest], str | None] | None,
                        ) -> list[Completion]:
        import openai
        from tqdm.auto import tqdm

        out: list[Completion | None] = [None] * len(requests)
        stop: list[BaseException] = []
        bar = tqdm(total=len(requests), desc=f"openai {self.params.model}", unit="req",
                   disable=None if self.progress else True)
        async with openai.AsyncOpenAI(api_key=self._key, base_url=self.params.base_url,
                                      timeout=self.params.timeout_s, max_retries=0,
                                      http_client=aiohttp_http_client(self.params.timeout_s)) as client:

            todo = iter(enumerate(requests))

            async def worker() -> None:
                for i, req in todo:
                    if stop:
                        return
                    if admit is not None:
                        why = admit(i, req)
                        if why is not None:
                            stop.append(BudgetExceededError(why))
                            return
                    try:
                        c = await self._with_retries(client, req)
                    except LLMError as exc:  # fatal: stop sending; the others finish theirs
                        stop.append(exc)
                        return
                    out[i] = c
                    if on_result is not None:
                        on_result(i, c)
                    bar.update(1)

            try:
                async with asyncio.TaskGroup() as tg:
                    for _ in range(min(self.params.concurrency, len(requests))):
                        tg.create_task(worker())
            except BaseExceptionGroup as group:
                raise group.exceptions[0] from None
            finally:
                bar.close()
        if stop:
            fatal = next((e for e in stop if not isinstance(e, BudgetExceededError)), stop[0])
            done = sum(c is not None for c in out)
            raise type(fatal)(f"{fatal} [{done} of {len(requests)} requests answered before "
                              "the stop; they are cached, a rerun sends only the rest]")
        return [c for c in out if c is not None]

    async def _with_retries(self, client: Any, req: ChatRequest) -> Completion:
        from tenacity import (
            AsyncRetrying,
            RetryError,
            retry_if_exception_type,
            wait_random_exponential,
        )

        p = self.params
        start = time.perf_counter()
        tokens = estimate_tokens(req.messages, req.max_tokens)
        # Fast path: the first attempt runs outside tenacity (most requests need no retry;
        # this keeps per-request overhead at the level of a plain AsyncOpenAI loop).
        try:
            return _with_latency(await self._attempt(client, req, tokens),
                                 time.perf_counter() - start)
        except RequestFailed as exc:
            return self._failed(str(exc), start)
        except RetryableError as exc:
            pending: list[RetryableError] = [exc]

        jitter = wait_random_exponential(multiplier=p.backoff_initial_s * 2, max=p.backoff_max_s)
        other = [0]  # failed attempts that were not 429s (bounded by max_retries)

        def wait(state: Any) -> float:
            exc = state.outcome.exception()
            if not (isinstance(exc, RetryableError) and exc.rate_limited):
                other[0] += 1
            return backoff_seconds(exc, jitter(state), p.retry_after_max_s)

        def stop(state: Any) -> bool:
            exc = state.outcome.exception()
            if isinstance(exc, RetryableError) and exc.rate_limited:  # until the deadline
                return (time.perf_counter() - start + (state.upcoming_sleep or 0.0)
                        > p.rate_limit_deadline_s)
            return other[0] > p.max_retries

        def before_sleep(state: Any) -> None:
            exc = state.outcome.exception()
            self.retries += 1
            self.retry_log.retry(getattr(exc, "reason", str(exc)))
            if isinstance(exc, RetryableError) and exc.rate_limited:
                self.limiter.pause(state.upcoming_sleep or 0.0)  # every worker holds off

        attempts = 1
        try:
            async for attempt in AsyncRetrying(retry=retry_if_exception_type(RetryableError),
                                               stop=stop, wait=wait, before_sleep=before_sleep,
                                               reraise=False):
                with attempt:
                    if pending:  # the fast path's failure is tenacity's first attempt
                        raise pending.pop()
                    attempts += 1
                    c = await self._attempt(client, req, tokens)
            return _with_latency(c, time.perf_counter() - start)
        except RetryError as exc:
            last = exc.last_attempt.exception()
            reason = getattr(last, "reason", str(last))
            note = (f" (rate_limit_deadline_s {p.rate_limit_deadline_s:g} s)"
                    if getattr(last, "rate_limited", False) else "")
            return self._failed(f"gave up after {attempts} attempts{note}: {reason}", start)
        except RequestFailed as exc:
            return self._failed(str(exc), start)

    def _failed(self, reason: str, start: float) -> Completion:
        return Completion(text=None, finish_reason="error", model_id=self.params.model,
                          latency_s=time.perf_counter() - start, error=reason)

    async def _attempt(self, client: Any, req: ChatRequest, tokens: int) -> Completion:
        import httpx2
        import openai

        body = chat_body(req)
        limiter = self.limiter
        await limiter.acquire(tokens)
        self.attempts += 1
        try:
            resp = await client.post("/chat/completions", body=body, cast_to=httpx2.Response)
            limiter.observe(resp.headers)
            data = json.loads(resp.content)
        except openai.OpenAIError as exc:
            response = getattr(exc, "response", None)
            if response is not None:
                limiter.observe(response.headers)
            mapped = classify_error(exc)
            if getattr(mapped, "rate_limited", False):
                self.rate_limited += 1
            raise mapped from None
        except ValueError as exc:  # JSON body that does not decode
            raise RetryableError(f"malformed response: {exc}") from None
        finally:
            limiter.release(tokens)
        return parse_response(data, req)


def _with_latency(c: Completion, latency: float) -> Completion:
    from dataclasses import replace

    return replace(c, latency_s=latency)
