"""Hazard scanner: flag and redact actionable procedure content in generated answers.

Every answer tied to an illegitimate compound (params ``generate.hazard.scope``) is scanned
for the signals that make a text *actionable* (the project safety policy: reagents with
quantities, conditions or step sequences):

========== ============================================================ ======
signal     what it matches                                              weight
========== ============================================================ ======
quantity   a number with an amount unit (``50 mL``, ``2 g``, ``0.5 mol``,    2
           ``five grams``; spelled-out numbers only with full-word units)
temperature a number with a temperature unit (``80 C``, ``80 °C``, ``eighty  2
           degrees``)
duration   a number with a time unit (``2 h``, ``30 minutes``)             1
step       a numbered, lettered or ordinal step (``1.``, ``b)``, ``Step 2``,    1
           ``Step two:``, ``First,``, ``Next:``), and each marker of a list
           written inline (``... steps: 1. Mix ... 2. Add ...``: markers 1
           and 2 in order, anywhere in a line)
materials  a reagent / materials list header (``Reagents:``, ``You will need``) 2
operation  a lab operation verb (reflux, distil, titrate, stir, heat ...)   1
========== ============================================================ ======

The score is the weighted count of hits. A text whose score reaches the threshold is
*flagged*; :func:`redact` removes every sentence or line that carries a hit and marks the
cut with :data:`REDACTION_MARK`. Pure functions on strings; the regexes are deliberately
broad (false positives only cost a redaction). Tests use placeholder text only.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

REDACTION_MARK = "[procedure details redacted]"

_NUM = r"(?<![\w.])\d+(?:[.,]\d+)?\s*"
# Spelled-out amounts ("five grams", "eighty degrees", "half a litre"): only before full-word
# units, so ordinary prose ("one thing", "two of them") does not match.
_WORDNUM = (r"\b(?:(?:one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|"
            r"fifteen|twenty|thirty|forty|fifty|sixty|seventy|eighty|ninety|hundred|"
            r"(?:a|one)\s+hundred|a\s+few|several|half\s+an?|a\s+quarter\s+of\s+an?)"
            r"(?:[\s-]+(?:one|two|three|four|five|six|seven|eight|nine))?)\s+")
_WORD_AMOUNT = (r"(?:grams?|milligrams?|kilograms?|millilit(?:er|re)s?|lit(?:er|re)s?|"
                r"moles?|millimoles?|equivalents?|drops?|teaspoons?|tablespoons?|cups?)")
_WORD_TEMP = r"(?:degrees?(?:\s+(?:celsius|fahrenheit|centigrade|kelvin))?|kelvin)"
_WORD_TIME = r"(?:hours?|minutes?|seconds?|days?)"
_ORDINAL = (r"(?:first|second|third|fourth|fifth|sixth|seventh|eighth|ninth|tenth|next|then|"
            r"finally|afterwards|after\s+that|lastly)")
_STEP_WORD = (r"(?:one|two|three|four|five|six|seven|eight|nine|ten|first|second|third|"
              r"fourth|fifth|sixth|seventh|eighth|ninth|tenth|[ivx]+)")
SIGNALS: dict[str, tuple[re.Pattern[str], int]] = {
    "quantity": (re.compile(
        r"(?:" + _NUM + r"(?:mg|g|kg|µg|ug|mL|ml|L|l|litres?|liters?|mol|mmol|M|mM|eq|equiv|"
        r"equivalents?|grams?|milligrams?|kilograms?|millilit(?:er|re)s?|moles?|drops?|"
        r"%\s*(?:w/w|w/v|v/v))|" + _WORDNUM + _WORD_AMOUNT + r")(?![\w])", re.I), 2),
    "temperature": (re.compile(
        r"(?:" + _NUM + r"(?:°\s*[CFK]?|º\s*[CF]?|degrees?(?:\s*(?:C|F|celsius|fahrenheit))?|"
        r"K(?![\w])|C(?![\w])|F(?![\w])|celsius|fahrenheit)|" + _WORDNUM + _WORD_TEMP + r")",
        re.I), 2),
    "duration": (re.compile(
        r"(?:(?<![\w.])\d+(?:[.,]\d+)?(?:\s+(?:h|s)|\s*(?:hrs?|hours?|min|mins|minutes?|sec|"
        r"seconds?|days?))|" + _WORDNUM + _WORD_TIME + r")(?![\w])", re.I), 1),
    "step": (re.compile(
        r"(?im)(?:^\s*(?:\d+[.)]|\(?[a-h]\)|[-*•]\s*step|step\s*\d+)\s*)|(?:\bstep\s*\d+\b)|"
        r"(?:\bstep\s+" + _STEP_WORD + r"\b\s*[:.)-])|"
        r"(?:^\s*(?:[-*•]\s*)?" + _ORDINAL + r"\s*[,:])"), 1),
    "materials": (re.compile(
        r"(?i)\b(?:reagents?|materials?|ingredients?|chemicals needed|you will need|"
        r"equipment|precursors?)\s*(?:needed|required)?\s*:"), 2),
    "operation": (re.compile(
        r"(?i)\b(?:reflux(?:ed|ing)?|distil+(?:ed|ing|ation)?|titrat(?:e|ed|ing)|"
        r"recrystalli[sz](?:e|ed|ing)|stir(?:red|ring)?|heat(?:ed|ing)?|evaporat(?:e|ed|ing)|"
        r"filter(?:ed|ing)?|quench(?:ed|ing)?|precipitat(?:e|ed|ing)|dissolv(?:e|ed|ing)|"
        r"add(?:ed|ing)? dropwise|neutrali[sz](?:e|ed|ing)|extract(?:ed|ing)? with)\b"), 1),
}

# A list marker inside a line ("... the steps: 1. Mix ... 2. Add ..."). One such marker is
# ordinary prose ("see note 1. It ..."); markers 1 and 2 in order make an inline list.
_INLINE_MARKER = re.compile(r"(?<![\w.])([1-9])[.)]\s+(?=[^\W\d_])")


def _inline_list(text: str) -> bool:
    """True when ``text`` holds an inline numbered list (a marker ``1.`` followed later by
    ``2.``); line-start markers count too (they are the ``step`` signal already)."""
    numbers = [m.group(1) for m in _INLINE_MARKER.finditer(text)]
    return "1" in numbers and "2" in numbers[numbers.index("1") + 1:]


def _inline_markers(text: str) -> int:
    """Markers of an inline list that do not start a line (those are counted by the
    ``step`` pattern)."""
    if not _inline_list(text):
        return 0
    return sum(1 for m in _INLINE_MARKER.finditer(text)
               if text[:m.start()].rstrip(" \t")[-1:] not in ("", "\n"))


# Sentence ends, but not the dot of a step number ("1. Mix ..." stays one piece).
_SPLIT = re.compile(r"(?<=[^\W\d_)][.!?])\s+|\n+")


@dataclass(frozen=True)
class ScanResult:
    """Outcome of :func:`scan`.

    Attributes:
        score: weighted number of hits (see the module table).
        hits: hit count per signal name (only signals that matched).
    """

    score: int
    hits: dict[str, int] = field(default_factory=dict)

    def flagged(self, threshold: int) -> bool:
        """True when the score reaches ``threshold`` (``threshold`` >= 1)."""
        return self.score >= threshold


def scan(text: str) -> ScanResult:
    """Score ``text`` for actionable procedure content (pure, no I/O)."""
    hits: dict[str, int] = {}
    score = 0
    for name, (pattern, weight) in SIGNALS.items():
        n = len(pattern.findall(text))
        if n:
            hits[name] = n
            score += weight * n
    inline = _inline_markers(text)
    if inline:
        hits["step"] = hits.get("step", 0) + inline
        score += SIGNALS["step"][1] * inline
    return ScanResult(score=score, hits=hits)


def _has_hit(piece: str) -> bool:
    return any(pattern.search(piece) for pattern, _ in SIGNALS.values())


def redact(text: str) -> str:
    """Remove every sentence or line of ``text`` that carries a hazard signal.

    Consecutive removed pieces become one :data:`REDACTION_MARK`. The result contains no
    signal hit (``scan(redact(t)).score == 0`` unless the mark itself is changed).

    Returns:
        The redacted text; ``REDACTION_MARK`` alone when every piece carried a hit.
    """
    out: list[str] = []
    inline = _inline_list(text)
    for piece in _SPLIT.split(text.strip()):
        piece = piece.strip()
        if not piece:
            continue
        if _has_hit(piece) or (inline and _INLINE_MARKER.search(piece)):
            if not out or out[-1] != REDACTION_MARK:
                out.append(REDACTION_MARK)
        else:
            out.append(piece)
    return " ".join(out) if out else REDACTION_MARK


def redacted_remainder(text: str) -> str:
    """The text left once redaction marks are removed (to judge if anything useful is left)."""
    return " ".join(text.replace(REDACTION_MARK, " ").split())
