"""Fault injection: the real ``openai`` client against tests/llm_server.py on 127.0.0.1.

Every request must either complete or be recorded failed with its reason, none lost or
duplicated, and retries must stop at the bound (checked with the server's attempt counts).
"""

from __future__ import annotations

import asyncio

import pytest

from librachem.common.errors import LLMError
from librachem.llm.aiohttp_transport import start_eagerly
from librachem.llm.factory import make_client
from librachem.llm.config import LLMParams
from librachem.llm.openai_backend import (RetryableError, backoff_seconds, parse_response,
                                          parse_retry_after)
from tests.llm_server import RunningServer

KEY = "sk-test-secret-never-stored-0123456789"


@pytest.fixture(scope="module")
def server():
    with RunningServer() as srv:
        yield srv


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("LIBRACHEM_TEST_KEY", KEY)


def params(server, **kw) -> LLMParams:
    base = dict(backend="openai", model="test-model", base_url=server.base_url,
                api_key_env="LIBRACHEM_TEST_KEY", timeout_s=0.5, max_retries=2,
                backoff_initial_s=0.01, backoff_max_s=0.05, retry_after_max_s=0.3,
                concurrency=8, json_retries=1)
    base.update(kw)
    return LLMParams(**base)


def ask(p: LLMParams, *contents: str):
    return [p.request([{"role": "user", "content": c}]) for c in contents]


# prompt -> (expected finish_reason, expected server attempts, error substring or None)
CASES = {
    "plain question": ("stop", 1, None),
    "[429x2:ra=0.05] rate limited twice": ("stop", 3, None),
    "[429x1] rate limited, no header": ("stop", 2, None),
    "[500x2] flaky": ("stop", 3, None),
    "[500x9] broken": ("error", 3, "gave up after 3 attempts: HTTP 500"),
    "[408x1] request timeout once": ("stop", 2, None),
    "[slowx1:2] slow once": ("stop", 2, None),
    "[slowx9:2] always slow": ("error", 3, "timeout"),
    "[badjsonx1] malformed once": ("stop", 2, None),
    "[badjsonx9] always malformed": ("error", 3, "malformed response"),
    "[emptyx1] empty once": ("stop", 2, None),
    "[emptyx9] always empty": ("error", 3, "empty content"),
    "[filter] filtered": ("content_filter", 1, "content_filter"),
    "[length] long": ("length", 1, None),
    "[400] bad request": ("error", 1, "HTTP 400: bad request: max_tokens too large"),
}


def test_every_request_completes_or_is_recorded_failed(server, tmp_path):
    server.reset()
    p = params(server)
    client = make_client(p, cache_dir=tmp_path / "cache")
    prompts = list(CASES)
    out = client.complete(ask(p, *prompts))
    assert len(out) == len(prompts)
    counts = server.stats()["by_prompt"]
    for prompt, c in zip(prompts, out):
        finish, attempts, err = CASES[prompt]
        assert c.finish_reason == finish, (prompt, c)
        assert counts[prompt] == attempts, (prompt, counts[prompt])  # bound respected, no dupes
        if err is None:
            assert c.ok and c.text == f"echo: {prompt}" and c.model_id == "test-model-served"
        else:
            assert not c.ok and err in c.error, (prompt, c.error)
    s = client.stats()
    assert s["calls"] == len(prompts) and s["failures"] == sum(
        1 for v in CASES.values() if v[2] is not None)
    assert s["unpriced_calls"] > 0 and s["cost_usd"] == 0  # test-model has no price: not guessed

    # Second run: only the model's answers were cached (incl. content_filter and length);
    # transport failures are retried.
    server.reset()
    again = make_client(p, cache_dir=tmp_path / "cache").complete(ask(p, *prompts))
    sent = server.stats()["by_prompt"]
    for prompt, c in zip(prompts, again):
        assert c.cached == (CASES[prompt][0] != "error"), prompt
        assert (prompt in sent) == (CASES[prompt][0] == "error"), prompt
    # the key is never written anywhere in the cache
    for f in (tmp_path / "cache").rglob("*"):
        if f.is_file():
            assert KEY not in f.read_text()


