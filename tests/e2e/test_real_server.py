"""A real OpenAI-compatible server end to end (issue 17.4): llama-cpp-python serving the
embedded GGUF; generate, augment and evaluate (a baseline and the LLM judge) through the
``openai`` backend, then a rerun with the server stopped that must send zero requests and
write byte-identical shards. Runs ``bench/real_server.py``.

Opt-in (minutes on 2 cores, needs ``llama-cpp-python[server]==0.3.36``, built from source):
``LIBRACHEM_REALSERVER=1 pytest -m realserver tests/e2e/test_real_server.py``.
"""

from __future__ import annotations

import importlib.util
import os

import pytest

pytestmark = [pytest.mark.realserver, pytest.mark.slow,
              pytest.mark.skipif(os.environ.get("LIBRACHEM_REALSERVER") != "1",
                                 reason="opt-in: set LIBRACHEM_REALSERVER=1"),
              pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                 reason="needs llama-cpp-python[server]==0.3.36")]


def test_real_server_end_to_end(tmp_path):
    from bench.real_server import main

    report = main(["--keep", str(tmp_path / "work")])
    stages = report["stages"]
    assert set(stages) == {"generate", "augment", "evaluate"}
    for name, rec in stages.items():
        assert rec["requests_sent"] > 0, name  # the first run did talk to the server
        assert rec["rerun_requests_sent"] == 0 and rec["rerun_cache_hits"] == rec["calls"], name
        assert rec["rerun_identical_outputs"], name
    assert report["server_chat_requests"] == sum(r["requests_sent"] for r in stages.values())
    assert report["ok"]
