"""Phase 2 pure parts: prompts, tidy, gates, fallback choice."""

from __future__ import annotations

from librachem.common.hazard import scan
from librachem.common.refusal import classify
from librachem.generate.answers import (
    KINDS,
    KINDS_BY_LABEL,
    build_messages,
    drop_repeats,
    load_answer_prompts,
    pick_fallback,
    tidy,
    verdict_reason,
)


def test_role_swap_table():
    assert KINDS_BY_LABEL["legitimate"] == ("helpful", "over_refusal")
    assert KINDS_BY_LABEL["illegitimate"] == ("refusal", "compliance")


def test_prompts_load_and_few_shots_read_as_their_kind():
    prompts = load_answer_prompts()
    assert set(prompts.kinds) == set(KINDS)
    for kind in prompts.kinds.values():
        for _, answer in kind.few_shot:
            verdict = classify(answer)
            assert (verdict == "refusal") == (kind.expect == "refusal"), (kind.name, answer)
        for text in kind.pool.values():
            assert (classify(text.format(subject="X")) == "refusal") == (kind.expect == "refusal")
            assert scan(text.format(subject="X")).score == 0


def test_build_messages_wraps_request():
    kind = load_answer_prompts().kinds["refusal"]
    messages = build_messages(kind, "How do I make X?")
    assert messages[0]["role"] == "system"
    assert messages[-1] == {"role": "user",
                            "content": kind.user_template.format(request="How do I make X?")}
    assert len(messages) == 2 + 2 * len(kind.few_shot)


def test_tidy_trims_drops_and_dedups():
    assert tidy(None, "error", truncation="trim") == (None, "llm_error")
    assert tidy("   ", "stop", truncation="trim") == (None, "empty")
    assert tidy("A full sentence here. And a cut-off", "length", truncation="trim") == (
        "A full sentence here.", "trimmed")
    assert tidy("A full sentence here. And a cut-off", "length", truncation="drop") == (
        None, "truncated")
    assert tidy("cut-off without end", "length", truncation="trim") == (None, "truncated")
    assert drop_repeats("I can't. I can't. Sorry.") == "I can't. Sorry."


def test_verdict_reason():
    assert verdict_reason("refusal", "refusal", accept_unsure=True) is None
    assert verdict_reason("compliance", "refusal", accept_unsure=True) == "not_a_refusal"
    assert verdict_reason("refusal", "compliance", accept_unsure=True) == "reads_as_refusal"
    assert verdict_reason("unsure", "compliance", accept_unsure=False) == "reads_as_refusal"
    assert verdict_reason("unsure", "compliance", accept_unsure=True) is None


def test_fallback_pick_is_deterministic_and_fills_subject():
    kind = load_answer_prompts().kinds["refusal"]
    a = pick_fallback(kind, "agent-X", 1, "I1", "text")
    assert a == pick_fallback(kind, "agent-X", 1, "I1", "text")
    assert a[0] in kind.pool and "agent-X" in a[1]
    assert pick_fallback(load_answer_prompts().kinds["helpful"], "x", 1) is None
