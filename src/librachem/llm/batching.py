"""Send a stage's requests once each: duplicates (the same rendered request) are answered once
and every completion is keyed by :func:`render_key`."""

from __future__ import annotations

import json
from typing import Any

from tqdm import tqdm

from librachem.llm.base import ChatRequest, Completion


def render_key(req: ChatRequest) -> str:
    return json.dumps([req.messages, req.model, req.temperature, req.max_tokens, req.top_p,
                       req.seed], sort_keys=True)


def complete_in_chunks(client: Any, requests: list[ChatRequest], chunk_size: int,
                       desc: str) -> dict[str, Completion]:
    """Answer unique ``requests`` chunk by chunk (each chunk is cached by the client before
    the next starts). Returns completions keyed by the rendered request."""
    unique: dict[str, ChatRequest] = {}
    for req in requests:
        unique.setdefault(render_key(req), req)
    keys = list(unique)
    if getattr(client, "prefers_one_call", False):  # Batch API: one batch, not one per chunk
        chunk_size = max(1, len(keys))
    done: dict[str, Completion] = {}
    for start in tqdm(range(0, len(keys), chunk_size), desc=desc, unit="chunk",
                      disable=not keys):
        chunk = keys[start:start + chunk_size]
        for key, completion in zip(chunk, client.complete([unique[k] for k in chunk])):
            done[key] = completion
    return done
