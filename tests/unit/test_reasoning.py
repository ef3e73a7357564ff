"""The reasoning split on literal strings."""

from __future__ import annotations

import pytest

from librachem.evaluate.reasoning import Split, split_reasoning


@pytest.mark.parametrize(("text", "want"), [
    ("<think>plan</think>\nI can't help.", Split("plan", "I can't help.")),
    ("plan</think>answer", Split("plan", "answer")),                       # opener in the prompt
    ("<think>plan that never ends", Split("plan that never ends", "", truncated=True)),
    ("plain answer", Split(None, "plain answer")),
    ("<THINK>a</Think>b<think>c</think>d", Split("a\n\nc", "b\nd")),
    ("<think>a</think>b<think>c", Split("a\n\nc", "b", truncated=True)),
    (None, Split(None, "")),
    ("", Split(None, "")),
])
def test_split(text, want):
    assert split_reasoning(text) == want


def test_custom_tags():
    assert split_reasoning("[R]x[/R]y", "[R]", "[/R]") == Split("x", "y")
    assert split_reasoning("<think>x</think>y", "[R]", "[/R]") == Split(None, "<think>x</think>y")
