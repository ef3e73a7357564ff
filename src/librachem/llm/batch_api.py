"""``BatchClient``: a stage's requests through the OpenAI Batch API (``backend: openai_batch``).

Offline work (generate, augment, judging) at the Batch API's price: 50% of the online list
price, with its own rate limits (OpenAI, "Batch API" guide; the discount is applied in
:meth:`librachem.llm.pricing.PriceTable.for_batch`). Results come back within the 24 h
completion window, usually much sooner.

One :meth:`BatchClient.complete` call:

1. Each request becomes one JSONL line ``{"custom_id", "method": "POST", "url":
   "/v1/chat/completions", "body"}``; the body is what the online ``openai`` backend posts
   (:func:`chat_body`), and ``custom_id`` is the SHA-256 of that body, so identical bodies
   share one line and one answer.
2. Lines are split into parts of at most :data:`MAX_REQUESTS` lines and :data:`MAX_BYTES`
   bytes (the Batch API's per-file limits), each uploaded with ``files.create(purpose=
   "batch")`` and started with ``batches.create(endpoint="/v1/chat/completions",
   completion_window="24h")``. A single line over the byte limit is recorded as failed.
3. Batches are polled with a doubling interval (capped at ``batch_poll_max_s``) and a tqdm
   bar of finished requests, until each is ``completed``, ``expired``, ``failed`` or
   ``cancelled``; then the output and error files are read and matched by ``custom_id``
   (their lines are in no particular order).

**Persisted batches, never paid twice.** Every part has a small JSON state file,
``<cache_dir>/batch-state/<set hash>.json`` (the set hash is the SHA-256 of the part's
sorted ``custom_id`` list), written *before* ``batches.create`` (with the uploaded file id)
and again after it (with the batch id). A rerun of a killed stage finds the state files
whose requests it still needs and polls those batches instead of submitting new ones. A
kill between ``batches.create`` and the second write is covered too: the batch carries the
set hash in its ``metadata`` and is found again with ``batches.list``. After the results of
a batch have been handed back its state is marked ``collected`` (with the ids that
succeeded), and it is deleted once the caller says the results are stored in the call
cache (:meth:`BatchClient.results_stored`, called by
:class:`librachem.llm.client.CachedClient`). A collected state that is still on disk (the
process died between the two) is used again only for requests that succeeded in it;
requests that failed in it are submitted afresh, as the online backend retries failures on
a rerun. A state whose batch the server does not know (HTTP 404, e.g. another account's
key) is dropped with a warning; a collected state older than 30 days (when the Batch API
deletes its files) is deleted.

**Failures are recorded, never dropped.** A request with an error line (HTTP 4xx/5xx in
the batch, ``batch_expired``, ``batch_cancelled``), no line at all, a malformed body, or in
a batch that ``failed`` becomes a :class:`Completion` with ``finish_reason="error"`` and the
reason in ``error``, so it counts in the stage's failure gates and is retried on a rerun.
:meth:`BatchClient.stats` counts batches by outcome and the failed requests
(:data:`BATCH_STAT_KEYS`). Transient errors of the files/batches calls themselves are
retried by the ``openai`` client (``max_retries``); 401/403 and quota errors raise
:class:`~librachem.common.errors.LLMError`.

Batch requests have no per-request latency: ``latency_s`` is 0. The API key comes only
from the environment variable named by ``api_key_env``.
"""

from __future__ import annotations

import io
import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from librachem.common.atomic import write_bytes
from librachem.common.errors import LLMError
from librachem.llm.base import ChatRequest, Completion
from librachem.llm.batch_lines import (
    BATCH_STAT_KEYS,
    COMPLETION_WINDOW,
    ENDPOINT,
    MAX_BYTES,
    MAX_REQUESTS,
    META_KEY,
    STATE_DIR,
    TERMINAL,
    BatchState,
    batch_errors,
    chat_body,
    custom_id,
    input_line,
    row_outcome,
    set_hash,
    split_lines,
)
from librachem.llm.config import LLMParams
from librachem.llm.keys import api_key

__all__ = ["BATCH_STAT_KEYS", "STATE_DIR", "BatchClient"]

