"""Call cache: keys, atomic entries under concurrent writers and SIGKILL, replay-only mode."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest

from librachem.common.errors import CacheMissError, ConfigError
from librachem.llm.base import ChatRequest, Completion
from librachem.llm.cache import CallCache, cache_key
from librachem.llm.client import CachedClient
from librachem.llm.factory import make_client
from librachem.llm.config import LLMParams

REPO = Path(__file__).resolve().parents[2]
BASE = ChatRequest(messages=({"role": "user", "content": "What is the pH of pure water?"},),
                   model="m", temperature=0.0, max_tokens=64, top_p=1.0, seed=3,
                   json_schema=None)


def key(req: ChatRequest = BASE, backend: str = "openai", revision: str = "r1") -> str:
    return cache_key(req, backend=backend, revision=revision)


def test_key_is_stable_and_canonical():
    same = ChatRequest(messages=[{"content": "What is the pH of pure water?", "role": "user"}],
                       model="m", temperature=0, max_tokens=64, top_p=1, seed=3)
    assert key(BASE) == key(same)
    assert len(key()) == 64 and int(key(), 16) >= 0


@pytest.mark.parametrize("change", [
    {"messages": ({"role": "user", "content": "What is the pH of seawater?"},)},
    {"messages": ({"role": "system", "content": "What is the pH of pure water?"},)},
    {"model": "m2"}, {"temperature": 0.7}, {"top_p": 0.9}, {"max_tokens": 65}, {"seed": 4},
    {"seed": None}, {"json_schema": {"type": "object"}},
])
def test_key_changes_with_what_is_asked(change):
    assert key(replace(BASE, **change)) != key(BASE)


def test_key_changes_with_backend_and_revision():
    assert len({key(), key(backend="local"), key(revision="r2")}) == 3


def test_key_ignores_how_the_call_is_made(tmp_path):
    a = LLMParams(backend="fake", model="m", concurrency=1, timeout_s=1, max_retries=0,
                  base_url="http://a/v1", api_key_env="KEY_A", batch_size=1)
    b = LLMParams(backend="fake", model="m", concurrency=64, timeout_s=99, max_retries=9,
                  base_url="http://b/v1", api_key_env="KEY_B", batch_size=32)
    ka = make_client(a, cache_dir=tmp_path).key(a.request([{"role": "user", "content": "x"}]))
    kb = make_client(b, cache_dir=tmp_path).key(b.request([{"role": "user", "content": "x"}]))
    assert ka == kb


def test_put_get_roundtrip_keeps_usage_and_model_id(tmp_path):
    cache = CallCache(tmp_path)
    k = key()
    c = Completion(text="7", finish_reason="stop", prompt_tokens=11, completion_tokens=1,
                   latency_s=0.25, model_id="m-2024", parsed={"ph": 7})
    assert cache.get(k) is None
    cache.put(k, {"any": "request"}, c)
    got = cache.get(k)
    assert got is not None and got.cached and got.cache_key == k
    assert (got.text, got.prompt_tokens, got.completion_tokens, got.latency_s, got.model_id,
            got.parsed) == ("7", 11, 1, 0.25, "m-2024", {"ph": 7})
    assert len(cache) == 1


def test_unreadable_entry_is_a_miss(tmp_path):
    cache = CallCache(tmp_path)
    cache.path(key()).parent.mkdir(parents=True)
    cache.path(key()).write_text("{not json")
    assert cache.get(key()) is None


def _set(field, value):
    def corrupt(entry):
        entry["completion"][field] = value
        return entry
    return corrupt


@pytest.mark.parametrize("corrupt", [
    _set("text", 5),
    _set("text", None),  # with finish_reason "stop"
    lambda e: {**e, "completion": {**e["completion"], "text": None, "finish_reason": "error",
                                   "error": "gave up after 3 attempts: timeout"}},
    _set("finish_reason", ["stop"]),
    _set("prompt_tokens", "x"),
    _set("prompt_tokens", True),
    _set("latency_s", None),
    _set("model_id", 3),
    _set("hazard_score", "7"),
    lambda e: {**e, "completion": list(e["completion"].values())},
    lambda e: [e],  # the whole file a JSON list
    lambda e: {**e, "key": "0" * 64},
], ids=["text-int", "text-null-stop", "finish-error", "finish-list", "tokens-str",
        "tokens-bool", "latency-null", "model-id-int", "hazard-str", "completion-list",
        "file-list", "other-key"])
def test_wrong_shape_entry_is_a_miss_and_replaced(tmp_path, corrupt, caplog):
    params = LLMParams(backend="fake", model="m")
    req = params.request([{"role": "user", "content": "hi"}])
    client = make_client(params, cache_dir=tmp_path)
    assert client.complete([req])[0].text == "echo: hi"
    k, cache = client.key(req), CallCache(tmp_path)
    assert cache.get(k) is not None  # a valid entry is a hit
    cache.path(k).write_text(json.dumps(corrupt(json.loads(cache.path(k).read_text()))))
    assert cache.get(k) is None
    assert "ignoring unreadable cache entry" in caplog.text
    again = make_client(params, cache_dir=tmp_path)
    got = again.complete([req])[0]
    assert (got.text, got.cached, again.stats()["cache_misses"]) == ("echo: hi", False, 1)
    hit = cache.get(k)  # the fresh put replaced the corrupt entry
    assert hit is not None and hit.cached and hit.text == "echo: hi" and hit.finish_reason == "stop"


WRITER = r"""
import sys
from librachem.llm.base import Completion
from librachem.llm.cache import CallCache
cache = CallCache(sys.argv[1])
tag = sys.argv[2]
i = 0
while True:
    k = f"{i % 50:064x}"
    # ~1 MB per entry so a kill often lands mid-write
    cache.put(k, {"i": i}, Completion(text=f"{k}|" + "x" * 1_000_000, finish_reason="stop"))
    i += 1
    if i == 20:
        print("started", flush=True)
