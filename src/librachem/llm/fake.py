"""A scripted fake backend for tests: replies by rule, records every request it saw."""

from __future__ import annotations

import hashlib
import importlib
import json
from collections.abc import Callable, Sequence
from typing import Any

from librachem.common.errors import ConfigError
from librachem.llm.base import ChatRequest, Completion

Reply = str | Completion | Exception
Script = Callable[[ChatRequest], Reply]


def request_key(request: ChatRequest) -> str:
    """A stable hash of a request, for fakes that need deterministic varied output."""
    payload = json.dumps(
        {"messages": request.messages, "model": request.model, "seed": request.seed},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()


class FakeClient:
    """Answers each request with ``script(request)``.

    ``script`` may return a string (a normal ``stop`` completion), a full
    :class:`Completion`, or an exception instance (recorded as a failed completion); a
    script that raises, or returns ``None``, is recorded as a failed completion too.
    ``requests`` lists every request seen, in order; ``calls`` counts ``complete`` calls.
    """

    def __init__(self, script: Script | None = None, model_id: str = "fake-model") -> None:
        self.script = script or (lambda req: "ok")
        self.model_id = model_id
        self.requests: list[ChatRequest] = []
        self.calls = 0

    def complete(self, requests: Sequence[ChatRequest]) -> list[Completion]:
        self.calls += 1
        out: list[Completion] = []
        for req in requests:
            self.requests.append(req)
            try:
                reply = self.script(req)
            except Exception as exc:  # noqa: BLE001 - a raising script is a failed call
                reply = exc
            if reply is None:
                reply = ValueError("fake script returned None")
            if isinstance(reply, Completion):
                out.append(reply)
            elif isinstance(reply, Exception):
                out.append(Completion(text=None, finish_reason="error", model_id=self.model_id,
                                      error=f"{type(reply).__name__}: {reply}"))
            else:
                out.append(Completion(text=str(reply), finish_reason="stop",
                                      prompt_tokens=sum(len(m["content"].split()) for m in req.messages),
                                      completion_tokens=len(str(reply).split()),
                                      model_id=self.model_id))
        return out


def echo_script(request: ChatRequest) -> str:
    """Default fake reply: ``"echo: "`` + the last user message (deterministic)."""
    users = [m["content"] for m in request.messages if m.get("role") == "user"]
    return "echo: " + (users[-1] if users else "")


def load_fake_script(spec: str) -> Callable[[ChatRequest], Any]:
    """Import ``"package.module:function"``.

    Raises:
        ConfigError: the module or attribute does not exist or is not callable.
    """
    module_name, _, attr = spec.partition(":")
    try:
        func = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"fake_script = {spec!r}: cannot import ({exc})") from exc
    if not callable(func):
        raise ConfigError(f"fake_script = {spec!r}: not callable")
    return func
