"""The content-addressed call cache.

Key: SHA-256 of the canonical rendered request -- backend, model, model revision, messages,
decoding params (temperature, top_p, max_tokens), seed, JSON schema and, when set, the
hazard ``redact_threshold`` -- serialised as
sorted-key compact JSON. Concurrency, timeouts, retries, base URL and credentials are *not*
in the key (NeMo DataDesigner's fingerprint rule): they change how a call is made, not what
is asked, and leaving the base URL out lets a pulled cache replay from any host.

Layout: one JSON file per entry, ``<root>/<key[:2]>/<key>.json``, holding the rendered
request and the completion (text, finish reason, usage, latency, reported model id, parsed
JSON). Each file is written to a temporary file in the same folder and moved into
place with ``os.replace`` (no fsync, see :func:`_write_atomic`), so concurrent writers and ``kill -9``
leave either no entry or a complete one, never a torn one; two writers of one key write the
same content and the last rename wins. Temporary files start with ``.tmp-`` and are never
read (``clean_tmp`` removes leftovers). The folder can be tracked with ``dvc add .llm-cache``.

A request with ``redact_threshold`` is stored *redacted* (see :func:`sanitize`): the cache
never holds an actionable procedure for it, and a replay returns exactly what the first
run returned (redacted text + the raw ``hazard_score``).

Only final model outputs are stored (``stop``, ``length``, ``content_filter`` and
``parse_error``); transport failures (retries exhausted, 4xx) are not, so a rerun tries again.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from librachem.llm.base import ChatRequest, Completion

log = logging.getLogger(__name__)

#: Bump when the rendering below changes meaning; old entries then simply miss.
KEY_VERSION = 1

#: Finish reasons that are a model's answer (cacheable), as opposed to a failed call.
CACHEABLE_FINISH = frozenset({"stop", "length", "content_filter", "parse_error"})


def _write_atomic(target: Path, data: bytes) -> None:
    """Temp file in the same folder + ``os.replace``: readers see no entry or a whole one.

    Unlike :func:`librachem.common.atomic.write_bytes` there is no fsync: a ``kill -9`` cannot tear
    a renamed file (the data is in the page cache), and on power loss a damaged entry reads
    as a miss (see :meth:`CallCache.get`). An fsync per entry would stall the event loop of
    the ``openai`` backend (one entry per finished request).
    """
    tmp = target.parent / f".tmp-{target.name}.{os.getpid()}.{threading.get_ident()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    except FileNotFoundError:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, target)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def render_request(request: ChatRequest, *, backend: str, revision: str) -> dict[str, Any]:
    """The canonical form of ``request`` that the cache key hashes (JSON-ready dict)."""
    return {
        "v": KEY_VERSION,
        "backend": backend,
        "model": request.model,
        "revision": revision,
        "messages": [{"role": m["role"], "content": m["content"]} for m in request.messages],
        "temperature": float(request.temperature),
        "top_p": float(request.top_p),
        "max_tokens": int(request.max_tokens),
        "seed": request.seed,
        "json_schema": request.json_schema,
        # only when set, so the keys of every other request stay what they were
        **({"redact_threshold": int(request.redact_threshold)}
           if request.redact_threshold is not None else {}),
    }


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def cache_key(request: ChatRequest, *, backend: str, revision: str) -> str:
    """SHA-256 hex of the canonical rendered request (see module docstring)."""
    return hashlib.sha256(_canonical(render_request(request, backend=backend,
                                                    revision=revision))).hexdigest()


def sanitize(request: ChatRequest, completion: Completion) -> Completion:
    """Apply the request's hazard scan (``redact_threshold``) to a completion.

    The raw score goes to ``hazard_score`` (kept when already set, e.g. on a replay); a text
    whose raw score reaches the threshold is passed through :func:`librachem.common.hazard.redact`
    (a no-op on text that is already redacted). Requests without a threshold and failed
    completions are returned unchanged.
    """
    from dataclasses import replace

    from librachem.common.hazard import redact, scan

    if request.redact_threshold is None or completion.text is None:
        return completion
    score = completion.hazard_score
    if score is None:
        score = scan(completion.text).score
        completion = replace(completion, hazard_score=score)
    if score >= request.redact_threshold and scan(completion.text).score:
        completion = replace(completion, text=redact(completion.text))
    return completion


def is_cacheable(completion: Completion) -> bool:
    """True for a model's answer, False for a failed call (which a rerun should retry)."""
    return completion.finish_reason in CACHEABLE_FINISH and completion.text is not None


