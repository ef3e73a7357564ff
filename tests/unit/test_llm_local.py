"""LocalClient on a tiny random Llama with the SmolLM2 tokenizer fixture (no download)."""

from __future__ import annotations

import json

import pytest

from librachem.common.errors import ConfigError
from librachem.llm.factory import make_client
from librachem.llm.config import LLMParams
from librachem.llm.local import LocalClient
from librachem.llm.models import PROVENANCE_FILE, resolve_model
from tests.tiny_model import save_tiny_base, tiny_model, tiny_tokenizer

QUESTIONS = ["What is the molar mass of water?", "Name a noble gas.",
             "Explain, in one sentence, why ice floats on liquid water at room pressure.",
             "What is NaCl?", "Define pH."]


@pytest.fixture(scope="module")
def pair():
    return tiny_model(seed=0), tiny_tokenizer()


def reqs(p: LLMParams, **kw):
    return [p.request([{"role": "user", "content": q}], **kw) for q in QUESTIONS]


def test_batched_greedy_equals_one_at_a_time(pair):
    model, tok = pair
    side = tok.padding_side
    p = LLMParams(backend="local", model="tiny", max_tokens=6)
    batched = LocalClient.from_model(model, tok, batch_size=4).complete(reqs(p))
    single = LocalClient.from_model(model, tok, batch_size=1).complete(reqs(p))
    assert [c.text for c in batched] == [c.text for c in single]
    assert tok.padding_side == side  # caller's tokenizer untouched
    for q, c in zip(QUESTIONS, batched):
        prompt = tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                         add_generation_prompt=True)
        assert prompt.endswith("<|im_start|>assistant\n")
        assert c.prompt_tokens == len(tok(prompt, add_special_tokens=False)["input_ids"])
        assert c.finish_reason in {"stop", "length"} and 1 <= c.completion_tokens <= 6


def test_stops_at_eos(pair):
    model, tok = pair
    p = LLMParams(backend="local", model="tiny", max_tokens=6)
    client = LocalClient.from_model(model, tok, batch_size=2)
    import torch

    prompt = client.render(reqs(p)[0])
    ids = tok(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        first_id = int(model(ids).logits[0, -1].argmax())  # the first greedy token
    assert client.complete(reqs(p)[:1])[0].completion_tokens > 1
    # Pretend the first generated token is EOS: generation must stop right there.
    client.eos_id = first_id
    stopped = client.complete(reqs(p)[:1])[0]
    assert (stopped.finish_reason, stopped.completion_tokens) == ("stop", 1)


def test_seeded_sampling_is_reproducible(pair):
    model, tok = pair
    p = LLMParams(backend="local", model="tiny", max_tokens=8, temperature=1.0)
    client = LocalClient.from_model(model, tok, batch_size=8)
    a = [c.text for c in client.complete(reqs(p, seed=1))]
    b = [c.text for c in client.complete(reqs(p, seed=1))]
    c = [c.text for c in client.complete(reqs(p, seed=2))]
    assert a == b and a != c


def test_make_client_local_folder_cache_and_revision(tmp_path):
    folder = save_tiny_base(tmp_path / "base")
    p = LLMParams(backend="local", model="smollm2-135m-instruct", max_tokens=4, batch_size=2)
    client = make_client(p, cache_dir=tmp_path / "cache", local_model_dir=folder)
    assert client.revision.startswith("sha256:")  # no provenance file: hash of the files
    out = client.complete(reqs(p)[:3])
    assert all(c.ok and c.model_id == "smollm2-135m-instruct" for c in out)
    replay = make_client(p, cache_dir=tmp_path / "cache", local_model_dir=folder,
                         replay_only=True)
    assert [c.text for c in replay.complete(reqs(p)[:3])] == [c.text for c in out]
    assert replay._backend is None  # replay never loaded the model
    (folder / PROVENANCE_FILE).write_text(json.dumps({"revision": "gguf-sha256:abc"}))
    assert resolve_model(p.model, revision=None, local_model_dir=folder).revision == "gguf-sha256:abc"


def test_alias_without_model_folder_is_a_config_error(tmp_path):
    p = LLMParams(backend="local")
    with pytest.raises(ConfigError, match="dvc repro base_model"):
        make_client(p, cache_dir=None, local_model_dir=tmp_path / "missing")


@pytest.mark.parametrize("content", ['["a list"]', "not json", '{"no_revision": 1}', None])
def test_folder_revision_errors_are_config_errors(tmp_path, content):
    from librachem.common.errors import ConfigError
    from librachem.llm.models import PROVENANCE_FILE, folder_revision

    folder = tmp_path / "model"
    if content is not None:
        folder.mkdir()
        (folder / PROVENANCE_FILE).write_text(content)
    with pytest.raises(ConfigError, match="unreadable|no such model folder"):
        folder_revision(folder)
