"""``make_client``: one entry point that picks a backend and wraps it in the call cache.

Backends (a plain mapping from ``LLMParams.backend``, no plugin machinery):

* ``fake``  -- :class:`librachem.llm.fake.FakeClient` with ``fake_script`` (``"pkg.mod:func"``)
  or, by default, :func:`echo_script` (reply ``"echo: <last user message>"``).
* ``local`` -- :class:`librachem.llm.local.LocalClient` (in-process transformers).
* ``openai`` -- :class:`librachem.llm.openai_backend.OpenAIClient` (AsyncOpenAI).
* ``openai_batch`` -- :class:`librachem.llm.batch_api.BatchClient` (the OpenAI Batch API;
  needs a cache directory for its batch states; cache keys as ``openai``, prices at the
  batch discount).

Requests with a ``redact_threshold`` are hazard-scanned before a completion is cached or
returned (:func:`librachem.llm.cache.sanitize`), on fresh calls and replays alike.

The returned :class:`CachedClient` answers ``complete(requests)`` in order (one
:class:`Completion` per request, failures recorded, never dropped), serves repeated requests
from the cache, sends identical requests in one batch only once, re-asks JSON-schema replies
that do not validate (``json_retries`` times, then ``finish_reason="parse_error"``) and
counts everything in :meth:`CachedClient.stats` (failures by cause, attempts and retries in
:meth:`CachedClient.failure_report`, :mod:`librachem.llm.failures`). With
``max_cost_usd`` set, a :class:`~librachem.llm.budget.Budget` admits each request before it
is sent (:mod:`librachem.llm.budget`). The backend is built lazily, on the first cache miss,
so a full replay never loads a model or needs an API key; building the ``openai`` backend
checks its endpoint (:meth:`~librachem.llm.openai_backend.OpenAIClient.check_endpoint`).

For backend authors (e.g. a Batch API backend): ``streams_results = True`` means
``complete(requests, on_result=...)`` calls ``on_result(index, completion)`` as answers
arrive; ``supports_admit = True`` additionally accepts ``admit=callable(index, request) ->
reason | None`` (the budget; without it the whole call is admitted or refused up front);
``transport_stats()`` (optional) feeds ``attempts``/``retries``/``rate_limited`` into
:meth:`CachedClient.stats`. Add the backend's name to :data:`STREAMING_BACKENDS` to get
all of a stage's requests in one call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
from typing import Any

from librachem.common.errors import CacheMissError, ConfigError
from librachem.llm.base import ChatRequest, Completion
from librachem.llm.budget import Budget, BudgetExceededError
from librachem.llm.cache import (
    CallCache,
    cache_key,
    is_cacheable,
    render_request,
    sanitize,
)
from librachem.llm.failures import CAUSES, FailureLog
from librachem.llm.jsonreply import parse_json_reply, reask_request
from librachem.llm.pricing import PriceTable

log = logging.getLogger(__name__)

ResultCallback = Callable[[int, Completion], None]


STAT_KEYS = ("calls", "cache_hits", "cache_misses", "failures", "parse_failures", "reasks",
             "prompt_tokens", "completion_tokens", "cost_usd", "unpriced_calls", "latency_s",
             "sent")
#: Backends that answer a stage's requests as they arrive (``on_result``), so a stage hands
#: them all its requests at once (:func:`librachem.llm.batching.complete_all`).
STREAMING_BACKENDS = frozenset({"openai"})


class CachedClient:
    """Cache, de-duplication, JSON re-asks and accounting around one backend.

    Args:
        backend_factory: builds the backend on first need (see module docstring).
        backend_name: ``openai`` / ``local`` / ``fake`` (part of the cache key).
        revision: model revision (part of the cache key).
        cache: a :class:`CallCache`, or ``None`` for no caching.
        replay_only: raise :class:`CacheMissError` on any miss, before calling anything.
        json_retries: re-asks for a reply that fails its JSON schema.
        prices: price table; ``None`` means the backend costs nothing (local, fake).
        model_alias: ``(model, alias)``: requests for ``model`` are keyed as ``alias``
            (``LLMParams.model_alias``); the backend still gets ``model``.
        backend_stat_keys: counters of the backend's own ``stats()``, reported as 0 until
            the backend is built (stable metrics keys on a full replay).
        budget: the ``max_cost_usd`` guard (:mod:`librachem.llm.budget`), or ``None``.
        streams: the backend answers as results arrive (see :data:`STREAMING_BACKENDS`);
            the client then shows one progress bar over each ``complete`` call.
    """

    #: ask callers that chunk their requests to send them in one call (Batch API backend)
    prefers_one_call = False

    def __init__(self, backend_factory: Callable[[], Any], *, backend_name: str, revision: str,
                 cache: CallCache | None, replay_only: bool = False, json_retries: int = 2,
                 prices: PriceTable | None = None, budget: Budget | None = None,
                 streams: bool = False, model_alias: tuple[str, str] | None = None,
                 backend_stat_keys: Sequence[str] = ()) -> None:
        if replay_only and cache is None:
            raise ConfigError("replay-only mode needs a cache directory (--cache-dir)")
        self._factory = backend_factory
        self._backend: Any = None
        self.backend_name = backend_name
        self.revision = revision
        self.cache = cache
        self.replay_only = replay_only
        self.json_retries = json_retries
        self.prices = prices
        self.budget = budget
        self.streams = streams
        self._failures = FailureLog()
        self._stats: dict[str, float] = dict.fromkeys(STAT_KEYS, 0.0)
        self._unpriced_models: set[str] = set()
        self._writer: ThreadPoolExecutor | None = None
        self._pending: list[Future[None]] = []
        self.model_alias = model_alias
        self.backend_stat_keys = tuple(backend_stat_keys)

    @property
    def backend(self) -> Any:
        if self._backend is None:
            self._backend = self._factory()
        return self._backend

    def key(self, request: ChatRequest) -> str:
        """The cache key of ``request`` under this client's backend and revision."""
        return cache_key(self._aliased(request), backend=self.backend_name,
                         revision=self.revision)

    def _aliased(self, request: ChatRequest) -> ChatRequest:
        if self.model_alias is not None and request.model == self.model_alias[0]:
            return replace(request, model=self.model_alias[1])
        return request

    def _render(self, request: ChatRequest) -> dict[str, Any]:
        return render_request(self._aliased(request), backend=self.backend_name,
                              revision=self.revision)

    def stats(self) -> dict[str, float]:
        """Counters since construction: ``calls`` (requests answered), ``cache_hits``,
        ``cache_misses`` (requests that needed the backend, after de-duplication counts as
        one each), ``failures`` (completions with ``error``, incl. parse failures),
        ``parse_failures``, ``reasks``, ``prompt_tokens``, ``completion_tokens`` (of fresh
        calls, re-asks included), ``cost_usd`` (fresh calls to priced models only),
        ``unpriced_calls`` (fresh calls to a model missing from the price table: their cost
        is unknown and NOT in ``cost_usd``), ``latency_s`` (sum over fresh calls), ``sent``
        (requests handed to the backend, re-asks included), ``attempts`` / ``retries`` (HTTP
        attempts and retries for ``openai``; ``sent`` and 0 for in-process backends),
        ``rate_limited`` (429 replies absorbed or not), ``throttle_wait_s``,
        ``exhausted_retries``, ``budget_refused`` and ``failed_<cause>`` for every cause of
        :data:`librachem.llm.failures.CAUSES`. Plus the backend's own counters named in
        ``backend_stat_keys`` (e.g. the Batch API's). Details: :meth:`failure_report`."""
        out = dict(self._stats)
        transport = self._transport()
        out["attempts"] = float(transport.get("attempts", self._stats["sent"]))
        out["retries"] = float(transport.get("retries", 0))
        out["rate_limited"] = float(transport.get("rate_limited", 0))
        out["throttle_wait_s"] = float(transport.get("throttle_wait_s", 0.0))
        out["exhausted_retries"] = float(self._failures.exhausted)
        out["budget_refused"] = float(self.budget.refused if self.budget else 0)
        for cause in CAUSES:
            out[f"failed_{cause}"] = float(self._failures.by_cause.get(cause, 0))
        if self.backend_stat_keys:
            extra = self._backend.stats() if self._backend is not None else {}
            out.update({k: float(extra.get(k, 0.0)) for k in self.backend_stat_keys})
        return out

    def _transport(self) -> dict[str, Any]:
        backend = self._backend  # never built just to report
        return backend.transport_stats() if hasattr(backend, "transport_stats") else {}

    def failure_report(self) -> dict[str, Any]:
        """Failed calls by cause with the last error text of each, attempts and retries
        (by cause, with the last retry reason): see
        :meth:`librachem.llm.failures.FailureLog.report`."""
        stats = self.stats()
        report = self._failures.report(int(stats["attempts"]), int(stats["retries"]))
        transport = self._transport()
        report["retries_by_cause"] = transport.get("retries_by_cause", {})
        report["last_retry_error"] = transport.get("last_retry_error", {})
        report["rate_limited"] = int(stats["rate_limited"])
        return report

    # ------------------------------------------------------------------ main entry
    def complete(self, requests: Sequence[ChatRequest], *, desc: str | None = None
                 ) -> list[Completion]:
        """Answer ``requests`` in order (``desc``: progress bar label, streaming backends).

        Raises:
            BudgetExceededError: the next request could take the spend over
                ``max_cost_usd``; what finished before is cached.
            CacheMissError: replay-only mode and some request is not cached.
            LLMError: a fatal backend error (missing key, quota exhausted, auth); completions
                finished before it are already cached.
        """
        requests = list(requests)
        keys = [self.key(r) for r in requests]
        results: dict[str, Completion] = {}
        misses: dict[str, ChatRequest] = {}
        for key, req in zip(keys, requests):
            if key in results or key in misses:
                continue
            hit = self.cache.get(key) if self.cache is not None else None
            if hit is not None:
                results[key] = sanitize(req, hit)  # entries written before the scan existed
            else:
                misses[key] = req
        if misses and self.replay_only:
            first = next(iter(misses))
            raise CacheMissError(
                f"replay-only: {len(misses)} of {len(set(keys))} distinct requests are not in the "
                f"call cache {self.cache.root if self.cache else None} (first missing key "
                f"{first}, model {misses[first].model!r}, backend {self.backend_name!r}). "
                "Pull the cache (`dvc pull .llm-cache`) or run without replay-only "
                "(needs the backend, e.g. an API key).")
        self._stats["cache_hits"] += sum(1 for k in keys if k in results)
        if misses:
            fresh = self._run_misses(list(misses.keys()), list(misses.values()),
                                     desc=desc, hits=len(results))
            results.update(fresh)
        out = [results[k] for k in keys]
        self._stats["calls"] += len(out)
        self._stats["failures"] += sum(1 for c in out if not c.ok)
        for c in out:
            self._failures.add(c)
        return out

    # ------------------------------------------------------------------ internals
    def _call_backend(self, reqs: list[ChatRequest],
                      on_result: ResultCallback | None) -> list[Completion]:
        backend = self.backend
        budget = self.budget
        self._stats["sent"] += len(reqs)

        def settled(i: int, c: Completion) -> None:
            if budget is not None:
                budget.settle(i, reqs[i], c)
            if on_result is not None:
                on_result(i, c)

        if getattr(backend, "streams_results", False):
            kwargs: dict[str, Any] = {"on_result": settled}
            if budget is not None:
                if getattr(backend, "supports_admit", False):
                    kwargs["admit"] = budget.admit
                else:
                    self._admit_all(reqs)
            return backend.complete(reqs, **kwargs)
        if budget is not None:
            self._admit_all(reqs)
        out = backend.complete(reqs)
        if len(out) != len(reqs):
            raise RuntimeError(f"backend returned {len(out)} completions for {len(reqs)} requests")
        for i, c in enumerate(out):
            settled(i, c)
        return out

    def _admit_all(self, reqs: list[ChatRequest]) -> None:
        """Budget check for a backend that sends a whole batch at once: all or nothing."""
        assert self.budget is not None
        for i, req in enumerate(reqs):
            why = self.budget.admit(i, req)
            if why is not None:
                for j in range(i):
                    self.budget.release(j)
                raise BudgetExceededError(f"{why}; none of these {len(reqs)} requests was sent")

    def _store(self, key: str, req: ChatRequest, completion: Completion) -> Completion:
        completion = sanitize(req, replace(completion, cache_key=key, cached=False))
        if self.cache is not None and is_cacheable(completion):
            rendered = self._render(req)
            if self._writer is not None:  # off the backend's thread / event loop
                self._pending.append(self._writer.submit(self.cache.put, key, rendered,
                                                         completion))
            else:
                self.cache.put(key, rendered, completion)
        return completion

    def _account(self, req: ChatRequest, c: Completion) -> None:
        self._stats["prompt_tokens"] += c.prompt_tokens
        self._stats["completion_tokens"] += c.completion_tokens
        self._stats["latency_s"] += c.latency_s
        if self.prices is None or (c.prompt_tokens == 0 and c.completion_tokens == 0):
            return
        cost = self.prices.cost(req.model, c.prompt_tokens, c.completion_tokens)
        if cost is None:
            self._stats["unpriced_calls"] += 1
            if req.model not in self._unpriced_models:
                self._unpriced_models.add(req.model)
                log.warning("model %r is not in the price table; its cost is counted as "
                            "unpriced_calls, not in cost_usd", req.model)
        else:
            self._stats["cost_usd"] += cost

    def _run_misses(self, keys: list[str], reqs: list[ChatRequest], *, desc: str | None = None,
                    hits: int = 0) -> dict[str, Completion]:
        """Send the misses; cache entries are written by one background thread as results
        arrive (all writes are finished, and their errors raised, before returning -- also
        when the backend raises, so finished work is kept). A streaming backend's progress
        shows in one bar over the call's distinct requests (cache hits counted at once)."""
        from tqdm.auto import tqdm

        self._stats["cache_misses"] += len(reqs)
        self._pending = []
        bar = tqdm(total=hits + len(reqs), initial=hits, unit="req",
                   desc=desc or f"{self.backend_name} {reqs[0].model}",
                   disable=True if not self.streams else None)
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="llm-cache") as writer:
            self._writer = writer
            try:
                done = self._run_misses_inner(keys, reqs, bar)
            finally:
                self._writer = None
                bar.close()
        for fut in self._pending:
            fut.result()
        self._pending = []
        stored = getattr(self._backend, "results_stored", None)
        if stored is not None:  # e.g. the Batch API backend forgets its finished batches
            stored()
        return done

    def _run_misses_inner(self, keys: list[str], reqs: list[ChatRequest],
                          bar: Any) -> dict[str, Completion]:
        done: dict[str, Completion] = {}

        def on_result(i: int, c: Completion) -> None:
            self._account(reqs[i], c)
            if reqs[i].json_schema is None:  # schema replies are stored after validation
                done[keys[i]] = self._store(keys[i], reqs[i], c)
            bar.update(1)

        first = self._call_backend(reqs, on_result)
        schema_idx = [i for i, r in enumerate(reqs) if r.json_schema is not None]
        for i in schema_idx:
            done[keys[i]] = self._validate(reqs[i], first[i])
        if schema_idx:
            self._reask_round(keys, reqs, schema_idx, done)
        for i, k in enumerate(keys):  # safety net: every request gets an outcome
            if k not in done:
                done[k] = self._store(k, reqs[i], first[i])
        return done

    # JSON-schema handling ------------------------------------------------
    @staticmethod
    def _validate(req: ChatRequest, c: Completion) -> Completion:
        """Parse one reply: ``parsed`` set when valid, else ``finish_reason="parse_error"``
        with the reason in ``error`` (the raw text is kept)."""
        if not c.ok or c.finish_reason == "content_filter":
            return c
        value, err = parse_json_reply(c.text, req.json_schema or {})
        if err is None:
            return replace(c, parsed=value)
        return replace(c, finish_reason="parse_error", error=f"json: {err}")

    def _reask_round(self, keys: list[str], reqs: list[ChatRequest], idx: list[int],
                     done: dict[str, Completion]) -> None:
        convo = {i: reqs[i] for i in idx}
        for _ in range(self.json_retries):
            bad = [i for i in idx if done[keys[i]].finish_reason == "parse_error"]
            if not bad:
                break
            asks = [reask_request(convo[i], done[keys[i]].text, done[keys[i]].error or "")
                    for i in bad]
            self._stats["reasks"] += len(asks)
            answers = self._call_backend(asks, None)
            for i, ask, ans in zip(bad, asks, answers):
                convo[i] = ask
                self._account(reqs[i], ans)
                prev = done[keys[i]]
                merged = replace(ans, prompt_tokens=prev.prompt_tokens + ans.prompt_tokens,
                                 completion_tokens=prev.completion_tokens + ans.completion_tokens,
                                 latency_s=prev.latency_s + ans.latency_s)
                if not ans.ok:  # transport failure during a re-ask: record it, stop asking
                    done[keys[i]] = replace(merged, finish_reason="error")
                    continue
                done[keys[i]] = self._validate(reqs[i], merged)
        for i in idx:
            c = done[keys[i]]
            if c.finish_reason == "parse_error":
                self._stats["parse_failures"] += 1
            done[keys[i]] = self._store(keys[i], reqs[i], c)