def test_many_requests_none_lost_or_duplicated(server):
    server.reset()
    p = params(server, concurrency=16, max_retries=3)
    prompts = [f"[500x{i % 3}] q{i}" if i % 4 == 0 else f"q{i}" for i in range(120)]
    out = make_client(p, cache_dir=None).complete(ask(p, *prompts))
    assert [c.text for c in out] == [f"echo: {q}" for q in prompts]
    counts = server.stats()["by_prompt"]
    assert set(counts) == set(prompts)
    for i, q in enumerate(prompts):
        assert counts[q] == (1 + i % 3 if i % 4 == 0 else 1)


def test_concurrency_bounds_requests_in_flight():
    """Exactly ``concurrency`` requests in flight: the bound is kept and is also used.
    (Own server: the shared one may still be sleeping on requests other tests timed out.)"""
    with RunningServer() as own:
        p = params(own, concurrency=5, timeout_s=5)
        out = make_client(p, cache_dir=None).complete(
            ask(p, *(f"[slowx1:0.2] bounded {i}" for i in range(23))))
        assert [c.text for c in out] == [f"echo: [slowx1:0.2] bounded {i}" for i in range(23)]
        assert own.stats()["max_in_flight"] == 5


@pytest.mark.parametrize("prompt,match", [
    ("[quota] out of money", "quota exhausted.*You exceeded your current quota"),
    ("[401] bad key", "HTTP 401.*Incorrect API key"),
])
def test_quota_and_auth_fail_at_once_with_server_message(server, prompt, match):
    server.reset()
    p = params(server)
    with pytest.raises(LLMError, match=match):
        make_client(p, cache_dir=None).complete(ask(p, prompt, "fine"))
    assert server.stats()["by_prompt"][prompt] == 1  # never retried


def test_json_schema_reply_is_reasked_over_http(server):
    server.reset()
    schema = {"type": "object", "required": ["verdict"]}
    p = params(server, json_retries=2)
    good = p.request([{"role": "user", "content": 'REPLIES:no json||{"verdict": "refusal"}'}],
                     json_schema=schema)
    bad = p.request([{"role": "user", "content": "REPLIES:never||still no||nope"}],
                    json_schema=schema)
    client = make_client(p, cache_dir=None)
    ok, failed = client.complete([good, bad])
    assert ok.ok and ok.parsed == {"verdict": "refusal"}
    assert failed.finish_reason == "parse_error" and failed.text == "nope"
    counts = server.stats()["by_prompt"]
    assert counts[good.messages[0]["content"]] == 2 and counts[bad.messages[0]["content"]] == 3


def test_missing_key_is_a_clear_error(server, monkeypatch):
    monkeypatch.delenv("LIBRACHEM_TEST_KEY")
    p = params(server)
    client = make_client(p, cache_dir=None)  # key checked when the backend is first needed
    with pytest.raises(LLMError, match="LIBRACHEM_TEST_KEY is not set"):
        client.complete(ask(p, "hi"))


def test_retry_after_parsing_and_backoff_choice():
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "250"}) == 0.25
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0  # past
    assert parse_retry_after({"retry-after": "soon"}) is None
    assert parse_retry_after({}) is None
    assert backoff_seconds(RetryableError("429", retry_after=3.0), 0.1, 10.0) == 3.0
    assert backoff_seconds(RetryableError("429", retry_after=30.0), 0.1, 10.0) == 10.0
    assert backoff_seconds(RetryableError("500"), 0.1, 10.0) == 0.1


@pytest.mark.parametrize("body, reason", [
    ({}, "KeyError"),
    ({"choices": []}, "IndexError"),
    ({"choices": [{"message": {"content": ["not", "text"]}, "finish_reason": "stop"}]},
     "TypeError"),
    ({"choices": [{"message": {"content": ""}, "finish_reason": "stop"}]}, "empty content"),
    ([1, 2], "TypeError"),
])
def test_parse_response_rejects_unusable_bodies(body, reason):
    req = LLMParams(backend="openai", model="m").request([{"role": "user", "content": "hi"}])
    with pytest.raises(RetryableError, match=reason):
        parse_response(body, req)


def test_parse_response_reads_usage_model_and_finish_reason():
    req = LLMParams(backend="openai", model="asked").request([{"role": "user", "content": "hi"}])
    c = parse_response({"choices": [{"message": {"content": "hello"}, "finish_reason": "length"}],
                        "usage": {"prompt_tokens": 7, "completion_tokens": 3},
                        "model": "served-2024"}, req)
    assert (c.text, c.finish_reason, c.prompt_tokens, c.completion_tokens, c.model_id) == \
        ("hello", "length", 7, 3, "served-2024")
    odd = parse_response({"choices": [{"message": {"content": "x"}, "finish_reason": None}],
                          "usage": {"prompt_tokens": "n/a"}}, req)
    assert (odd.finish_reason, odd.prompt_tokens, odd.model_id) == ("stop", 0, "asked")