"""


def test_sigkilled_concurrent_writers_leave_no_torn_entry(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), t],
                              cwd=REPO, stdout=subprocess.PIPE, text=True) for t in "ab"]
    try:
        for p in procs:
            assert p.stdout.readline().strip() == "started"
        time.sleep(0.3)
    finally:
        for p in procs:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
    assert all(p.returncode == -signal.SIGKILL for p in procs)
    entries = list(tmp_path.glob("??/*.json"))
    assert len(entries) >= 20  # at least the entries written before "started"
    cache = CallCache(tmp_path)
    for path in entries:
        data = json.loads(path.read_bytes())  # a torn file would not parse
        got = cache.get(path.stem)
        assert got is not None and got.text == f"{path.stem}|" + "x" * 1_000_000
        assert data["key"] == path.stem
    # leftovers of killed writes are hidden temp files, never entries, and can be cleaned
    tmps = list(tmp_path.glob("??/.tmp-*"))
    assert cache.clean_tmp(older_than_s=0) == len(tmps)
    assert len(cache) == len(entries)


class Counting:
    """Fake backend counting requests; replies 'r:<content>' or fails on 'FAIL'."""

    def __init__(self):
        self.seen: list[ChatRequest] = []

    def complete(self, requests):
        self.seen.extend(requests)
        return [Completion(text=None, finish_reason="error", error="boom")
                if "FAIL" in r.messages[-1]["content"]
                else Completion(text="r:" + r.messages[-1]["content"], finish_reason="stop",
                                prompt_tokens=3, completion_tokens=2)
                for r in requests]


def req(content: str, **kw) -> ChatRequest:
    return ChatRequest(messages=({"role": "user", "content": content},), model="m", **kw)


def test_hits_misses_dedup_and_failures_not_cached(tmp_path):
    backend = Counting()
    client = CachedClient(lambda: backend, backend_name="fake", revision="", cache=CallCache(tmp_path))
    out = client.complete([req("a"), req("b"), req("a"), req("FAIL")])
    assert [c.text for c in out] == ["r:a", "r:b", "r:a", None]
    assert out[3].error == "boom" and not out[3].ok
    assert len(backend.seen) == 3  # the duplicate 'a' went out once
    out2 = client.complete([req("b"), req("FAIL"), req("c")])
    assert [c.cached for c in out2] == [True, False, False]
    assert [r.messages[-1]["content"] for r in backend.seen[3:]] == ["FAIL", "c"]
    s = client.stats()
    assert (s["calls"], s["cache_hits"], s["cache_misses"], s["failures"]) == (7, 1, 5, 2)
    assert s["prompt_tokens"] == 3 * 3 and s["completion_tokens"] == 2 * 3  # failures carry none


def test_replay_only_serves_hits_without_backend_and_fails_on_miss(tmp_path):
    CachedClient(Counting, backend_name="fake", revision="", cache=CallCache(tmp_path)).complete(
        [req("a")])

    def no_backend():
        raise AssertionError("replay must not build the backend")

    replay = CachedClient(no_backend, backend_name="fake", revision="",
                          cache=CallCache(tmp_path), replay_only=True)
    assert replay.complete([req("a")])[0].text == "r:a"
    with pytest.raises(CacheMissError, match=r"replay-only: 1 of 2 distinct requests"):
        replay.complete([req("a"), req("new")])
    with pytest.raises(ConfigError, match="needs a cache directory"):
        CachedClient(no_backend, backend_name="fake", revision="", cache=None, replay_only=True)


def test_different_revision_misses(tmp_path):
    CachedClient(Counting, backend_name="fake", revision="v1", cache=CallCache(tmp_path)).complete(
        [req("a")])
    other = CachedClient(Counting, backend_name="fake", revision="v2", cache=CallCache(tmp_path),
                         replay_only=True)
    with pytest.raises(CacheMissError):
        other.complete([req("a")])


def test_redact_threshold_scans_before_storing_and_old_raw_entries_on_read(tmp_path):
    from librachem.common.hazard import REDACTION_MARK
    from librachem.llm.cache import CallCache, cache_key, sanitize
    from librachem.llm.factory import make_client

    procedure = "Add 50 mL of reagent A at 80 C and stir for 2 h. That is all."
    params = LLMParams(backend="fake", model="m", fake_script="tests.unit.test_llm_cache:_proc")
    plain = params.request([{"role": "user", "content": "q"}])
    scanned = params.request([{"role": "user", "content": "q"}], redact_threshold=3)
    assert cache_key(plain, backend="fake", revision="") != \
        cache_key(scanned, backend="fake", revision="")
    client = make_client(params, cache_dir=tmp_path / "c")
    (c,) = client.complete([scanned])
    assert REDACTION_MARK in c.text and "50 mL" not in c.text and c.hazard_score >= 3
    stored = [p.read_text() for p in (tmp_path / "c").glob("??/*.json")]
    assert len(stored) == 1 and "50 mL" not in stored[0]
    (again,) = make_client(params, cache_dir=tmp_path / "c", replay_only=True).complete([scanned])
    assert (again.text, again.hazard_score) == (c.text, c.hazard_score)
    # an entry written raw (before the scan existed) is redacted when read
    raw = Completion(text=procedure, finish_reason="stop")
    CallCache(tmp_path / "old").put("k" * 64, {}, raw)
    hit = CallCache(tmp_path / "old").get("k" * 64)
    assert "50 mL" not in sanitize(scanned, hit).text
    assert sanitize(plain, hit).text == procedure  # no threshold: unchanged


def _proc(request):
    return "Add 50 mL of reagent A at 80 C and stir for 2 h. That is all."
