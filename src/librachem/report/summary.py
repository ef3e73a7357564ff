"""Markdown for the data, training and runtime parts of the report, from the stage metrics
files (``metrics/seeds.json``, ``data.json``, ``augment.json``, ``train.json``,
``sft/metrics.json``, ``dpo/metrics.json``, ``eval_runtime.json``). Each function takes the
parsed JSON (or None when the file is absent) and returns Markdown."""

from __future__ import annotations

from typing import Any

from librachem.report.sections import DASH, counts, num, table

LLM_KEYS = ("calls", "cache_hits", "cache_misses", "failures", "prompt_tokens",
            "completion_tokens", "cost_usd", "unpriced_calls")


def _missing(what: str) -> str:
    return f"_{what}: not available in this run._"


def seeds_text(seeds: dict[str, Any] | None) -> str:
    """Compounds sampled and their compound-disjoint split."""
    if not seeds:
        return _missing("seed compounds (metrics/seeds.json)")
    c, rows, avail = seeds.get("compounds", {}), seeds.get("rows", {}), seeds.get("available", {})
    return (f"- **Seeds**: {num(c.get('total'), 0)} compounds ({num(c.get('legitimate'), 0)} "
            f"legitimate, {num(c.get('illegitimate'), 0)} illegitimate; "
            f"{num(sum(avail.values()) if avail else None, 0)} available), "
            f"{num(c.get('train'), 0)} train / {num(c.get('test'), 0)} test compounds "
            f"(compound-disjoint); {num(rows.get('total'), 0)} seed rows over the modes.")


def generate_text(data: dict[str, Any] | None) -> str:
    """Requests, rows, drops and fallbacks by reason, hazard scanner counts."""
    if not data:
        return _missing("generated triplets (metrics/data.json)")
    by = data.get("rows_by_split", {})
    label = data.get("rows_by_label", {})
    hz = data.get("hazard", {})
    lines = [
        f"- **Generate**: {num(data.get('requests'), 0)} requests → {num(data.get('rows'), 0)} "
        f"triplets ({num(by.get('train'), 0)} train / {num(by.get('test'), 0)} test; "
        f"{num(label.get('legitimate'), 0)} legitimate / {num(label.get('illegitimate'), 0)} "
        f"illegitimate).",
        f"  - dropped {num(data.get('dropped'), 0)} ({_pct(data.get('drop_rate'))}): "
        f"{counts(data.get('drops'))}.",
        f"  - template fallbacks (an LLM answer failed its gate) "
        f"{num(sum(v for v in (data.get('fallbacks') or {}).values()), 0)} "
        f"({_pct(data.get('fallback_rate'))}): {counts(data.get('fallbacks'))}.",
        f"  - hazard scanner: {num(hz.get('scanned'), 0)} answers scanned, "
        f"{num(hz.get('flagged'), 0)} flagged, {num(hz.get('redacted'), 0)} redacted, "
        f"{num(hz.get('dropped'), 0)} dropped; {num(data.get('trimmed'), 0)} length-stopped "
        f"answers trimmed to their last sentence.",
    ]
    failures = data.get("answer_failures") or {}
    if any(any(v for v in r.values()) for r in failures.values()):
        lines.append("  - answer gate failures by answer kind: " + "; ".join(
            f"{kind}: {counts(r)}" for kind, r in sorted(failures.items()) if any(r.values())) + ".")
    for key in ("rows_by_intent", "rows_by_mode"):
        if data.get(key):
            lines.append(f"  - {key.replace('_', ' ')}: {counts(data[key])}.")
    return "\n".join(lines)


def augment_text(aug: dict[str, Any] | None) -> str:
    """Rephrasing: rows in and out, variants kept and dropped by reason, decontamination."""
    if not aug:
        return _missing("augmentation (metrics/augment.json)")
    req, kept = aug.get("variants_requested", {}), aug.get("variants_kept", {})
    drops = aug.get("variant_drops", {})
    lines = [
        f"- **Augment**: {num(aug.get('rows_in'), 0)} train triplets → "
        f"{num(aug.get('rows_out'), 0)} rows; {num(aug.get('contaminated'), 0)} dropped as too "
        f"close to a test prompt, {num(aug.get('exact_duplicates'), 0)} exact duplicates; "
        f"{num(aug.get('rephrased_test_rows'), 0)} rephrased test prompts for evaluate.",
    ]
    for field in ("prompt", "chosen", "rejected"):
        if req.get(field):
            lines.append(f"  - {field} variants: {num(kept.get(field), 0)} kept of "
                         f"{num(req.get(field), 0)} requested; dropped: "
                         f"{counts(drops.get(field))}.")
    if aug.get("rephrased_test_drops"):
        lines.append(f"  - rephrased test prompts dropped: "
                     f"{counts(aug['rephrased_test_drops'])}.")
    return "\n".join(lines)


