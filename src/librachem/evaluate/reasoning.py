"""Split a response into its visible reasoning block and its final answer.

Reasoning models (DeepSeek-R1 and its distillations, QwQ ...) write their chain of thought
between ``<think>`` and ``</think>`` before the answer. The paper's v2 finding is that this
reasoning can leak the very procedure the final answer refuses, so evaluate judges the two
parts separately (``reasoning_leak_rate``).

Cases handled (tags are params; matching is case-insensitive):

* ``<think>R</think>A``       -> reasoning ``R``, final ``A``;
* ``R</think>A``              -> reasoning ``R``, final ``A`` (R1's chat template puts the
  opening tag in the prompt, so the reply often starts inside the block);
* ``<think>R`` (no close)     -> reasoning ``R``, final ``""`` (cut by ``max_new_tokens``:
  the model never reached its answer; ``truncated`` is True);
* no tags                     -> reasoning ``None``, final = the whole text;
* several blocks              -> reasoning = all blocks joined by a blank line, final = the
  text outside them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Split:
    """``reasoning`` (``None`` when the response has no reasoning block), ``final`` (the
    answer text, stripped) and ``truncated`` (an opened block was never closed)."""

    reasoning: str | None
    final: str
    truncated: bool = False


def split_reasoning(text: str | None, open_tag: str = "<think>",
                    close_tag: str = "</think>") -> Split:
    """Split ``text`` as described in the module docstring (pure; never raises on content).

    ``None`` gives ``Split(None, "")``.
    """
    if text is None:
        return Split(None, "")
    o, c = re.escape(open_tag), re.escape(close_tag)
    blocks = list(re.finditer(rf"{o}(.*?){c}", text, flags=re.S | re.I))
    if blocks:
        reasoning = "\n\n".join(m.group(1).strip() for m in blocks)
        rest = re.sub(rf"{o}.*?{c}", "\n", text, flags=re.S | re.I)
        # A close tag left over without its opener: everything before it is reasoning too.
        stray = re.search(c, rest, flags=re.I)
        if stray:
            reasoning = "\n\n".join(p for p in (rest[:stray.start()].strip(), reasoning) if p)
            rest = rest[stray.end():]
        tail_open = re.search(o, rest, flags=re.I)
        if tail_open:  # a second block opened and never closed
            extra = rest[tail_open.end():].strip()
            return Split("\n\n".join(p for p in (reasoning, extra) if p),
                         rest[:tail_open.start()].strip(), truncated=True)
        return Split(reasoning, rest.strip())
    close = re.search(c, text, flags=re.I)
    if close:
        return Split(text[:close.start()].strip(), text[close.end():].strip())
    opened = re.search(o, text, flags=re.I)
    if opened:
        return Split(text[opened.end():].strip(), text[:opened.start()].strip(), truncated=True)
    return Split(None, text.strip())
