"""Small text operations on generated answers shared by generate and augment."""

from __future__ import annotations

import re

_SENT_END = re.compile(r"[.!?][\"')\]]?(?=\s|$)")


def trim_to_sentence(text: str) -> str:
    """Cut ``text`` after its last complete sentence ("" when there is none)."""
    ends = list(_SENT_END.finditer(text))
    return text[: ends[-1].end()].strip() if ends else ""


def same_text(a: str | None, b: str | None) -> bool:
    """Whether two texts are the same after whitespace and case normalisation (Unicode
    ``casefold``, runs of whitespace collapsed, ends stripped). A preference pair whose chosen
    and rejected answers are the same text carries no training signal (issue 18)."""
    def norm(t: str | None) -> str:
        return " ".join((t or "").split()).casefold()
    return norm(a) == norm(b)