log = logging.getLogger(__name__)

#: batch input/output files expire after 30 days (openai ``files.create``: "files with
#: purpose=batch expire after 30 days"); collected states older than that are deleted
FILES_LIVE_S = 30 * 24 * 3600


class BatchClient:
    """The ``openai_batch`` backend (see module docstring).

    Args:
        params: the stage's LLM params (``base_url``, ``api_key_env``, ``model``,
            ``max_retries`` and ``timeout_s`` for the files/batches calls, ``batch_poll_max_s``).
        state_dir: folder of the persisted batch states (``<cache_dir>/batch-state``).
        max_requests / max_bytes: per-part limits (defaults: the Batch API's).
        progress: show the tqdm bar.

    Raises:
        LLMError: at construction when the API key variable is unset or empty.
    """

    streams_results = True

    def __init__(self, params: LLMParams, *, state_dir: Path, max_requests: int = MAX_REQUESTS,
                 max_bytes: int = MAX_BYTES, progress: bool = True,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        key = api_key(params)
        import openai

        self.params = params
        self.state_dir = Path(state_dir)
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.progress = progress
        self._sleep = sleep
        self._client = openai.OpenAI(api_key=key, base_url=params.base_url,
                                     timeout=params.timeout_s, max_retries=params.max_retries)
        self._stats: dict[str, float] = dict.fromkeys(BATCH_STAT_KEYS, 0.0)
        self._collected: list[BatchState] = []

    def stats(self) -> dict[str, float]:
        """``batches_submitted`` (created by this client), ``batches_resumed`` (persisted
        by an earlier run and polled again), ``batches_completed`` / ``_expired`` /
        ``_failed`` / ``_cancelled`` (final status of every batch collected),
        ``batch_request_errors`` (requests recorded as failed: error lines, missing lines,
        malformed bodies, too large, or in a failed batch)."""
        return dict(self._stats)

    # ------------------------------------------------------------------ main entry
    def complete(self, requests: Sequence[ChatRequest],
                 on_result: Callable[[int, Completion], None] | None = None) -> list[Completion]:
        """Answer ``requests`` in order (blocks until every batch involved is final).

        Raises:
            LLMError: authentication, permission or quota errors of the files/batches
                calls (batches already submitted stay persisted and are resumed on rerun).
        """
        requests = list(requests)
        bodies = [chat_body(r) for r in requests]
        ids = [custom_id(b) for b in bodies]
        where: dict[str, list[int]] = {}
        for i, cid in enumerate(ids):
            where.setdefault(cid, []).append(i)
        out: list[Completion | None] = [None] * len(requests)

        def deliver(cid: str, c: Completion) -> None:
            for i in where.get(cid, ()):
                if out[i] is None:
                    out[i] = c
                    if on_result is not None:
                        on_result(i, c)

        self._wrap(lambda: self._run(requests, bodies, ids, where, deliver))
        for i, c in enumerate(out):  # safety net: every request gets an outcome
            if c is None:
                self._stats["batch_request_errors"] += 1
                deliver(ids[i], self._failed(requests[i], "no result from the Batch API"))
        return [c for c in out if c is not None]

    def results_stored(self) -> None:
        """The caller has stored every result handed back so far: forget their batches."""
        for st in self._collected:
            self._state_path(st.set_hash).unlink(missing_ok=True)
        self._collected = []

    # ------------------------------------------------------------------ internals
    def _wrap(self, fn: Callable[[], None]) -> None:
        import openai

        try:
            fn()
        except openai.APIStatusError as exc:
            quota = "insufficient_quota" in {getattr(exc, "code", None), getattr(exc, "type", None)}
            if exc.status_code in (401, 403) or quota:
                raise LLMError(f"Batch API: HTTP {exc.status_code}: {_message(exc)}") from None
            raise LLMError(f"Batch API call failed after {self.params.max_retries} retries: "
                           f"HTTP {exc.status_code}: {_message(exc)}") from None
        except openai.APIConnectionError as exc:
            raise LLMError(f"Batch API at {self.params.base_url or 'api.openai.com'} not "
                           f"reachable after {self.params.max_retries} retries: {exc}") from None

    def _run(self, requests: list[ChatRequest], bodies: list[dict[str, Any]], ids: list[str],
             where: dict[str, list[int]], deliver: Callable[[str, Completion], None]) -> None:
        active = self._resume(set(ids))
        covered = {cid for st in active for cid in st.assigned}
        seen: set[str] = set()
        lines: list[tuple[str, bytes]] = []
        for cid, body in zip(ids, bodies):
            if cid in covered or cid in seen:
                continue
            seen.add(cid)
            lines.append((cid, input_line(cid, body)))
        parts, too_large = split_lines(lines, self.max_requests, self.max_bytes)
        for cid in too_large:
            self._stats["batch_request_errors"] += 1
            deliver(cid, self._failed(requests[where[cid][0]],
                                      f"request over the Batch API file limit of "
                                      f"{self.max_bytes} bytes"))
        for part in parts:
            active.append(self._submit(part))
        if active:
            self._poll(active)
        for st in active:
            self._collect(st, requests, where, deliver)

    def _usable(self, st: BatchState) -> list[str]:
        """Ids a persisted state can still answer: all before collection, afterwards only
        those that succeeded (their results were handed back but may not be stored)."""
        return st.ok if st.collected else st.ids

    def _state_path(self, h: str) -> Path:
        return self.state_dir / f"{h}.json"

    def _save(self, st: BatchState) -> None:
        write_bytes(self._state_path(st.set_hash), st.to_json())

    def _load_states(self) -> list[BatchState]:
        if not self.state_dir.is_dir():
            return []
        states = []
        stale = time.time() - FILES_LIVE_S
        for path in sorted(self.state_dir.glob("*.json")):
            try:
                st = BatchState(**json.loads(path.read_bytes()))
            except (ValueError, TypeError) as exc:
                log.warning("ignoring unreadable batch state %s (%s)", path, exc)
                continue
            if st.collected and st.created_at < stale:  # its files are gone by now
                path.unlink(missing_ok=True)
                continue
            states.append(st)
        return sorted(states, key=lambda s: s.created_at)

    def _resume(self, need: set[str]) -> list[BatchState]:
        """Persisted batches that hold requests in ``need`` (oldest first; a request is
        taken from the first one that holds it)."""
        import openai

        active: list[BatchState] = []
        taken: set[str] = set()
        for st in self._load_states():
            usable = set(self._usable(st)) & need - taken
            if not usable:
                continue
            if st.batch_id is None:  # killed between upload and the saved batch id
                st.batch_id = self._find_by_metadata(st.set_hash)
                if st.batch_id is None:
                    log.info("batch state %s: the upload %s never became a batch; "
                             "submitting its requests again", st.set_hash[:12], st.input_file_id)
                    self._state_path(st.set_hash).unlink(missing_ok=True)
                    continue
                self._save(st)
            try:
                self._client.batches.retrieve(st.batch_id)
            except openai.NotFoundError:
                log.warning("batch %s (state %s) is unknown to %s (another account?); "
                            "dropping its state and submitting its requests again",
                            st.batch_id, st.set_hash[:12], self.params.base_url or "OpenAI")
                self._state_path(st.set_hash).unlink(missing_ok=True)
                continue
            log.info("resuming batch %s (%d of its %d requests still needed)", st.batch_id,
                     len(usable), len(st.ids))
            self._stats["batches_resumed"] += 1
            st.assigned = usable
            taken |= usable
            active.append(st)
        return active

    def _find_by_metadata(self, h: str) -> str | None:
        for batch in self._client.batches.list(limit=100):
            if (batch.metadata or {}).get(META_KEY) == h:
                return batch.id
        return None

    def _submit(self, part: list[tuple[str, bytes]]) -> BatchState:
        ids = [cid for cid, _ in part]
        h = set_hash(ids)
        data = b"".join(line for _, line in part)
        f = self._client.files.create(file=(f"librachem-{h[:16]}.jsonl", io.BytesIO(data)),
                                      purpose="batch")
        st = BatchState(set_hash=h, ids=ids, input_file_id=f.id, created_at=time.time(),
                        assigned=set(ids))
        self._save(st)  # before batches.create: a kill now leaves a findable upload
        batch = self._client.batches.create(input_file_id=f.id, endpoint=ENDPOINT,
                                            completion_window=COMPLETION_WINDOW,
                                            metadata={META_KEY: h})
        st.batch_id, st.status = batch.id, batch.status
        self._save(st)
        self._stats["batches_submitted"] += 1
        log.info("submitted batch %s: %d requests, %d bytes", batch.id, len(ids), len(data))
        return st

    def _poll(self, active: list[BatchState]) -> None:
        from tqdm.auto import tqdm

        total = sum(len(st.ids) for st in active)
        bar = tqdm(total=total, desc=f"batch {self.params.model}", unit="req",
                   disable=None if self.progress else True)
        wait = min(1.0, self.params.batch_poll_max_s)
        self._batches: dict[str, Any] = {}
        try:
            while True:
                done = 0
                for st in active:
                    b = self._batches.get(st.set_hash)
                    if b is None or b.status not in TERMINAL:
                        b = self._batches[st.set_hash] = self._client.batches.retrieve(st.batch_id)
                    counts = b.request_counts
                    done += (counts.completed + counts.failed) if counts else 0
                    if b.status in TERMINAL and b.status != st.status:
                        st.status = b.status
                        self._save(st)
                bar.update(max(0, min(done, total) - bar.n))
                if all(self._batches[st.set_hash].status in TERMINAL for st in active):
                    return
                self._sleep(wait)
                wait = min(wait * 2, self.params.batch_poll_max_s)
        except KeyboardInterrupt:
            log.warning("interrupted: batch(es) %s keep running; rerun the stage to collect "
                        "them (they are not submitted again)",
                        ", ".join(str(st.batch_id) for st in active))
            raise
        finally:
            bar.close()

    def _read_file(self, file_id: str | None) -> list[dict[str, Any]]:
        import openai

        if not file_id:
            return []
        try:
            text = self._client.files.content(file_id).text
        except openai.NotFoundError as exc:  # e.g. expired (batch files live 30 days)
            log.warning("batch file %s cannot be read (%s); its requests count as failed",
                        file_id, _message(exc))
            return []
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except ValueError as exc:
                log.warning("file %s line %d is not JSON (%s); its request counts as failed",
                            file_id, n, exc)
        return rows

    def _collect(self, st: BatchState, requests: list[ChatRequest],
                 where: dict[str, list[int]],
                 deliver: Callable[[str, Completion], None]) -> None:
        b = self._batches[st.set_hash]
        self._stats[f"batches_{b.status}"] += 1
        if b.status != "completed":
            log.warning("batch %s ended %s (%s)", b.id, b.status, batch_errors(b))
        results: dict[str, Completion | str] = {}
        for row in self._read_file(b.output_file_id) + self._read_file(b.error_file_id):
            cid = row.get("custom_id")
            if not isinstance(cid, str) or cid not in where:
                continue  # a request this call does not need (already cached elsewhere)
            req = requests[where[cid][0]]
            results[cid] = row_outcome(row, req)
        ok: list[str] = []
        for cid in st.ids:
            if cid not in st.assigned:
                continue
            got = results.get(cid)
            if isinstance(got, Completion):
                ok.append(cid)
                deliver(cid, got)
            else:
                reason = got or (f"no result line in batch {b.id} (status {b.status}: "
                                 f"{batch_errors(b)})")
                self._stats["batch_request_errors"] += 1
                deliver(cid, self._failed(requests[where[cid][0]], f"batch {b.id}: {reason}"))
        st.collected, st.ok = True, sorted((set(st.ok) - st.assigned) | set(ok))
        self._save(st)
        self._collected.append(st)

    def _failed(self, req: ChatRequest, reason: str) -> Completion:
        return Completion(text=None, finish_reason="error", model_id=req.model, error=reason)


def _message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    if isinstance(body, dict) and body.get("message"):
        return str(body["message"])
    return str(getattr(exc, "message", exc))
