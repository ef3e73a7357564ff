"""Rate limits, 429 deadline, failures by cause, the endpoint check, the cost guard and
snapshot prices (issue 16, issue 17 point 2), against tests/llm_server.py on 127.0.0.1."""

from __future__ import annotations

import asyncio
import socket

import pytest

from librachem.common.errors import ConfigError, LLMError
from librachem.llm.base import Completion
from librachem.llm.budget import BudgetExceededError, prompt_token_bound
from librachem.llm.factory import make_client
from librachem.llm.config import LLMParams
from librachem.llm.failures import error_cause, failure_cause, summary
from librachem.llm.pricing import load_prices
from librachem.llm.ratelimit import RateLimiter, parse_reset
from tests.llm_server import RunningServer

KEY = "sk-test-limits"


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("LIBRACHEM_TEST_KEY", KEY)


def params(base_url: str, **kw) -> LLMParams:
    base = dict(backend="openai", model="test-model", base_url=base_url,
                api_key_env="LIBRACHEM_TEST_KEY", timeout_s=5, max_retries=2,
                backoff_initial_s=0.01, backoff_max_s=0.05, retry_after_max_s=1.0,
                concurrency=8)
    base.update(kw)
    return LLMParams(**base)


def ask(p: LLMParams, *contents: str):
    return [p.request([{"role": "user", "content": c}]) for c in contents]


def _dead_port() -> int:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()  # nothing listens there now
    return port