#: Optional completion fields and the types a stored value may have (bool is rejected
#: separately: it is an int subclass but never a count or a duration).
_FIELD_TYPES: dict[str, tuple[type, ...]] = {
    "prompt_tokens": (int, float), "completion_tokens": (int, float),
    "latency_s": (int, float), "model_id": (str,), "cache_key": (str,), "cached": (bool,),
    "error": (str, type(None)), "hazard_score": (int, type(None)),
}


def _entry_problem(entry: Any, key: str) -> str | None:
    """Why a decoded cache file is not a valid entry for ``key``, or ``None`` when it is.

    Checks what :meth:`CallCache.put` writes: ``key`` matches, ``completion`` is an object
    whose ``text`` is a string, whose ``finish_reason`` is cacheable
    (:data:`CACHEABLE_FINISH`, as :func:`is_cacheable`) and whose other fields have their
    types (``parsed`` is any JSON). Unknown fields fail later, in ``Completion(**...)``.
    """
    if not isinstance(entry, dict):
        return f"entry is a JSON {type(entry).__name__}, not an object"
    if entry.get("key") != key:
        return f"stored key {entry.get('key')!r} is not the file's key"
    c = entry.get("completion")
    if not isinstance(c, dict):
        return f"completion is a JSON {type(c).__name__}, not an object"
    if not isinstance(c.get("text"), str):
        return f"text is {type(c.get('text')).__name__}, not a string"
    finish = c.get("finish_reason")
    if not (isinstance(finish, str) and finish in CACHEABLE_FINISH):
        return f"finish_reason {finish!r} is not cacheable"
    for name, types in _FIELD_TYPES.items():
        if name in c:
            value = c[name]
            if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
                return f"{name} is {type(value).__name__}"
    return None


class CallCache:
    """One-file-per-entry cache rooted at ``root`` (created on first write).

    Raises nothing on a corrupt entry (impossible through this class, possible by hand):
    it is logged and treated as a miss, and the next ``put`` replaces it. Corrupt means
    not JSON, or not the shape ``put`` writes (see :func:`_entry_problem`): wrong types, a
    finish reason that is not cacheable (e.g. ``error``), text ``None``, another key.
    """

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def get(self, key: str) -> Completion | None:
        """The stored completion for ``key`` (with ``cached=True``), or ``None``."""
        path = self.path(key)
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return None
        try:
            entry = json.loads(raw)
            problem = _entry_problem(entry, key)
            if problem is None:
                data = entry["completion"]
                data["cached"] = True
                data["cache_key"] = key
                return Completion(**data)
        except (ValueError, KeyError, TypeError) as exc:  # bad JSON, unknown field
            problem = f"{type(exc).__name__}: {exc}"
        log.warning("ignoring unreadable cache entry %s (%s); it will be replaced", path, problem)
        return None

    def put(self, key: str, rendered: dict[str, Any], completion: Completion) -> None:
        """Store ``completion`` under ``key`` atomically, with the rendered request."""
        record = {f.name: getattr(completion, f.name) for f in fields(completion)}
        record["cached"] = False
        record["cache_key"] = key
        entry = {"key": key, "request": rendered, "completion": record}
        _write_atomic(self.path(key), _canonical(entry) + b"\n")

    def __contains__(self, key: str) -> bool:
        return self.path(key).is_file()

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("??/*.json")) if self.root.is_dir() else 0

    def clean_tmp(self, older_than_s: float = 3600.0) -> int:
        """Delete temporary files left by killed writers; returns how many were removed."""
        if not self.root.is_dir():
            return 0
        cutoff = time.time() - older_than_s
        removed = 0
        for tmp in self.root.glob("??/.tmp-*"):
            try:
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
        return removed
