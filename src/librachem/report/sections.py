"""Markdown sections of the run report, built from the metrics files (pure functions: dicts
in, Markdown text out). Numbers are rates in [0, 1] unless a header says otherwise;
``–`` marks a value the run did not produce."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

DIFF_KEY = "dpo_minus_base"
MODEL_ORDER = ("base", "sft", "dpo")
DASH = "–"


# ------------------------------------------------------------------------------ helpers
def num(value: Any, digits: int = 3, signed: bool = False) -> str:
    """A number for a table cell (``–`` for None / missing)."""
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        return DASH
    if isinstance(value, int) or float(value).is_integer() and digits == 0:
        return f"{int(value):+,}" if signed else f"{int(value):,}"
    return f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def interval(block: dict[str, Any], key: str) -> str:
    """`` [low, high]`` of ``block["ci"][key]`` (two decimals), or ``""``."""
    ci = (block.get("ci") or {}).get(key) or {}
    if ci.get("low") is None or ci.get("high") is None:
        return ""
    low, high = (f"{v:.2f}".replace("-0.00", "0.00") for v in (ci["low"], ci["high"]))
    return f" [{low}, {high}]"


def cell(text: Any) -> str:
    """Text safe inside a Markdown table cell."""
    return str(text).replace("|", "\\|").replace("\n", " ")


_NUMERIC = re.compile(r"^[+-]?[\d.,]+(?: \[.*\])?$|^–$")


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """A GitHub Markdown table: columns whose cells are all numbers right-aligned."""
    rows = [[cell(c) for c in row] for row in rows]
    align = [":---" if i == 0 or not all(_NUMERIC.match(r[i]) for r in rows if i < len(r))
             else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(cell(h) for h in header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def plural(n: int, word: str) -> str:
    """``1 response`` / ``2 responses``."""
    return f"{n} {word}" + ("" if n == 1 else "s")


def ordered_models(names: Iterable[str]) -> list[str]:
    """base, sft, dpo first (as trained), then any baselines in name order."""
    names = [n for n in names if n != DIFF_KEY]
    return [n for n in MODEL_ORDER if n in names] + sorted(n for n in names
                                                            if n not in MODEL_ORDER)


def counts(mapping: dict[str, Any] | None, skip_zero: bool = True) -> str:
    """``reason 3, other 1`` for a {reason: count} mapping (largest first), or ``none``."""
    items = [(k, v) for k, v in (mapping or {}).items()
             if isinstance(v, int | float) and not (skip_zero and v == 0)]
    if not items:
        return "none"
    return ", ".join(f"{k} {num(v, 0)}" for k, v in sorted(items, key=lambda kv: (-kv[1], kv[0])))


# ------------------------------------------------------------------------------ results
def summary_line(details: dict[str, Any]) -> str:
    """One sentence: the best model by overall_macro and, when present, dpo − base."""
    models = ordered_models(details)
    scored = [(details[m].get("overall_macro"), m) for m in models
              if details[m].get("overall_macro") is not None]
    parts = []
    if scored:
        best = max(scored)
        block = details[best[1]]
        n = block.get("n", {})
        parts.append(f"Best model by overall_macro: **{best[1]}** ({best[0]:.3f}; safety "
                     f"{num(block.get('safety'))}, utility {num(block.get('utility'))}) on "
                     f"{num(n.get('total'), 0)} held-out prompts ({num(n.get('illegitimate'), 0)} "
                     f"illegitimate, {num(n.get('legitimate'), 0)} legitimate).")
    diff = details.get(DIFF_KEY)
    if diff:
        parts.append(f"DPO − base: overall_macro {num(diff.get('overall_macro'), signed=True)}"
                     f"{interval(diff, 'overall_macro')}, safety "
                     f"{num(diff.get('safety'), signed=True)}, utility "
                     f"{num(diff.get('utility'), signed=True)}.")
    return " ".join(parts)


def headline_table(details: dict[str, Any]) -> str:
    """One row per model (bootstrap intervals in brackets) and the ``dpo − base`` row."""
    header = ["model", "safety", "utility", "overall", "overall_macro", "refusal F1",
              "harmful compliance", "n (illegit / legit)", "unjudged"]
    rows = []
    for m in ordered_models(details):
        b = details[m]
        n = b.get("n", {})
        rows.append([m, num(b.get("safety")) + interval(b, "safety"),
                     num(b.get("utility")) + interval(b, "utility"),
                     num(b.get("overall")) + interval(b, "overall"),
                     num(b.get("overall_macro")), num(b.get("refusal_f1")),
                     num(b.get("harmful_compliance_rate")),
                     f"{num(n.get('illegitimate'), 0)} / {num(n.get('legitimate'), 0)}",
                     num(n.get("unjudged"), 0)])
    diff = details.get(DIFF_KEY)
    if diff:
        rows.append(["**dpo − base**"] + [
            num(diff.get(k), signed=True) + interval(diff, k)
            for k in ("safety", "utility", "overall", "overall_macro")] + [
            num(diff.get("refusal_f1"), signed=True),
            num(diff.get("harmful_compliance_rate"), signed=True),
            f"{num(diff.get('n_paired'), 0)} paired", ""])
    return table(header, rows)


def breakdown_table(details: dict[str, Any], key: str, what: str) -> str:
    """Accuracy per ``key`` group (``by_intent``, ``by_category``, ``by_mode``,
    ``by_source``) and model. ``prompts`` says which labels the group holds: accuracy is
    safety for illegitimate-only groups, utility for legitimate-only ones; mixed groups also
    show both (``s`` / ``u``)."""
    models = [m for m in ordered_models(details) if details[m].get(key)]
    groups: dict[str, dict[str, Any]] = {}
    for m in models:
        for g, b in details[m][key].items():
            groups.setdefault(g, {})[m] = b
    if not groups:
        return f"_No {what} breakdown in this run._"
    rows = []
    for g in sorted(groups):
        blocks = groups[g]
        kinds = {k for b in blocks.values() for k in ("safety", "utility") if k in b}
        label = ("both" if len(kinds) == 2 else
                 "illegitimate" if kinds == {"safety"} else "legitimate" if kinds else DASH)
        n = max((b.get("n") or 0) for b in blocks.values())
        row = [g, num(n, 0), label]
        for m in models:
            b = blocks.get(m)
            if b is None:
                row.append(DASH)
                continue
            text = num(b.get("accuracy"), 2)
            if label == "both":
                text += f" (s {num(b.get('safety'), 2)}, u {num(b.get('utility'), 2)})"
            row.append(text)
        rows.append(row)
    return table([what, "prompts", "labels", *models], rows)


def judge_table(details: dict[str, Any]) -> str:
    """Judge statistics per model (rule/keyword agreement, parse failures...)."""
    models = [m for m in ordered_models(details) if details[m].get("judges")]
    keys = sorted({k for m in models for k in details[m]["judges"]})
    if not keys:
        return "_No judge statistics._"
    return table(["statistic", *models],
                 [[k, *(num(details[m]["judges"].get(k)) for m in models)] for k in keys])


def xstest_table(details: dict[str, Any]) -> str:
    """XSTest refusal rates per model (safe prompts: over-refusal, lower is better; unsafe:
    higher is better), or ``""`` when XSTest was not run."""
    models = [m for m in ordered_models(details) if details[m].get("xstest")]
    if not models:
        return ""
    rows = [[m, num(x.get("safe_refusal_rate")), num(x.get("unsafe_refusal_rate")),
             f"{num(x.get('n_safe'), 0)} / {num(x.get('n_unsafe'), 0)}"]
            for m in models for x in [details[m]["xstest"]]]
    return ("XSTest (over-refusal benchmark):\n\n"
            + table(["model", "refusal rate, safe prompts (lower is better)",
                     "refusal rate, unsafe prompts", "n (safe / unsafe)"], rows))


def weakest_line(details: dict[str, Any], min_prompts: int = 5, k: int = 3) -> str:
    """The ``k`` intents or categories (of at least ``min_prompts`` prompts) where the model
    with the best overall_macro is least accurate, as one sentence; ``""`` if none."""
    scored = [(details[m].get("overall_macro"), m) for m in ordered_models(details)
              if details[m].get("overall_macro") is not None]
    if not scored:
        return ""
    model = max(scored)[1]
    groups = [(b["accuracy"], kind, g, b["n"])
              for key, kind in (("by_intent", "intent"), ("by_category", "category"))
              for g, b in (details[model].get(key) or {}).items()
              if b.get("accuracy") is not None and (b.get("n") or 0) >= min_prompts]
    if not groups:
        return ""
    worst = sorted(groups)[:k]
    return (f"Weakest groups of **{model}** (at least {min_prompts} prompts): "
            + "; ".join(f"{kind} `{g}` {acc:.2f} ({num(n, 0)} prompts)"
                        for acc, kind, g, n in worst) + ".")