# ------------------------------------------------------------------------------ pure parts
@pytest.mark.parametrize("value,seconds", [
    ("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("1h2m3.5s", 3723.5), ("0.25", 0.25),
    ("", None), (None, None), ("soon", None), ("5x", None)])
def test_parse_reset_reads_openai_durations(value, seconds):
    got = parse_reset(value)
    assert got == pytest.approx(seconds) if seconds is not None else got is None


@pytest.mark.parametrize("error,cause", [
    ("gave up after 3 attempts: connection error: ClientConnectorError: refused", "connection"),
    ("gave up after 2 attempts: timeout", "timeout"),
    ("gave up after 9 attempts (rate_limit_deadline_s 1 s): HTTP 429: slow down", "rate_limit"),
    ("gave up after 3 attempts: HTTP 500: internal", "http_5xx"),
    ("gave up after 2 attempts: HTTP 408: request timed out", "http_5xx"),
    ("HTTP 400: bad request: max_tokens too large", "http_4xx"),
    ("gave up after 3 attempts: malformed response: x", "malformed"),
    ("gave up after 3 attempts: empty content (finish_reason stop)", "malformed"),
    ("RuntimeError: fake backend failure", "other")])
def test_error_cause(error, cause):
    assert error_cause(error) == cause


def test_failure_cause_of_completions():
    assert failure_cause(Completion(text="ok", finish_reason="stop")) is None
    assert failure_cause(Completion(text="", finish_reason="content_filter",
                                    error="content_filter: stopped")) == "content_filter"
    assert failure_cause(Completion(text="{", finish_reason="parse_error",
                                    error="json: no object")) == "parse_error"


def test_header_budget_pauses_the_limiter():
    limiter = RateLimiter(None, None)
    assert limiter.idle
    limiter.in_flight = 3
    limiter.observe({"x-ratelimit-remaining-requests": "5", "x-ratelimit-reset-requests": "2s"})
    assert limiter.idle  # 5 left, 2 others in flight: no pause
    limiter.observe({"x-ratelimit-remaining-requests": "2", "x-ratelimit-reset-requests": "2s"})
    assert not limiter.idle and limiter.pauses == 1


def test_client_side_requests_per_minute_throttle():
    """aiolimiter bucket of 4/min: the 5th acquisition must wait (no timing asserted: the
    wait shows as a pending task after the first four went through)."""
    async def run() -> tuple[int, bool]:
        limiter = RateLimiter(4, None)
        for _ in range(4):
            await limiter.acquire(10)
        fifth = asyncio.ensure_future(limiter.acquire(10))
        await asyncio.sleep(0.05)
        waiting = not fifth.done()
        fifth.cancel()
        return limiter.in_flight, waiting

    in_flight, waiting = asyncio.run(run())
    assert in_flight == 4 and waiting


def test_budget_bound_is_an_upper_bound_on_prompt_tokens():
    p = LLMParams(model="gpt-4o")
    req = p.request([{"role": "system", "content": "Be brief."},
                     {"role": "user", "content": "What is the pKa of acetic acid?"}])
    assert prompt_token_bound(req) >= len("Be brief.What is the pKa of acetic acid?") + 8


# ------------------------------------------------------------------------------ prices
def test_dated_snapshot_is_priced_alias_or_own_entry():
    table = load_prices()
    assert table.price("gpt-4o-2024-08-06") == table.price("gpt-4o")          # alias
    assert table.price("gpt-4o-mini-2024-07-18") == table.price("gpt-4o-mini")
    assert table.price("gpt-4o-2024-05-13").input_per_m == 5.0               # own price
    assert table.price("gpt-4o-2099-01-01") is None                           # never guessed
    assert table.cost("gpt-4o-2024-08-06", 1_000_000, 0) == pytest.approx(2.5)


# ------------------------------------------------------------------------------ over HTTP
def test_rate_limited_server_absorbs_429s_without_failures():
    """6 requests per 0.5 s window, 30 requests at concurrency 8: 429s happen and are
    retried with the server's retry-after-ms (no fixed attempt count: max_retries 0)."""
    with RunningServer(rpm=6, rate_window_s=0.5) as srv:
        p = params(srv.base_url, max_retries=0, rate_limit_deadline_s=60)
        client = make_client(p, cache_dir=None)
        out = client.complete(ask(p, *(f"limited {i}" for i in range(30))))
        assert [c.text for c in out] == [f"echo: limited {i}" for i in range(30)]
        s = client.stats()
        assert s["failures"] == 0 and s["attempts"] == srv.stats()["requests"]
        assert s["rate_limited"] == srv.stats()["rate_limited"]
        assert s["retries"] == s["attempts"] - 30 == s["rate_limited"]


def test_429_is_retried_until_the_deadline_not_max_retries():
    with RunningServer() as srv:
        p = params(srv.base_url, max_retries=0, rate_limit_deadline_s=1.5,
                   retry_after_max_s=0.05)
        client = make_client(p, cache_dir=None)
        [c] = client.complete(ask(p, "[429x999:ra=0.05] always limited"))
        attempts = srv.stats()["by_prompt"]["[429x999:ra=0.05] always limited"]
        assert attempts > 1  # more than max_retries + 1: 429s go by the deadline
        assert c.error.startswith(f"gave up after {attempts} attempts (rate_limit_deadline_s")
        report = client.failure_report()
        assert report["failed_by_cause"]["rate_limit"] == 1 and report["exhausted_retries"] == 1
        assert report["retries"] == attempts - 1 == report["retries_by_cause"]["rate_limit"]


def test_retries_and_causes_are_counted():
    """Issue 17: a request that needed retries shows them; failures are grouped by cause
    with the last error text."""
    with RunningServer() as srv:
        p = params(srv.base_url, max_retries=2)
        client = make_client(p, cache_dir=None)
        out = client.complete(ask(p, "[500x2] flaky", "[500x9] broken", "[400] bad", "fine"))
        assert [c.ok for c in out] == [True, False, False, True]
        s = client.stats()
        assert s["attempts"] == 3 + 3 + 1 + 1 and s["retries"] == 4
        assert s["failed_http_5xx"] == 1 and s["failed_http_4xx"] == 1
        report = client.failure_report()
        assert report["retries_by_cause"] == {"http_5xx": 4}
        assert "max_tokens too large" in report["last_error"]["http_4xx"]
        assert "HTTP 500" in report["last_error"]["http_5xx"]
        text = summary(report)
        assert "http_4xx 1" in text and "8 attempts, 4 retries" in text


def test_unreachable_endpoint_fails_at_once_naming_url_and_error():
    url = f"http://127.0.0.1:{_dead_port()}/v1"
    p = params(url, max_retries=5, backoff_initial_s=1.0)
    with pytest.raises(LLMError, match=r"unreachable: .*(refused|Connection)") as info:
        make_client(p, cache_dir=None).complete(ask(p, "anyone there?"))
    assert url in str(info.value)


def test_max_cost_usd_stops_before_the_bound(tmp_path):
    """gpt-4o-mini list price. The test server reports a token per word and echoes the
    prompt (~500 words each way: ~0.00038 USD a call; the worst case reserved per request is
    ~0.001 USD): with 0.004 USD only some of 40 requests are sent, the spend stays under the
    bound, and what was answered is cached (a rerun with a larger bound sends the rest)."""
    with RunningServer() as srv:
        p = params(srv.base_url, model="gpt-4o-mini", max_tokens=1000, max_cost_usd=0.004,
                   concurrency=4)
        requests = ask(p, *(f"costly question {i}: " + "word " * 500 for i in range(40)))
        client = make_client(p, cache_dir=tmp_path / "cache")
        with pytest.raises(BudgetExceededError, match="max_cost_usd = 0.004"):
            client.complete(requests)
        sent = srv.stats()["requests"]
        assert 0 < sent < 40
        assert 0 < client.stats()["cost_usd"] <= 0.004 and client.stats()["budget_refused"] >= 1
        srv.reset()
        more = params(srv.base_url, model="gpt-4o-mini", max_tokens=1000, max_cost_usd=1.0)
        again = make_client(more, cache_dir=tmp_path / "cache")
        assert all(c.ok for c in again.complete(requests))
        assert srv.stats()["requests"] == 40 - sent and again.stats()["cache_hits"] == sent


def test_max_cost_usd_on_an_unpriced_model_is_a_config_error():
    with RunningServer() as srv:
        p = params(srv.base_url, model="no-such-model", max_cost_usd=1.0)
        with pytest.raises(ConfigError, match="not in the price table"):
            make_client(p, cache_dir=None).complete(ask(p, "hi"))
        assert srv.stats()["requests"] == 0