def test_parse_response_replaces_lone_surrogates_keeps_valid_emoji():
    import json

    req = LLMParams(backend="openai", model="m").request([{"role": "user", "content": "hi"}])
    # a reply cut mid-emoji: the server sends half a surrogate pair as a JSON escape
    body = json.loads('{"choices": [{"message": {"content": "ok \\ud83e and \\ud83e\\uddea"},'
                      ' "finish_reason": "length"}], "model": "m\\udc00"}')
    c = parse_response(body, req)
    assert c.text == "ok \ufffd and \U0001f9ea" and c.model_id == "m\ufffd"
    c.text.encode("utf-8")  # the cache can write it


# --------------------------------------------------------------- eager body writes (3.11)
def test_start_eagerly_runs_a_synchronous_coroutine_before_returning():
    log: list[str] = []

    async def write() -> int:
        log.append("written")
        return 42

    async def main() -> None:
        rest = start_eagerly(write())
        assert log == ["written"]  # done before the caller's next line, not in a later round
        assert await asyncio.get_running_loop().create_task(rest) == 42

    asyncio.run(main())


def test_start_eagerly_hands_a_suspended_coroutine_to_its_task():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        gate: asyncio.Future[str] = loop.create_future()
        log: list[str] = []

        async def body() -> str:
            log.append("first step")
            value = await gate  # suspends: the rest runs in the task
            log.append(f"got {value}")
            await asyncio.sleep(0)  # a bare yield is fine too
            return value.upper()

        task = loop.create_task(start_eagerly(body()))
        assert log == ["first step"]
        await asyncio.sleep(0)
        assert not task.done()
        gate.set_result("ok")
        assert await task == "OK"
        assert log == ["first step", "got ok"]

        failing: asyncio.Future[str] = loop.create_future()

        async def body2() -> str:
            return await failing

        task2 = loop.create_task(start_eagerly(body2()))
        failing.set_exception(OSError("socket gone"))
        with pytest.raises(OSError, match="socket gone"):
            await task2

        # awaited directly rather than as a task: the same result
        gate3: asyncio.Future[str] = loop.create_future()

        async def body3() -> str:
            return (await gate3) * 2

        rest = start_eagerly(body3())
        loop.call_soon(gate3.set_result, "ab")
        assert await rest == "abab"

    asyncio.run(main())


@pytest.mark.parametrize("rounds_before_cancel", [0, 1])
def test_start_eagerly_cancellation_reaches_the_coroutine(rounds_before_cancel):
    """Cancelled after the task's first step, or before it (aiohttp cancels the body writer
    in the step that created it when an answer was already buffered): the suspended write
    must see the cancellation (and close the connection) as with 3.12's eager tasks, not be
    dropped while its body is still going out."""

    async def main() -> tuple[list[str], bool]:
        loop = asyncio.get_running_loop()
        gate: asyncio.Future[None] = loop.create_future()
        log: list[str] = []

        async def body() -> None:
            try:
                log.append("first step")
                await gate
            except asyncio.CancelledError:
                log.append("cancelled inside")
                raise
            finally:
                log.append("cleanup")

        task = loop.create_task(start_eagerly(body()))
        for _ in range(rounds_before_cancel):
            await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return log, gate.cancelled()

    assert asyncio.run(main()) == (["first step", "cancelled inside", "cleanup"], True)


def test_start_eagerly_an_error_in_the_first_step_is_raised_in_the_task():
    async def broken() -> None:
        raise ValueError("first step failed")

    async def main() -> None:
        rest = start_eagerly(broken())  # no exception here: it belongs to the task
        with pytest.raises(ValueError, match="first step failed"):
            await asyncio.get_running_loop().create_task(rest)

    asyncio.run(main())


