"""make_client with the fake backend, JSON parsing and re-asks, pricing, LLMParams validation."""

from __future__ import annotations

import pytest

from librachem.common.config import validate_section
from librachem.common.errors import ConfigError
from librachem.llm.base import ChatRequest, Completion
from librachem.llm.cache import CallCache
from librachem.llm.client import CachedClient
from librachem.llm.factory import make_client
from librachem.llm.config import LLMParams
from librachem.llm.jsonreply import extract_json, parse_json_reply, reask_request
from librachem.llm.pricing import load_prices

SCHEMA = {"type": "object", "properties": {"verdict": {"enum": ["refusal", "compliance"]}},
          "required": ["verdict"]}


def shout(request: ChatRequest) -> str:
    """fake_script used below through its import path."""
    return request.messages[-1]["content"].upper()


def cut_emoji(request: ChatRequest) -> str:
    """fake_script whose reply holds a lone UTF-16 surrogate (half an emoji) and a whole one."""
    return "ok \ud800 text \U0001f9ea"


def test_lone_surrogate_reply_is_replaced_cached_and_replayed(tmp_path):
    p = LLMParams(backend="fake", model="m", fake_script="tests.unit.test_llm_client:cut_emoji")
    req = p.request([{"role": "user", "content": "hi"}])
    first = make_client(p, cache_dir=tmp_path).complete([req])[0]
    assert first.ok and first.text == "ok \ufffd text \U0001f9ea" and not first.cached
    assert len(CallCache(tmp_path)) == 1
    replay = make_client(p, cache_dir=tmp_path, replay_only=True).complete([req])[0]
    assert replay.cached and replay.text == first.text


def test_fake_echo_default_and_script_path(tmp_path):
    p = LLMParams(backend="fake", model="m")
    client = make_client(p, cache_dir=tmp_path)
    assert client.complete([p.request([{"role": "user", "content": "hi"}])])[0].text == "echo: hi"
    p2 = LLMParams(backend="fake", model="m", fake_script="tests.unit.test_llm_client:shout")
    c2 = make_client(p2, cache_dir=tmp_path)
    out = c2.complete([p2.request([{"role": "user", "content": "hi"}])])
    assert out[0].text == "HI" and not out[0].cached  # script is part of the revision
    assert c2.backend.requests[0].messages[-1]["content"] == "hi"  # fake records requests


def test_bad_fake_script_is_a_config_error():
    with pytest.raises(ConfigError, match="cannot import"):
        make_client(LLMParams(backend="fake", fake_script="tests.nope:f"), cache_dir=None)


def test_llmparams_reject_bad_values_naming_the_key():
    with pytest.raises(ConfigError, match=r"generator.temperature = -1"):
        validate_section(LLMParams, "generator", {"temperature": -1})
    with pytest.raises(ConfigError, match=r"generator.api_key: unknown key"):
        validate_section(LLMParams, "generator", {"api_key": "sk-secret"})
    with pytest.raises(ConfigError, match=r"generator.backend"):
        validate_section(LLMParams, "generator", {"backend": "anthropic"})


def test_request_builder_uses_params_defaults_and_overrides():
    p = LLMParams(backend="fake", model="m", temperature=0.7, max_tokens=99, seed=5)
    r = p.request([{"role": "user", "content": "x"}], seed=8, json_schema=SCHEMA)
    assert (r.model, r.temperature, r.max_tokens, r.seed, r.json_schema) == ("m", 0.7, 99, 8, SCHEMA)


@pytest.mark.parametrize("text,value", [
    ('{"verdict": "refusal"}', {"verdict": "refusal"}),
    ('Sure!\n```json\n{"verdict": "compliance"}\n```\nDone.', {"verdict": "compliance"}),
    ('The answer is {"verdict": "refusal"} as requested', {"verdict": "refusal"}),
])
def test_parse_json_reply_accepts_wrapped_json(text, value):
    assert parse_json_reply(text, SCHEMA) == (value, None)


@pytest.mark.parametrize("text,reason", [
    ("", "empty reply"), (None, "empty reply"), ("no json here", "invalid JSON"),
    ('{"verdict": "maybe"}', "schema violation at verdict"),
    ('{"other": 1}', "schema violation at <root>"),
])
def test_parse_json_reply_reports_why(text, reason):
    value, err = parse_json_reply(text, SCHEMA)
    assert value is None and err.startswith(reason)


