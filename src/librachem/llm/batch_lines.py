"""The JSONL side of the Batch API backend (:mod:`librachem.llm.batch_api`): request bodies
and their ``custom_id``, input lines split at the file limits, result lines turned into
completions, and the persisted state of one batch. Pure functions, no network.

Input line (OpenAI "Batch API" guide): ``{"custom_id", "method": "POST", "url":
"/v1/chat/completions", "body": <chat-completions body>}``. Result line (output or error
file, in no particular order): ``{"id", "custom_id", "response": {"status_code",
"request_id", "body"} | null, "error": {"code", "message"} | null}``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from librachem.llm.base import ChatRequest, Completion
from librachem.llm.openai_replies import chat_body  # noqa: F401 - the body a batch line carries

#: Batch API input-file limits ("The file can contain up to 50,000 requests, and can be up
#: to 200 MB in size", openai ``batches.create`` docstring).
MAX_REQUESTS = 50_000
MAX_BYTES = 200 * 1024 * 1024
ENDPOINT = "/v1/chat/completions"
COMPLETION_WINDOW = "24h"
#: ``metadata`` key that carries a part's set hash (found again with ``batches.list``).
META_KEY = "librachem_set"
STATE_DIR = "batch-state"
TERMINAL = frozenset({"completed", "expired", "failed", "cancelled"})

BATCH_STAT_KEYS = ("batches_submitted", "batches_resumed", "batches_completed",
                   "batches_expired", "batches_failed", "batches_cancelled",
                   "batch_request_errors")


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def custom_id(body: dict[str, Any]) -> str:
    """SHA-256 hex of the canonical body: equal bodies, equal ids (one line, one answer)."""
    return hashlib.sha256(_canonical(body)).hexdigest()


def set_hash(ids: Sequence[str]) -> str:
    """SHA-256 hex of the sorted ``custom_id`` list of one part (its state file name)."""
    return hashlib.sha256("\n".join(sorted(ids)).encode()).hexdigest()


def split_lines(lines: Sequence[tuple[str, bytes]], max_requests: int = MAX_REQUESTS,
                max_bytes: int = MAX_BYTES) -> tuple[list[list[tuple[str, bytes]]], list[str]]:
    """Greedy split of ``(custom_id, jsonl line)`` pairs, in order, into parts within both
    limits. Returns ``(parts, too_large)``: ids of single lines over ``max_bytes``."""
    parts: list[list[tuple[str, bytes]]] = []
    too_large: list[str] = []
    cur: list[tuple[str, bytes]] = []
    size = 0
    for cid, line in lines:
        if len(line) > max_bytes:
            too_large.append(cid)
            continue
        if cur and (len(cur) >= max_requests or size + len(line) > max_bytes):
            parts.append(cur)
            cur, size = [], 0
        cur.append((cid, line))
        size += len(line)
    if cur:
        parts.append(cur)
    return parts, too_large


@dataclass
class BatchState:
    """What is persisted per part (``<cache_dir>/batch-state/<set_hash>.json``)."""

    set_hash: str
    ids: list[str]
    input_file_id: str
    batch_id: str | None = None
    created_at: float = 0.0
    collected: bool = False
    ok: list[str] = field(default_factory=list)
    status: str = "uploaded"
    #: ids this run takes from this batch (not persisted)
    assigned: set[str] = field(default_factory=set, repr=False)

    def to_json(self) -> bytes:
        return _canonical({k: v for k, v in self.__dict__.items() if k != "assigned"}) + b"\n"


def input_line(cid: str, body: dict[str, Any]) -> bytes:
    """One JSONL line of the input file (with its newline)."""
    return _canonical({"custom_id": cid, "method": "POST", "url": ENDPOINT, "body": body}) + b"\n"


def row_outcome(row: dict[str, Any], req: ChatRequest) -> Completion | str:
    """A completion for a result line with HTTP 200 and a usable body (parsed as the online
    backend parses a reply), else the reason it failed."""
    from librachem.llm.openai_backend import RetryableError, parse_response

    err = row.get("error")
    if err:
        if isinstance(err, dict):
            return f"{err.get('code') or 'error'}: {err.get('message') or ''}".strip()
        return str(err)
    resp = row.get("response") or {}
    status = resp.get("status_code")
    body = resp.get("body")
    if status != 200:
        msg = body.get("error", {}).get("message") if isinstance(body, dict) and \
            isinstance(body.get("error"), dict) else body
        return f"HTTP {status}: {msg}"
    try:
        return parse_response(body, req)
    except RetryableError as exc:
        return str(exc)


def batch_errors(b: Any) -> str:
    """The first three ``errors`` of a batch object as ``code: message`` text."""
    data = getattr(getattr(b, "errors", None), "data", None) or []
    msgs = [f"{getattr(e, 'code', None) or 'error'}: {getattr(e, 'message', '')}" for e in data]
    return "; ".join(msgs[:3]) or "no error given"