def test_request_body_leaves_in_the_sending_task(server, monkeypatch):
    """On every Python the body is written by the task that sends the request (3.11 without
    the eager request class: by aiohttp's writer task, a loop round later)."""
    from asyncio import selector_events

    import openai

    from librachem.llm.aiohttp_transport import aiohttp_http_client

    writers: list[tuple[object, bytes]] = []
    original = selector_events._SelectorSocketTransport.write

    def write(self, data):  # noqa: ANN001 - asyncio's signature
        writers.append((asyncio.current_task(), bytes(data)))
        return original(self, data)

    monkeypatch.setattr(selector_events._SelectorSocketTransport, "write", write)

    async def main() -> object:
        async with openai.AsyncOpenAI(api_key=KEY, base_url=server.base_url, max_retries=0,
                                      http_client=aiohttp_http_client(30)) as client:
            await client.chat.completions.create(  # opens the keep-alive connection
                model="m", messages=[{"role": "user", "content": "warm-up"}])
            writers.clear()
            sender = asyncio.current_task()
            reply = await client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "body-marker-7f3a"}])
            assert reply.choices[0].message.content == "echo: body-marker-7f3a"
            return sender

    sender = asyncio.run(main())
    with_body = [task for task, data in writers if b"body-marker-7f3a" in data]
    assert with_body == [sender]


def test_aiohttp_http_client_keeps_the_default_clients_settings(monkeypatch):
    """Same timeout, redirects and environment proxies as ``openai.DefaultAioHttpClient``."""
    import openai

    from librachem.llm.aiohttp_transport import aiohttp_http_client

    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.invalid:3128")
    ours, default = aiohttp_http_client(30), openai.DefaultAioHttpClient()
    try:
        assert isinstance(ours, openai.DefaultAioHttpClient)
        assert ours.timeout == default.timeout
        assert ours.follow_redirects == default.follow_redirects
        def proxies(client):  # httpx2's mounts: URL pattern -> proxy transport
            return sorted((pattern.pattern, str(transport.proxy.url))
                          for pattern, transport in client._mounts.items())

        assert proxies(ours) == proxies(default) == [("https://",
                                                      "http://proxy.invalid:3128")]
    finally:
        async def close() -> None:
            await ours.aclose()
            await default.aclose()
        asyncio.run(close())


def test_large_body_that_suspends_mid_write_still_arrives(server, monkeypatch):
    """A body bigger than the socket buffers suspends the eager first step; the rest is
    written by the task (``_Started``) and the server gets all of it."""
    import sys

    from librachem.llm import aiohttp_transport

    resumed: list[object] = []

    class Spy(aiohttp_transport._Started):
        def __init__(self, coro, pending):  # noqa: ANN001
            resumed.append(pending)
            super().__init__(coro, pending)

    monkeypatch.setattr(aiohttp_transport, "_Started", Spy)
    p = params(server, timeout_s=30)
    big = "x" * (8 << 20)  # 8 MiB: more than the loopback socket and transport buffers hold
    [c] = make_client(p, cache_dir=None).complete(ask(p, f"big {big} end"))
    assert c.ok, c.error
    assert c.text == f"echo: big {big} end"
    if sys.version_info < (3, 12):
        assert resumed, "the 8 MiB body should have suspended its first write step"


def test_start_eagerly_raises_an_interrupt_at_once():
    async def interrupted() -> None:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        start_eagerly(interrupted())


