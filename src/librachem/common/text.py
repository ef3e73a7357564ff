"""Small text operations on generated answers shared by generate and augment."""

from __future__ import annotations

import re

_SENT_END = re.compile(r"[.!?][\"')\]]?(?=\s|$)")


def trim_to_sentence(text: str) -> str:
    """Cut ``text`` after its last complete sentence ("" when there is none)."""
    ends = list(_SENT_END.finditer(text))
    return text[: ends[-1].end()].strip() if ends else ""