def llm_table(data: dict[str, Any] | None, aug: dict[str, Any] | None,
              runtime: dict[str, Any] | None) -> str:
    """LLM calls, call-cache hits, tokens and cost per stage (and evaluate's judge or
    baselines)."""
    rows = []
    for name, block in (("generate", (data or {}).get("llm")), ("augment", (aug or {}).get("llm"))):
        if block:
            rows.append([name, *_llm_cells(block)])
    for role, block in sorted(((runtime or {}).get("llm") or {}).items()):
        if isinstance(block, dict):
            rows.append([f"evaluate ({role})", *_llm_cells(block)])
    if not rows:
        return "_No LLM calls recorded._"
    return table(["stage", "calls", "cache hits", "cache misses", "failures", "prompt tokens",
                  "completion tokens", "cost (USD)", "unpriced calls"], rows) + (
        "\n\nTokens and cost count the calls this run sent to a model; answers from the call "
        "cache (`.llm-cache/`) cost nothing again.")


def _llm_cells(block: dict[str, Any]) -> list[str]:
    return [num(block.get(k), 2) if k == "cost_usd" else num(_int(block.get(k)), 0)
            for k in LLM_KEYS]


def training_table(train: dict[str, Any] | None, sft: dict[str, Any] | None,
                   dpo: dict[str, Any] | None) -> str:
    """SFT and DPO: steps, rows, first and last loss, the last logged DPO rewards."""
    if not train:
        return _missing("training summary (metrics/train.json)")
    rows = []
    for name, final in (("sft", sft), ("dpo", dpo)):
        t = train.get(name)
        if not t:
            rows.append([name, "not trained", DASH, DASH, DASH, DASH])
            continue
        runtime = t.get("runtime_s", (final or {}).get("train_runtime_s"))
        extra = []
        if name == "sft" and final and final.get("mean_token_accuracy") is not None:
            extra.append(f"token accuracy {final['mean_token_accuracy']:.3f}")
        if name == "dpo":
            if t.get("reward_accuracy_last") is not None:
                extra.append(f"reward accuracy {t['reward_accuracy_last']:.2f}")
            if t.get("reward_margin_last") is not None:
                extra.append(f"reward margin {t['reward_margin_last']:.2f}")
        rows.append([name, num(_int(t.get("steps")), 0),
                     f"{num(_int(t.get('rows_used')), 0)} (dropped {num(_int(t.get('rows_dropped')), 0)})"
                     if t.get("rows_dropped") is not None else num(_int(t.get("rows_used")), 0),
                     f"{num(t.get('loss_first'))} → {num(t.get('loss_last'))}",
                     num(runtime, 0) if runtime is not None else DASH,
                     "; ".join(extra) or DASH])
    return table(["stage", "steps", "rows", "loss first → last", "runtime (s)", "last logged"],
                 rows)


def runtime_table(runtime: dict[str, Any] | None) -> str:
    """Evaluate's generation time per model (varies run to run)."""
    gen = (runtime or {}).get("generation") or {}
    if not gen:
        return _missing("evaluation timings (metrics/eval_runtime.json)")
    from librachem.report.sections import ordered_models

    rows = []
    for m in ordered_models(gen):
        rec = gen[m]
        hits, answers = rec.get("cache_hits"), rec.get("answers")
        # answers replayed from the call cache: no model was loaded, no token was generated
        all_cached = bool(hits) and hits == answers
        rows.append([m, "cached" if all_cached else num(rec.get("load_s"), 1),
                     num(rec.get("generate_s"), 1),
                     "cached" if all_cached else num(rec.get("tokens_per_s"), 1),
                     f"{hits}/{answers}" if answers is not None else num(hits, 0)])
    text = table(["model", "load (s)", "generate (s)", "tokens/s", "cached answers"], rows)
    if runtime.get("wall_s") is not None:
        text += f"\n\nEvaluate wall time: {runtime['wall_s']:.0f} s."
    return text


def _pct(rate: Any) -> str:
    return f"{100 * rate:.1f}%" if isinstance(rate, int | float) else DASH


def _int(value: Any) -> Any:
    """Counts stored as floats (2.0) as ints."""
    return int(value) if isinstance(value, float) and value.is_integer() else value
