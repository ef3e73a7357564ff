"""A small OpenAI-compatible chat-completions server with scripted faults, for tests/benches.

Why not llm-katan: its echo backend injects random 500s, fixed latency, 429/504 after N
requests and an in-flight cap, but no ``Retry-After`` header, malformed JSON, empty content,
``content_filter`` or per-request scripted faults, which the fault-injection tests need.

Run: ``python -m tests.llm_server --port 8765 [--latency-ms 100]`` (uvicorn, 127.0.0.1).

Behaviour is chosen per request by tags in the *first* user message; attempts are counted per
first-user-message, so "fail the first N attempts, then succeed" is scriptable:

* ``[429xN]`` / ``[429xN:ra=S]``: HTTP 429 (with ``Retry-After: S``) for the first N attempts
* ``[500xN]``: HTTP 500 for the first N attempts
* ``[408xN]``: HTTP 408 (request timeout) for the first N attempts
* ``[slowxN:S]``: sleep S seconds before answering, for the first N attempts
* ``[badjsonxN]``: a 200 whose body is not valid JSON, first N attempts
* ``[emptyxN]``: a 200 with empty content, first N attempts
* ``[filter]``: ``finish_reason="content_filter"``, empty content
* ``[length]``: ``finish_reason="length"``
* ``[quota]``: 429 ``insufficient_quota``;  ``[400]``: 400 bad request;  ``[401]``: 401
* ``REPLIES:a||b||c``: reply ``a`` to the first turn, ``b`` to the first re-ask, ...
* otherwise: ``"echo: <last user message>"``

Server-wide options (``RunningServer(...)`` / command line), for benches and rate-limit tests:

* ``latency_dist="lognormal"``: each successful reply waits ``latency_ms`` times
  ``exp(sigma * N(0, 1))`` (median ``latency_ms``; ``sigma`` 0.69 gives p99 ~ 5 x median),
  seeded, instead of a fixed ``latency_ms``;
* ``rpm=N, rate_window_s=W``: at most N chat requests per sliding window of W seconds;
  more get 429 ``rate_limit_exceeded`` with ``Retry-After`` (until the oldest leaves the
  window); every reply carries ``x-ratelimit-limit-requests``, ``-remaining-requests`` and
  ``-reset-requests`` as OpenAI sends them;
* ``fail_first=N``: the first N attempts of every prompt get HTTP 500.
* ``script="pkg.mod:func"``: replies come from ``func(ChatRequest)`` (a ``str``, a
  ``Completion`` or an exception -> HTTP 500), as the ``fake`` backend's scripts, instead of
  the echo; the tags above still apply.

Each chat request's fingerprint (:func:`fingerprint`: messages, model, max_tokens, seed,
temperature) is recorded: ``GET /fingerprints`` returns those answered 200 (``answered``)
and those received (``received``) since the last reset, so a bench can tell which requests
were sent again.

``GET /v1/models`` lists one model. ``GET /stats`` returns ``{"requests": total, "by_prompt": {first_user_message: attempts},
"max_in_flight": most chat requests being handled at once, "rate_limited": 429s sent by the
rate limit, "latency_sum_s": seconds of latency added to replies}``; ``POST /reset`` clears
them.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import random
import re
import time
from collections import Counter, deque
from typing import Any

_TAG = re.compile(r"\[(429|500|408|slow|badjson|empty)x(\d+)(?::([^\]]+))?\]")


class FaultServer:
    """ASGI app; ``latency_s`` is added to every successful reply."""

    def __init__(self, latency_s: float = 0.0, *, latency_dist: str = "fixed",
                 sigma: float = 0.69, rpm: int = 0, rate_window_s: float = 60.0,
                 fail_first: int = 0, seed: int = 0, script: str | None = None) -> None:
        self.latency_s = latency_s
        self.latency_dist = latency_dist
        self.sigma = sigma
        self.rpm = rpm
        self.rate_window_s = rate_window_s
        self.fail_first = fail_first
        self.rng = random.Random(seed)
        self.script = None
        if script:
            from librachem.llm.fake import load_fake_script

            self.script = load_fake_script(script)
        self.answered: set[str] = set()
        self.received: list[str] = []
        self.window: deque[float] = deque()
        self.counts: Counter[str] = Counter()
        self.total = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.rate_limited = 0
        self.latency_sum = 0.0

    def latency(self) -> float:
        if self.latency_dist == "lognormal":
            value = self.latency_s * math.exp(self.sigma * self.rng.gauss(0.0, 1.0))
        else:
            value = self.latency_s
        self.latency_sum += value
        return value

    def admit(self) -> tuple[bool, list[tuple[bytes, bytes]]]:
        """Sliding-window request limit: (admitted, x-ratelimit headers)."""
        if not self.rpm:
            return True, []
        now = time.monotonic()
        while self.window and self.window[0] <= now - self.rate_window_s:
            self.window.popleft()
        ok = len(self.window) < self.rpm
        if ok:
            self.window.append(now)
        reset = (self.window[0] + self.rate_window_s - now) if self.window else 0.0
        headers = [(b"x-ratelimit-limit-requests", str(self.rpm).encode()),
                   (b"x-ratelimit-remaining-requests",
                    str(self.rpm - len(self.window)).encode()),
                   (b"x-ratelimit-reset-requests", f"{max(reset, 0.001):.3f}s".encode())]
        if not ok:
            headers.append((b"retry-after-ms", str(int(max(reset, 0.001) * 1000)).encode()))
        return ok, headers

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        path, method = scope["path"], scope["method"]
        if path == "/stats":
            await _send(send, 200, {"requests": self.total, "by_prompt": dict(self.counts),
                                    "max_in_flight": self.max_in_flight,
                                    "rate_limited": self.rate_limited,
                                    "latency_sum_s": self.latency_sum})
        elif path == "/reset" and method == "POST":
            self.counts.clear()
            self.total = self.max_in_flight = self.rate_limited = 0
            self.latency_sum = 0.0
            self.window.clear()
            self.answered.clear()
            self.received.clear()
            await _send(send, 200, {"ok": True})
        elif path == "/fingerprints":
            await _send(send, 200, {"answered": sorted(self.answered),
                                    "received": self.received})
        elif path.endswith("/models") and method == "GET":
            await _send(send, 200, {"object": "list", "data": [
                {"id": "test-model", "object": "model", "owned_by": "tests"}]})
        elif path.endswith("/chat/completions") and method == "POST":
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
            try:
                await self.chat(json.loads(body), send)
            finally:
                self.in_flight -= 1
        else:
            await _send(send, 404, {"error": {"message": f"no route {path}"}})

    async def chat(self, req: dict[str, Any], send: Any) -> None:
        messages = req["messages"]
        users = [m["content"] for m in messages if m["role"] == "user"]
        first, last = users[0], users[-1]
        self.total += 1
        self.counts[first] += 1
        attempt = self.counts[first]
        mark = fingerprint(messages, req["model"], req.get("max_tokens"), req.get("seed"),
                           req.get("temperature"))
        self.received.append(mark)
        admitted, limit_headers = self.admit()
        if not admitted:
            self.rate_limited += 1
            await _send(send, 429, _err("Rate limit reached for requests", "rate_limit_exceeded"),
                        limit_headers)
            return
        if attempt <= self.fail_first:
            await _send(send, 500, _err("internal server error", "server_error"), limit_headers)
            return
        for kind, n, arg in _TAG.findall(first):
            if attempt > int(n):
                continue
            if kind == "429":
                ra = arg.split("=", 1)[1] if arg.startswith("ra=") else None
                await _send(send, 429, _err("rate limit exceeded", "rate_limit_exceeded"),
                            [(b"retry-after", ra.encode())] if ra else [])
                return
            if kind == "500":
                await _send(send, 500, _err("internal server error", "server_error"))
                return
            if kind == "408":
                await _send(send, 408, _err("request timed out", "timeout"))
                return
            if kind == "slow":
                await asyncio.sleep(float(arg))
            if kind == "badjson":
                await _send_raw(send, 200, b'{"id": "x", "choices": [', b"application/json")
                return
            if kind == "empty":
                await _send(send, 200, _reply(req, "", "stop"))
                return
        if "[quota]" in first:
            await _send(send, 429, _err("You exceeded your current quota.", "insufficient_quota"))
            return
        if "[400]" in first:
            await _send(send, 400, _err("bad request: max_tokens too large", "invalid_request"))
            return
        if "[401]" in first:
            await _send(send, 401, _err("Incorrect API key provided.", "invalid_api_key"))
            return
        if self.latency_s:
            await asyncio.sleep(self.latency())
        if "[filter]" in first:
            await _send(send, 200, _reply(req, None, "content_filter"), limit_headers)
            return
        finish = "length" if "[length]" in first else "stop"
        if first.startswith("REPLIES:"):
            replies = first[len("REPLIES:"):].split("||")
            text = replies[min(len(users) - 1, len(replies) - 1)]
        elif self.script is not None:
            text, finish = self.scripted(req)
            if text is None:
                await _send(send, 500, _err(f"script failed: {finish}", "server_error"),
                            limit_headers)
                return
        else:
            text = "echo: " + last
        self.answered.add(mark)
        await _send(send, 200, _reply(req, text, finish), limit_headers)

    def scripted(self, req: dict[str, Any]) -> tuple[str | None, str]:
        """(text, finish_reason) from the script; (None, reason) when it failed."""
        from librachem.llm.base import ChatRequest, Completion

        request = ChatRequest(messages=tuple(req["messages"]), model=req["model"],
                              temperature=req.get("temperature", 0.0),
                              max_tokens=req.get("max_tokens", 256),
                              top_p=req.get("top_p", 1.0), seed=req.get("seed"))
        try:
            reply = self.script(request)
        except Exception as exc:  # noqa: BLE001 - a raising script is a failed call
            reply = exc
        if isinstance(reply, Exception) or reply is None:
            return None, f"{type(reply).__name__}: {reply}"
        if isinstance(reply, Completion):
            return reply.text, reply.finish_reason if reply.text is not None else "stop"
        return str(reply), "stop"


def fingerprint(messages: Any, model: str, max_tokens: Any, seed: Any, temperature: Any) -> str:
    """Identity of a chat request as sent (16 hex chars): the same for the HTTP body and for
    a call-cache entry's rendered request."""
    import hashlib

    canon = json.dumps([[{"role": m["role"], "content": m["content"]} for m in messages], model,
                        int(max_tokens or 0), seed, float(temperature or 0.0)], sort_keys=True)
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def _err(message: str, code: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": code, "code": code, "param": None}}


def _reply(req: dict[str, Any], text: str | None, finish: str) -> dict[str, Any]:
    prompt_tokens = sum(len(str(m["content"]).split()) for m in req["messages"])
    return {
        "id": "chatcmpl-test", "object": "chat.completion", "created": 0,
        "model": f"{req['model']}-served",
        "choices": [{"index": 0, "finish_reason": finish,
                     "message": {"role": "assistant", "content": text}}],
        "usage": {"prompt_tokens": prompt_tokens,
                  "completion_tokens": len((text or "").split()),
                  "total_tokens": prompt_tokens + len((text or "").split())},
    }


async def _send(send: Any, status: int, obj: Any,
                headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await _send_raw(send, status, json.dumps(obj).encode(), b"application/json", headers)


async def _send_raw(send: Any, status: int, body: bytes, ctype: bytes,
                    headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", ctype),
                            (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


def free_port() -> int:
    """An unused TCP port on 127.0.0.1 (tiny race window; fine for tests)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RunningServer:
    """Context manager: start this server in a subprocess, wait until it answers.

    ``base_url`` is the ``/v1`` URL for ``openai``; ``stats()`` / ``reset()`` talk to it.
    """

    def __init__(self, latency_ms: float = 0.0, **options: Any) -> None:
        self.latency_ms = latency_ms
        self.options = options  # FaultServer keywords: latency_dist, sigma, rpm, ...
        self.port = free_port()
        self.root = f"http://127.0.0.1:{self.port}"
        self.base_url = self.root + "/v1"
        self.proc: Any = None

    def __enter__(self) -> RunningServer:
        import subprocess
        import sys
        import time
        from pathlib import Path

        repo = Path(__file__).resolve().parents[1]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.llm_server", "--port", str(self.port),
             "--latency-ms", str(self.latency_ms),
             *(a for k, v in self.options.items()
               for a in (f"--{k.replace('_', '-')}", str(v)))], cwd=repo)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"test LLM server exited with {self.proc.returncode}")
            try:
                self.stats()
                return self
            except OSError:
                time.sleep(0.1)
        self.__exit__(None, None, None)
        raise RuntimeError("test LLM server did not start within 30 s")

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except Exception:  # noqa: BLE001 - make sure it is gone
                self.proc.kill()
                self.proc.wait()

    def _get(self, path: str, method: str = "GET") -> Any:
        import urllib.request

        req = urllib.request.Request(self.root + path, method=method,
                                     data=b"" if method == "POST" else None)
        with urllib.request.urlopen(req, timeout=5) as resp:
            return json.loads(resp.read())

    def stats(self) -> dict[str, Any]:
        return self._get("/stats")

    def reset(self) -> None:
        self._get("/reset", "POST")

    def fingerprints(self) -> dict[str, Any]:
        return self._get("/fingerprints")


def main() -> None:
    import uvicorn

    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--latency-ms", type=float, default=0.0)
    ap.add_argument("--latency-dist", choices=("fixed", "lognormal"), default="fixed")
    ap.add_argument("--sigma", type=float, default=0.69)
    ap.add_argument("--rpm", type=int, default=0)
    ap.add_argument("--rate-window-s", type=float, default=60.0)
    ap.add_argument("--fail-first", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--script", default=None)
    args = ap.parse_args()
    app = FaultServer(args.latency_ms / 1000.0, latency_dist=args.latency_dist,
                      sigma=args.sigma, rpm=args.rpm, rate_window_s=args.rate_window_s,
                      fail_first=args.fail_first, seed=args.seed, script=args.script)
    uvicorn.run(app, host="127.0.0.1", port=args.port,
                log_level="warning", access_log=False, backlog=4096)


if __name__ == "__main__":
    main()