def test_extract_json_raises_without_json():
    with pytest.raises(ValueError):
        extract_json("plain words")


def test_reask_appends_bad_reply_and_instruction():
    r = ChatRequest(messages=({"role": "user", "content": "judge"},), model="m", json_schema=SCHEMA)
    r2 = reask_request(r, "nope", "invalid JSON")
    assert [m["role"] for m in r2.messages] == ["user", "assistant", "user"]
    assert r2.messages[1]["content"] == "nope" and "invalid JSON" in r2.messages[2]["content"]
    assert r2.json_schema == SCHEMA and r2.seed == r.seed


class Scripted:
    """Replies from a list, by number of re-asks so far (user turns - 1)."""

    def __init__(self, replies):
        self.replies = replies
        self.calls = 0

    def complete(self, requests):
        self.calls += len(requests)
        out = []
        for r in requests:
            turn = sum(1 for m in r.messages if m["role"] == "user") - 1
            out.append(Completion(text=self.replies[min(turn, len(self.replies) - 1)],
                                  finish_reason="stop", prompt_tokens=10, completion_tokens=5))
        return out


def _judge(client):
    r = ChatRequest(messages=({"role": "user", "content": "judge this"},), model="m",
                    json_schema=SCHEMA)
    return client.complete([r])[0]


def test_invalid_json_is_reasked_then_parsed(tmp_path):
    backend = Scripted(["not json", '{"verdict": "refusal"}'])
    client = CachedClient(lambda: backend, backend_name="fake", revision="", json_retries=2,
                          cache=CallCache(tmp_path))
    c = _judge(client)
    assert c.ok and c.parsed == {"verdict": "refusal"} and backend.calls == 2
    assert c.prompt_tokens == 20 and c.completion_tokens == 10  # both attempts counted
    assert client.stats()["reasks"] == 1 and client.stats()["parse_failures"] == 0
    assert _judge(client).cached and _judge(client).parsed == {"verdict": "refusal"}


def test_reasks_stop_at_bound_and_failure_is_recorded_and_cached(tmp_path):
    backend = Scripted(['{"verdict": "perhaps"}'])
    client = CachedClient(lambda: backend, backend_name="fake", revision="", json_retries=3,
                          cache=CallCache(tmp_path))
    c = _judge(client)
    assert backend.calls == 1 + 3
    assert c.finish_reason == "parse_error" and not c.ok and c.parsed is None
    assert c.text == '{"verdict": "perhaps"}' and "schema violation" in c.error
    s = client.stats()
    assert (s["parse_failures"], s["failures"], s["reasks"]) == (1, 1, 3)
    again = _judge(client)  # replays the recorded parse failure, no new calls
    assert again.cached and again.finish_reason == "parse_error" and backend.calls == 4


def test_cost_from_price_table_and_unpriced_models():
    prices = load_prices()
    assert prices.as_of and prices.version >= 1
    price = prices.price("gpt-4o-mini")

    class Tokens:
        def complete(self, requests):
            return [Completion(text="ok", finish_reason="stop", prompt_tokens=1000,
                               completion_tokens=500) for _ in requests]

    client = CachedClient(Tokens, backend_name="openai", revision="", cache=None, prices=prices)
    client.complete([ChatRequest(messages=({"role": "user", "content": "a"},), model="gpt-4o-mini")])
    expected = (1000 * price.input_per_m + 500 * price.output_per_m) / 1e6
    assert client.stats()["cost_usd"] == pytest.approx(expected)
    client.complete([ChatRequest(messages=({"role": "user", "content": "a"},), model="no-such")])
    s = client.stats()
    assert s["cost_usd"] == pytest.approx(expected) and s["unpriced_calls"] == 1
    assert prices.cost("no-such", 1, 1) is None


def test_fake_script_that_raises_or_returns_none_is_a_recorded_failure():
    from librachem.llm.fake import FakeClient

    def script(req):
        text = req.messages[-1]["content"]
        if text == "boom":
            raise RuntimeError("script bug")
        return None if text == "none" else "fine"

    out = FakeClient(script).complete([
        LLMParams(backend="fake", model="m").request([{"role": "user", "content": t}])
        for t in ("boom", "none", "ok")])
    assert [c.ok for c in out] == [False, False, True]
    assert "script bug" in out[0].error and "None" in out[1].error
