"""Example failures for the report, taken only from the stored responses
(``data/eval/responses.parquet``, column ``final_answer``: the answer without any reasoning
block, already redacted by evaluate where it scored over ``evaluate.judge.redact_threshold``).

Failure types (judged chemistry prompts; XSTest rows are left out):

- over-refusal: a legitimate prompt the model refused (``label == legitimate``, ``refused``);
- harmful compliance: an illegitimate prompt the model answered (``label == illegitimate``,
  not ``refused``), whether or not the answer is itself hazardous.

Before any text enters the report, prompt and answer are re-scanned with
:func:`librachem.common.hazard.scan`; a row scoring ``hazard_threshold`` or more is left out
and counted. An answer to an illegitimate prompt that still carries any hazard signal (a
step list, an amount, a lab operation; score above 0 but under the threshold) is shown with
those sentences redacted (:func:`librachem.common.hazard.redact`; inline numbered lists,
``... steps: 1. ... 2. ...``, are step signals too), so a page meant for sharing never
carries a procedure-shaped answer about an illegitimate compound.
"""

from __future__ import annotations

import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from librachem.common.errors import DataError, SchemaError
from librachem.common.hazard import redact, scan
from librachem.report.sections import plural

FAILURES = {
    "over_refusal": ("Over-refusal", "refused a legitimate prompt", "legitimate", True),
    "harmful_compliance": ("Harmful compliance", "answered an illegitimate prompt",
                           "illegitimate", False),
}
COLUMNS = ("model", "row_id", "source", "prompt", "label", "intent", "mode", "category",
           "final_answer", "refused", "redacted")
_MD_SPECIAL = re.compile(r"([\\`*_\[\]#|~])")
@dataclass
class FailureExamples:
    """Examples of one failure type for one model.

    Attributes:
        total: responses of this failure type.
        shown: the chosen rows (``prompt``, ``answer`` already truncated and escaped, plus
            ``intent``, ``category``, ``mode``, ``source``, ``redacted``).
        withheld: rows the hazard scanner kept out of the report.
        redacted_here: shown answers whose hazard-signal sentences this report redacted.
    """

    total: int
    shown: list[dict[str, Any]] = field(default_factory=list)
    withheld: int = 0
    redacted_here: int = 0


def read_responses(path: Path) -> Any:
    """The response table's columns the report needs (a polars DataFrame).

    Raises:
        DataError: the file is missing or unreadable; SchemaError: a column is missing.
    """
    import polars as pl

    if not path.is_file():
        raise DataError(f"{path} not found: run the evaluate stage first")
    try:
        frame = pl.read_parquet(path)
    except Exception as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise SchemaError(f"{path} lacks columns {missing}; it was not written by evaluate")
    return frame.select(COLUMNS)


def shorten(text: str | None, limit: int) -> str:
    """``text`` on one line, cut at a word boundary to at most ``limit`` characters (an
    ellipsis marks a cut)."""
    flat = " ".join((text or "").split())
    if len(flat) <= limit:
        return flat
    cut = flat[:limit - 1].rsplit(" ", 1)[0] or flat[:limit - 1]
    return cut + "…"


def escape_markdown(text: str) -> str:
    """Text shown literally by GitHub Markdown: HTML escaped, Markdown syntax characters
    backslash-escaped."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(text, quote=False))


def pick_examples(responses: Any, model: str, kind: str, k: int, limit: int,
                  hazard_threshold: int) -> FailureExamples:
    """Up to ``k`` examples of failure ``kind`` (a key of :data:`FAILURES`) by ``model``.

    Deterministic: rows in ``row_id`` order (content hashes, so no topic comes first by
    design), one per compound category before any category repeats. A row whose prompt or
    answer scores ``hazard_threshold`` or more is withheld (counted). Texts are truncated to
    ``limit`` characters and escaped for Markdown.
    """
    import polars as pl

    _, _, label, refused = FAILURES[kind]
    rows = (responses.filter((pl.col("model") == model) & (pl.col("source") != "xstest")
                             & (pl.col("label") == label) & (pl.col("refused") == refused))
            .sort("row_id", "source").to_dicts())
    out = FailureExamples(total=len(rows))
    safe = []
    for row in rows:
        if (scan(row["prompt"] or "").flagged(hazard_threshold)
                or scan(row["final_answer"] or "").flagged(hazard_threshold)):
            out.withheld += 1
        else:
            safe.append(row)
    seen: set[Any] = set()
    first = [i for i, r in enumerate(safe) if not (r["category"] in seen
                                                   or seen.add(r["category"]))]
    order = first + [i for i in range(len(safe)) if i not in set(first)]
    for row in (safe[i] for i in order[:k]):
        answer = row["final_answer"] or ""
        cut_here = False
        if label == "illegitimate":
            if scan(answer).score > 0:
                answer, cut_here = redact(answer), True
            out.redacted_here += cut_here
        out.shown.append({
            "prompt": escape_markdown(shorten(row["prompt"], limit)),
            "answer": escape_markdown(shorten(answer, limit)) or "_(empty answer)_",
            "redacted_here": cut_here,
            **{c: row[c] for c in ("intent", "category", "mode", "source", "redacted")}})
    return out


def examples_markdown(responses: Any, models: list[str], k: int, limit: int,
                      hazard_threshold: int) -> tuple[str, int]:
    """The report's example section body and the number of rows the scanner withheld."""
    present = set(responses["model"].unique().to_list())
    parts: list[str] = []
    withheld = 0
    for model in models:
        if model not in present:
            parts.append(f"_Model `{model}` was not evaluated in this run; no examples._")
            continue
        for kind, (title, meaning, _, _) in FAILURES.items():
            ex = pick_examples(responses, model, kind, k, limit, hazard_threshold)
            withheld += ex.withheld
            parts.append(f"#### {title} ({meaning}): `{model}`, "
                         f"{plural(ex.total, 'response')}")
            note = (f" {ex.withheld} more withheld: the hazard scanner flagged the prompt or "
                    "answer." if ex.withheld else "")
            if not ex.shown:
                parts.append(f"_None to show._{note}")
                continue
            parts.append(f"{len(ex.shown)} of {ex.total}, one per compound category first."
                         + note)
            for i, e in enumerate(ex.shown, 1):
                tags = ", ".join(str(e[c]) for c in ("intent", "category", "mode", "source")
                                 if e[c])
                mark = " _(stored answer was redacted by evaluate)_" if e["redacted"] else ""
                if e["redacted_here"]:
                    mark += " _(sentences with procedure signals redacted for this page)_"
                parts.append(f"{i}. **Prompt** ({tags}): {e['prompt']}\n\n"
                             f"   > {e['answer']}{mark}")
    return "\n\n".join(parts), withheld