def _silent_server():
    """A TCP server on 127.0.0.1 that accepts connections and never reads from them."""
    import socket
    import threading

    srv = socket.create_server(("127.0.0.1", 0))
    held: list[socket.socket] = []

    def accept() -> None:
        while True:
            try:
                held.append(srv.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    return srv, held


def test_a_server_that_stops_reading_the_body_times_out(monkeypatch):
    """aiohttp's read timer starts once the body is written: without the write timeout an
    8 MiB body to a server that never reads hung forever."""
    import threading
    import time

    from librachem.llm.openai_backend import OpenAIClient

    monkeypatch.setattr(OpenAIClient, "check_endpoint", lambda self: None)  # per-request path
    srv, held = _silent_server()
    p = LLMParams(backend="openai", model="m", api_key_env="LIBRACHEM_TEST_KEY",
                  base_url=f"http://127.0.0.1:{srv.getsockname()[1]}/v1", timeout_s=0.5,
                  max_retries=0, concurrency=2)
    out: list = []
    worker = threading.Thread(target=lambda: out.extend(
        make_client(p, cache_dir=None).complete(ask(p, "x" * (8 << 20), "small"))), daemon=True)
    start = time.monotonic()
    worker.start()
    worker.join(60)
    try:
        assert not worker.is_alive(), "complete() hung on a server that never reads"
        assert time.monotonic() - start < 30
        assert [c.finish_reason for c in out] == ["error", "error"]
        assert out[0].error == ("gave up after 1 attempts: timeout: request body not written "
                                "within 0.5 s (write timeout)")
        assert "timeout" in out[1].error  # the small body waits for its answer: read timeout
    finally:
        srv.close()
        for sock in held:
            sock.close()


def test_connection_refused_is_reported_as_a_connection_error(monkeypatch):
    """Per request (the endpoint check passed, then the server went away)."""
    import socket

    from librachem.llm.openai_backend import OpenAIClient

    monkeypatch.setattr(OpenAIClient, "check_endpoint", lambda self: None)

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    p = LLMParams(backend="openai", model="m", api_key_env="LIBRACHEM_TEST_KEY",
                  base_url=f"http://127.0.0.1:{port}/v1", timeout_s=5, max_retries=1,
                  backoff_initial_s=0.01, backoff_max_s=0.02)
    [c] = make_client(p, cache_dir=None).complete(ask(p, "anyone there?"))
    assert c.finish_reason == "error"
    assert c.error.startswith("gave up after 2 attempts: connection error: ")
    assert "timeout" not in c.error.lower()


def test_a_request_that_cannot_be_encoded_is_a_clear_error_before_anything_is_sent():
    from librachem.llm.base import ChatRequest

    with pytest.raises(ValueError, match=r"messages\[1\]\.content holds a lone UTF-16 "
                                         r"surrogate \(U\+D800 at character 15\)"):
        ChatRequest(messages=[{"role": "system", "content": "ok"},
                              {"role": "user", "content": "lone surrogate \ud800 here"}],
                    model="m")
    with pytest.raises(ValueError, match="model holds a lone UTF-16 surrogate"):
        ChatRequest(messages=[{"role": "user", "content": "hi"}], model="m\udfff")
    # a valid pair (one non-BMP code point) is fine
    assert ChatRequest(messages=[{"role": "user", "content": "flask \U0001f9ea"}], model="m")


def test_an_answer_that_keeps_arriving_is_not_cut_off(monkeypatch):
    """The read timeout is silence, not total time: a server that sends keep-alive bytes for
    6 x timeout_s before the JSON is answered (an overall attempt deadline cut this off)."""
    import json as _json
    import socket
    import threading
    import time

    from librachem.llm.openai_backend import OpenAIClient

    monkeypatch.setattr(OpenAIClient, "check_endpoint", lambda self: None)  # chat only

    def handle(conn: socket.socket) -> None:
        with conn:
            buf = b""
            while b"\r\n\r\n" not in buf:
                buf += conn.recv(65536)
            head, body = buf.split(b"\r\n\r\n", 1)
            length = int(next(line.split(b":")[1] for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length")))
            while len(body) < length:
                body += conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                         b"transfer-encoding: chunked\r\n\r\n")
            for _ in range(12):  # a whitespace chunk every 0.15 s: 1.8 s in all
                time.sleep(0.15)
                conn.sendall(b"1\r\n \r\n")
            reply = _json.dumps({"choices": [{"message": {"content": "done"},
                                              "finish_reason": "stop"}]}).encode()
            conn.sendall(b"%x\r\n%s\r\n0\r\n\r\n" % (len(reply), reply))
            time.sleep(0.5)

    srv = socket.create_server(("127.0.0.1", 0))

    def accept() -> None:
        while True:
            try:
                conn = srv.accept()[0]
            except OSError:
                return
            threading.Thread(target=handle, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        p = LLMParams(backend="openai", model="m", api_key_env="LIBRACHEM_TEST_KEY",
                      base_url=f"http://127.0.0.1:{srv.getsockname()[1]}/v1", timeout_s=0.3,
                      max_retries=0)
        [c] = make_client(p, cache_dir=None).complete(ask(p, "take your time"))
        assert c.ok, c.error
        assert c.text == "done"
    finally:
        srv.close()


def test_start_eagerly_leaves_the_awaited_future_free_for_other_awaiters():
    """After the first step the future is the task's, as after 3.12's eager step: another
    coroutine awaiting the same future must not find it marked as held."""
    async def main() -> tuple[str, str]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[str] = loop.create_future()

        async def waiter() -> str:
            return await fut

        other = loop.create_task(waiter())
        writer = loop.create_task(start_eagerly(waiter()))
        await asyncio.sleep(0)
        fut.set_result("ok")
        return await other, await writer

    assert asyncio.run(main()) == ("ok", "ok")
