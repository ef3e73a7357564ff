"""Parsing JSON-schema replies and building the re-ask turn (pure functions).

Models often wrap JSON in Markdown fences or add a sentence around it; :func:`parse_json_reply`
takes the first JSON object or array it can decode, then validates it against the schema with
``jsonschema`` (Draft 2020-12 semantics by default, the ``$schema`` key wins).
"""

from __future__ import annotations

import json
import re
from typing import Any

from librachem.common.errors import ConfigError
from librachem.llm.base import ChatRequest

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.S)

#: The user turn appended when a reply does not validate. ``{error}`` is the parser message.
REASK_TEMPLATE = (
    "Your previous reply could not be used: {error}. "
    "Reply again with only a JSON value that satisfies the requested schema, no other text."
)


def _candidates(text: str) -> list[str]:
    out = [m.group(1) for m in _FENCE.finditer(text)]
    out.append(text)
    return out


def extract_json(text: str) -> Any:
    """Decode the first JSON object/array in ``text`` (fenced blocks first).

    Raises:
        ValueError: no JSON value could be decoded.
    """
    decoder = json.JSONDecoder()
    for cand in _candidates(text):
        stripped = cand.strip()
        try:
            return json.loads(stripped)
        except ValueError:
            pass
        for i, ch in enumerate(cand):
            if ch in "{[":
                try:
                    return decoder.raw_decode(cand, i)[0]
                except ValueError:
                    continue
    raise ValueError("no JSON object found in the reply")


def parse_json_reply(text: str | None, schema: dict[str, Any]) -> tuple[Any, str | None]:
    """Return ``(value, None)`` when ``text`` holds JSON valid under ``schema``, else
    ``(None, reason)``; never raises on bad model output.

    Raises:
        ConfigError: the ``jsonschema`` package is missing.
    """
    try:
        import jsonschema  # lazy: only needed when a schema is requested
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ConfigError("JSON-schema replies need the `jsonschema` package "
                          "(pip install jsonschema==4.26.0)") from exc

    if not text or not text.strip():
        return None, "empty reply"
    try:
        value = extract_json(text)
    except ValueError as exc:
        return None, f"invalid JSON ({exc})"
    validator_cls = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    errors = sorted(validator_cls(schema).iter_errors(value), key=lambda e: list(e.path))
    if errors:
        err = errors[0]
        where = "/".join(str(p) for p in err.path) or "<root>"
        return None, f"schema violation at {where}: {err.message}"
    return value, None


def reask_request(request: ChatRequest, bad_reply: str | None, error: str) -> ChatRequest:
    """``request`` extended with the invalid reply and a user turn asking to fix it."""
    messages = list(request.messages)
    messages.append({"role": "assistant", "content": bad_reply or ""})
    messages.append({"role": "user", "content": REASK_TEMPLATE.format(error=error)})
    return ChatRequest(messages=tuple(messages), model=request.model,
                       temperature=request.temperature, max_tokens=request.max_tokens,
                       top_p=request.top_p, seed=request.seed, json_schema=request.json_schema)
