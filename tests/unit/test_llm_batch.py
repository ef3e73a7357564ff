"""The ``openai_batch`` backend against a local mock of /v1/files and /v1/batches
(tests/batch_server.py): unordered results, persisted batches resumed after a kill (no
second batch, no second payment), splitting at the file limits, expired / failed /
cancelled batches and per-request errors recorded as failures, the batch discount, and
cache keys identical to the online ``openai`` backend (a replay cannot tell them apart)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from librachem.common.errors import ConfigError
from librachem.llm.batch_api import (
    STATE_DIR,
    BatchClient,
    chat_body,
    custom_id,
    split_lines,
)
from librachem.llm.batching import complete_all
from librachem.llm.factory import make_client
from librachem.llm.config import LLMParams
from librachem.llm.pricing import load_prices
from tests.batch_server import MockBatchServer

KEY = "sk-test-batch-0123456789"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def api_key(monkeypatch):
    monkeypatch.setenv("LIBRACHEM_TEST_KEY", KEY)


@pytest.fixture
def mock():
    with MockBatchServer() as srv:
        yield srv


def params(base_url: str, **kw) -> LLMParams:
    base = {"backend": "openai_batch", "model": "gpt-4o-mini", "base_url": base_url,
            "api_key_env": "LIBRACHEM_TEST_KEY", "max_retries": 1, "timeout_s": 10,
            "batch_poll_max_s": 0.01}
    base.update(kw)
    return LLMParams(**base)


def ask(p: LLMParams, *contents: str):
    return [p.request([{"role": "user", "content": c}]) for c in contents]


PROMPTS = [f"question {i} about aspirin" for i in range(7)]


def states(cache: Path) -> list[dict]:
    return [json.loads(f.read_text()) for f in sorted((cache / STATE_DIR).glob("*.json"))]


def test_matches_unordered_results(mock, tmp_path):
    p = params(mock.base_url)
    client = make_client(p, cache_dir=tmp_path)
    reqs = ask(p, *PROMPTS, PROMPTS[2])  # a duplicate is sent once
    out = client.complete(reqs)
    # the mock writes output lines in reverse order; every answer must land on its request
    assert [c.text for c in out] == [f"echo: {q}" for q in PROMPTS + [PROMPTS[2]]]
    assert all(c.ok and c.finish_reason == "stop" for c in out)
    assert mock.state.batches_created == 1 and mock.state.answered == len(PROMPTS)
    stats = client.stats()
    assert stats["batches_submitted"] == 1 and stats["batches_completed"] == 1
    assert stats["cache_misses"] == len(PROMPTS) and stats["failures"] == 0
    assert states(tmp_path) == []  # results stored: the batch state is forgotten
    again = make_client(p, cache_dir=tmp_path, replay_only=True).complete(reqs)
    assert [c.text for c in again] == [c.text for c in out] and all(c.cached for c in again)
    assert mock.state.batches_created == 1


def test_same_cache_keys_as_online_backend(mock, tmp_path):
    from tests.llm_server import RunningServer

    batch_p = params(mock.base_url)
    make_client(batch_p, cache_dir=tmp_path / "batch").complete(ask(batch_p, *PROMPTS))
    with RunningServer() as online:
        online_p = params(online.base_url, backend="openai")
        make_client(online_p, cache_dir=tmp_path / "online").complete(ask(online_p, *PROMPTS))

    def entries(root: Path) -> dict[str, dict]:
        out = {}
        for f in root.glob("??/*.json"):
            e = json.loads(f.read_text())
            c = e["completion"]
            out[e["key"]] = {k: c[k] for k in ("text", "finish_reason", "prompt_tokens",
                                                "completion_tokens", "model_id")}
        return out

    batch, online = entries(tmp_path / "batch"), entries(tmp_path / "online")
    assert len(batch) == len(PROMPTS) and batch == online
    # a replay-only run of the online backend is served from the batch run's cache
    replay = make_client(params("http://127.0.0.1:9/v1", backend="openai"),
                         cache_dir=tmp_path / "batch", replay_only=True)
    out = replay.complete(ask(batch_p, *PROMPTS))
    assert all(c.cached for c in out) and out[0].text == f"echo: {PROMPTS[0]}"


def _kill_after_submit(mock, cache: Path) -> None:
    """Run the backend in a child process, SIGKILL it once its batch exists (held
    in_progress by the mock), i.e. between submit and download."""
    script = (
        "import sys; from librachem.llm.factory import make_client; "
        "from librachem.llm.config import LLMParams; "
        f"p = LLMParams(backend='openai_batch', model='gpt-4o-mini', base_url={mock.base_url!r}, "
        "api_key_env='LIBRACHEM_TEST_KEY', batch_poll_max_s=0.01); "
        f"c = make_client(p, cache_dir={str(cache)!r}); "
        f"c.complete([p.request([{{'role': 'user', 'content': q}}]) for q in {PROMPTS!r}])")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    proc = subprocess.Popen([sys.executable, "-c", script], env=env)
    try:
        deadline = time.monotonic() + 60
        while mock.state.retrieves < 3:  # submitted and polled: now in the middle of waiting
            assert proc.poll() is None, "the child exited before it was killed"
            assert time.monotonic() < deadline, "the child never submitted its batch"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()


def test_resumes_persisted_batch_without_resubmitting(mock, tmp_path):
    mock.state.hold = True
    _kill_after_submit(mock, tmp_path)
    assert mock.state.batches_created == 1 and mock.state.files_created == 1
    [st] = states(tmp_path)
    assert st["batch_id"] and not st["collected"] and len(st["ids"]) == len(PROMPTS)
    assert len(list(tmp_path.glob("??/*.json"))) == 0  # nothing downloaded yet

    mock.state.hold = False
    p = params(mock.base_url)
    client = make_client(p, cache_dir=tmp_path)
    out = client.complete(ask(p, *PROMPTS))
    assert [c.text for c in out] == [f"echo: {q}" for q in PROMPTS]
    assert mock.state.batches_created == 1 and mock.state.files_created == 1  # paid once
    stats = client.stats()
    assert stats["batches_resumed"] == 1 and stats["batches_submitted"] == 0
    assert states(tmp_path) == []


def test_resumes_batch_created_but_not_recorded(mock, tmp_path, monkeypatch):
    """Killed between batches.create and saving its id: found again by its metadata."""
    mock.state.hold = True
    p = params(mock.base_url)

    def killed(self, active):
        raise KeyboardInterrupt

    monkeypatch.setattr(BatchClient, "_poll", killed)
    with pytest.raises(KeyboardInterrupt):
        make_client(p, cache_dir=tmp_path).complete(ask(p, *PROMPTS))
    monkeypatch.undo()
    monkeypatch.setenv("LIBRACHEM_TEST_KEY", KEY)
    [path] = (tmp_path / STATE_DIR).glob("*.json")
    st = json.loads(path.read_text())
    st["batch_id"] = None  # as if the process died before the second state write
    path.write_text(json.dumps(st))
    mock.state.hold = False
    client = make_client(p, cache_dir=tmp_path)
    out = client.complete(ask(p, *PROMPTS))
    assert all(c.ok for c in out) and mock.state.batches_created == 1
    assert client.stats()["batches_resumed"] == 1


def test_splits_at_request_and_byte_limits(tmp_path):
    lines = [(str(i), b"x" * 10) for i in range(5)] + [("big", b"y" * 100)]
    parts, too_large = split_lines(lines, max_requests=2, max_bytes=25)
    assert [[cid for cid, _ in part] for part in parts] == [["0", "1"], ["2", "3"], ["4"]]
    assert too_large == ["big"]


def test_split_into_several_batches(mock, tmp_path):
    mock.state.max_requests = 3  # the mock refuses bigger files
    p = params(mock.base_url)
    client = make_client(p, cache_dir=tmp_path)
    client.backend.max_requests = 3
    out = client.complete(ask(p, *PROMPTS))
    assert [c.text for c in out] == [f"echo: {q}" for q in PROMPTS]
    assert mock.state.batches_created == 3  # 7 requests, at most 3 per batch
    assert client.stats()["batches_completed"] == 3


@pytest.mark.parametrize("fate", ["expired", "cancelled"])
def test_partial_batch_failures_counted_and_retried(mock, tmp_path, fate):
    mock.state.fates = [fate]
    p = params(mock.base_url)
    client = make_client(p, cache_dir=tmp_path)
    out = client.complete(ask(p, *PROMPTS))
    ok = [c for c in out if c.ok]
    bad = [c for c in out if not c.ok]
    assert len(ok) == len(PROMPTS) // 2 and len(bad) == len(PROMPTS) - len(ok)
    assert all(f"batch_{fate}" in c.error and c.finish_reason == "error" for c in bad)
    stats = client.stats()
    assert stats[f"batches_{fate}"] == 1 and stats["batch_request_errors"] == len(bad)
    assert stats["failures"] == len(bad)  # what the stage gates read
    # a rerun pays only for the failed ones, in a new batch; the answered ones are cached
    rerun = make_client(p, cache_dir=tmp_path)
    again = rerun.complete(ask(p, *PROMPTS))
    assert all(c.ok for c in again) and mock.state.batches_created == 2
    assert rerun.stats()["cache_hits"] == len(ok) and rerun.stats()["batches_resumed"] == 0


def test_failed_batch_and_request_errors(mock, tmp_path):
    mock.state.fates = ["failed"]
    p = params(mock.base_url)
    client = make_client(p, cache_dir=tmp_path)
    out = client.complete(ask(p, "one", "two"))
    assert all(not c.ok and "failed validation" in c.error for c in out)
    assert client.stats()["batches_failed"] == 1 and client.stats()["failures"] == 2

    client = make_client(p, cache_dir=tmp_path)
    out = client.complete(ask(p, "fine", "[batch400] broken"))
    assert out[0].ok and not out[1].ok and "HTTP 400: mock: invalid max_tokens" in out[1].error
    assert client.stats()["batch_request_errors"] == 1


def test_batch_discount_in_cost(mock, tmp_path):
    p = params(mock.base_url)
    client = make_client(p, cache_dir=tmp_path)
    out = client.complete(ask(p, "how is aspirin made in school labs"))
    full = load_prices().cost("gpt-4o-mini", out[0].prompt_tokens, out[0].completion_tokens)
    assert full and client.stats()["cost_usd"] == pytest.approx(full * 0.5)


def test_chunked_stage_requests_go_in_one_batch(mock, tmp_path):
    p = params(mock.base_url)
    client = make_client(p, cache_dir=tmp_path)
    done = complete_all(client, ask(p, *PROMPTS), chunk_size=2, desc="t")
    assert len(done) == len(PROMPTS) and mock.state.batches_created == 1


def test_needs_cache_dir_and_custom_ids():
    with pytest.raises(ConfigError, match="openai_batch needs a call-cache"):
        make_client(params("http://x/v1"), cache_dir=None)
    p = params("http://x/v1")
    a, b = ask(p, "same", "same")
    assert custom_id(chat_body(a)) == custom_id(chat_body(b))
    assert custom_id(chat_body(a)) != custom_id(chat_body(ask(p, "other")[0]))


def test_model_alias_keeps_cache_keys_path_independent(tmp_path):
    def key(model: str, alias: str | None) -> str:
        p = LLMParams(backend="openai", model=model, model_alias=alias)
        return make_client(p, cache_dir=tmp_path).key(p.request([{"role": "user",
                                                                   "content": "hi"}]))

    a = key("/home/ann/models/SmolLM2.gguf", "smollm2-135m-q4")
    b = key("/srv/bob/SmolLM2.gguf", "smollm2-135m-q4")
    assert a == b
    assert key("/home/ann/models/SmolLM2.gguf", None) != key("/srv/bob/SmolLM2.gguf", None)
    assert key("smollm2-135m-q4", None) == a  # the alias is what the key holds


def test_generate_stage_through_the_batch_api(mock, tmp_path):
    """The generate stage on openai_batch: one batch for all its chunks, batch counters in
    its metrics, and a replay-only rerun on the online backend gives identical shards."""
    import yaml
    from click.testing import CliRunner

    from librachem.common.shards import read_manifest
    from librachem.llm.base import ChatRequest
    from stages.generate import main
    from tests.fakes import generator, tiny_seeds

    def reply(body: dict) -> str:
        text = generator(ChatRequest(messages=body["messages"], model=body["model"]))
        assert isinstance(text, str)
        return text

    mock.state.reply = reply
    seeds = tiny_seeds(tmp_path / "seeds.parquet", markers=("HAZARD",))

    def run(llm: dict, *extra: str):
        params = tmp_path / "params.yaml"
        params.write_text(yaml.safe_dump({"generate": {
            "generator": llm, "max_requests": {"train": 12, "test": 4}, "chunk_size": 8}}))
        return CliRunner().invoke(main, [
            "--params", str(params), "--seeds", str(seeds), "--out", str(tmp_path / "triplets"),
            "--metrics", str(tmp_path / "data.json"), "--cache-dir", str(tmp_path / "cache"),
            "--base-model-dir", str(tmp_path / "none"), *extra])

    llm = {"backend": "openai_batch", "model": "gpt-4o-mini", "base_url": mock.base_url,
           "api_key_env": "LIBRACHEM_TEST_KEY", "batch_poll_max_s": 0.01}
    result = run(llm)
    assert result.exit_code == 0, result.output
    metrics = json.loads((tmp_path / "data.json").read_text())["llm"]
    assert mock.state.batches_created == 1  # 32 requests in chunks of 8: still one batch
    assert metrics["cache_misses"] == 32 and metrics["batches_completed"] == 1
    assert metrics["batches_submitted"] == 1 and metrics["failures"] == 0
    assert metrics["cost_usd"] > 0
    first = read_manifest(tmp_path / "triplets")["shards"]
    result = run({**llm, "backend": "openai", "base_url": "http://127.0.0.1:9/v1"},
                 "--replay-only")
    assert result.exit_code == 0, result.output
    assert read_manifest(tmp_path / "triplets")["shards"] == first
