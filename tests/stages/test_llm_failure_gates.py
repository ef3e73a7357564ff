"""Stages that lose LLM calls fail and say why (issue 16 point 3, issue 17 point 2)."""

from __future__ import annotations

import hashlib
import json
import socket

import yaml
from click.testing import CliRunner

from librachem.llm.base import ChatRequest
from stages.augment import main as augment_main
from stages.generate import main as generate_main
from tests.fakes import generator, tiny_seeds
from tests.llm_server import RunningServer

FAKE = {"backend": "fake", "fake_script": "tests.fakes:generator"}
#: the same revision: a fake's cache key otherwise includes its script's name
FLAKY = {"backend": "fake", "fake_script": "tests.stages.test_llm_failure_gates:flaky",
         "revision": "rephraser-v1"}
FIXED = FAKE | {"revision": "rephraser-v1"}


def flaky(request: ChatRequest) -> str | Exception:
    """Half of the calls fail (by a hash of the request), the rest answer as the fake."""
    digest = hashlib.sha256(json.dumps(request.messages).encode()).digest()
    if digest[0] % 2:
        return ConnectionError("rephraser dropped the connection")
    return generator(request)


def _generate(tmp_path, section, *extra):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"generate": section}))
    seeds = tiny_seeds(tmp_path / "seeds.parquet")
    return CliRunner().invoke(generate_main, [
        "--params", str(params), "--seeds", str(seeds), "--out", str(tmp_path / "triplets"),
        "--metrics", str(tmp_path / "data.json"), "--cache-dir", str(tmp_path / "cache"),
        "--base-model-dir", str(tmp_path / "none"), *extra])


def _augment(tmp_path, rephraser):
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "generate": {"generator": FAKE},
        "augment": {"rephraser": rephraser, "near_dup_threshold": 0.99,
                    "max_variant_drop_rate": 1.0}}))  # only the LLM gate may stop it
    return CliRunner().invoke(augment_main, [
        "--params", str(params), "--triplets", str(tmp_path / "triplets"),
        "--out", str(tmp_path / "augmented"), "--test-out", str(tmp_path / "rtest"),
        "--metrics", str(tmp_path / "augment.json"), "--cache-dir", str(tmp_path / "cache")])


def test_augment_with_more_failed_calls_than_its_gate_fails_and_reruns_only_those(tmp_path):
    assert _generate(tmp_path, {"generator": FAKE}).exit_code == 0
    ok = _augment(tmp_path, FIXED)
    assert ok.exit_code == 0, ok.output
    asked = json.loads((tmp_path / "augment.json").read_text())["llm"]["calls"]
    (tmp_path / "cache").rename(tmp_path / "cache-good")  # a cold cache for the flaky run
    assert _generate(tmp_path, {"generator": FAKE}).exit_code == 0

    bad = _augment(tmp_path, FLAKY)
    assert bad.exit_code != 0
    assert "augment.max_llm_failure_rate" in bad.output and "other" in bad.output
    assert "rephraser dropped the connection" in bad.output  # the cause, not only a count
    assert not (tmp_path / "augmented" / "_manifest.json").exists()  # stale outputs gone
    metrics = json.loads((tmp_path / "augment.json").read_text())
    failed = metrics["llm_failures"]["failed_by_cause"]["other"]
    assert failed == metrics["llm"]["failures"] and 0.2 * asked < failed < asked

    # a rerun with a working rephraser sends only the calls that failed
    fixed = _augment(tmp_path, FIXED)
    assert fixed.exit_code == 0, fixed.output
    llm = json.loads((tmp_path / "augment.json").read_text())["llm"]
    assert llm["cache_misses"] == failed and llm["cache_hits"] == asked - failed


def test_generate_fails_at_start_naming_an_unreachable_endpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("LIBRACHEM_TEST_KEY", "x")
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    url = f"http://127.0.0.1:{sock.getsockname()[1]}/v1"
    sock.close()
    result = _generate(tmp_path, {"generator": {
        "backend": "openai", "model": "m", "base_url": url, "api_key_env": "LIBRACHEM_TEST_KEY",
        "max_retries": 5, "backoff_initial_s": 2.0}})
    assert result.exit_code == 1
    assert f"the LLM endpoint {url} is unreachable" in result.output
    assert "ConnectionRefusedError" in result.output or "refused" in result.output.lower()


def test_generate_metrics_show_attempts_and_retries(tmp_path, monkeypatch):
    """The first attempt of every user prompt gets HTTP 500 (the server counts by first
    user message; chosen and rejected share it): all succeed on a retry, and the metrics
    say so (before: ``failures: 0`` and nothing about the extra attempts)."""
    monkeypatch.setenv("LIBRACHEM_TEST_KEY", "x")
    with RunningServer(fail_first=1) as srv:
        result = _generate(tmp_path, {"generator": {
            "backend": "openai", "model": "m", "base_url": srv.base_url,
            "api_key_env": "LIBRACHEM_TEST_KEY", "backoff_initial_s": 0.01,
            "backoff_max_s": 0.02}, "max_drop_rate": 1.0})
        served = srv.stats()["requests"]
    metrics = json.loads((tmp_path / "data.json").read_text())
    llm = metrics["llm"]
    assert llm["failures"] == 0 and llm["sent"] > 0
    assert llm["attempts"] == served and llm["retries"] == served - llm["sent"] > 0
    assert metrics["llm_failures"]["retries_by_cause"] == {"http_5xx": llm["retries"]}
    assert "HTTP 500" in metrics["llm_failures"]["last_retry_error"]["http_5xx"]
    assert result.exit_code in (0, 1)  # echo answers may trip other gates; metrics are first
