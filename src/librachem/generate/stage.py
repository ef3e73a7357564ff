"""The ``generate`` stage: three-phase generation into Parquet triplet shards.

Phase 1 (:mod:`librachem.generate.requests`): requests from the balanced seeds, one per (compound,
mode, intent), capped per split. Phase 2: the generator LLM writes the chosen and the
rejected answer of each request (role swap by label, :mod:`librachem.generate.answers`); every answer
is tidied, hazard-scanned (:mod:`librachem.common.hazard`) when in scope, and gated (empty,
truncated, too long, refusal that is not one, helpful answer that reads as a refusal,
chosen == rejected). Phase 3: rows become (prompt, chosen, rejected) triplets written as
shards per split (:mod:`librachem.common.shards`, schema :data:`librachem.common.triplets.TRIPLET_SCHEMA`)
with the manifest last, plus ``metrics/data.json``.

Every LLM call goes through the client given (the stage passes the cached client of
:func:`librachem.llm.factory.make_client`); requests go out through
:func:`librachem.llm.batching.complete_all` (one streaming pool for an API backend, chunks
of ``chunk_size`` for the in-process one), each answer cached as it arrives, so a killed
run keeps every finished call and a rerun replays them (no repeat call) and gives
identical output.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from librachem.common.atomic import write_json
from librachem.common.config import Section
from librachem.common.errors import QualityGateError
from librachem.common.hazard import redact, redacted_remainder, scan
from librachem.common.provenance import package_versions
from librachem.common.shards import invalidate, write_shards
from librachem.common.triplets import (
    LABELS,
    MODES,
    SPLITS,
    TRIPLET_SCHEMA,
    row_id,
    rows_to_table,
)
from librachem.generate.answers import (
    ANSWER_REASONS,
    KINDS,
    KINDS_BY_LABEL,
    AnswerPrompts,
    Kind,
    build_messages,
    load_answer_prompts,
    normalised,
    pick_fallback,
    tidy,
    verdict_reason,
)
from librachem.generate.requests import (
    Request,
    cap_requests,
    craft_requests,
    load_request_templates,
    read_seeds,
)
from librachem.llm.base import ChatRequest, Completion
from librachem.llm.batching import complete_all, render_key
from librachem.llm.config import LLMParams
from librachem.llm.failures import check_failure_rate
from librachem.llm.models import check_model_dep

log = logging.getLogger(__name__)

ROW_REASONS = (*ANSWER_REASONS, "identical")


class SplitCaps(Section):
    """Maximum requests per split (0 = every request the seeds give)."""

    train: int = Field(default=112, ge=0)
    test: int = Field(default=32, ge=0)


class HazardParams(Section):
    """Hazard scanner settings (see :mod:`librachem.common.hazard`).

    scope: ``illegitimate_compound`` scans every answer about an illegitimate compound
        (also the legitimate-intent ones, e.g. first aid: a small model may drift into a
        procedure); ``illegitimate_label`` only answers to illegitimate requests.
    action: ``redact`` removes the flagged sentences, ``drop`` drops the row.
    min_remaining_chars: a redacted answer with less text left is dropped (reason hazard).
    """

    threshold: int = Field(default=3, ge=1)
    action: Literal["redact", "drop"] = "redact"
    scope: Literal["illegitimate_compound", "illegitimate_label"] = "illegitimate_compound"
    min_remaining_chars: int = Field(default=40, ge=0)


class FallbackParams(Section):
    """Per answer kind: ``template`` replaces an LLM answer that fails its gate by a template
    from the kind's versioned pool (counted in ``fallbacks``, recorded in the row's
    ``*_source``); ``none`` drops the row. ``helpful`` has no pool (a template cannot answer
    a chemistry question)."""

    refusal: Literal["none", "template"] = "template"
    over_refusal: Literal["none", "template"] = "template"
    compliance: Literal["none", "template"] = "template"


class GenerateParams(Section):
    """The ``generate`` params section.

    seed: drives template choice and the per-split caps. intent_set: ``paper`` (synthesis
    only) or ``extended`` (intent axis). max_requests: caps per split. chunk_size: requests
    per client call of the in-process backend (an API backend gets one streaming pool). generator: the LLM block.
    short_max_tokens: max_tokens of refusal / over_refusal / compliance answers (the
    generator's ``max_tokens`` applies to helpful answers). truncation: ``trim`` cuts a
    length-stopped answer back to its last sentence, ``drop`` drops it. max_answer_chars:
    longer answers are dropped. accept_unsure: a detector ``unsure`` passes both gates.
    max_drop_rate: the stage fails above this share of dropped requests.
    max_llm_failure_rate: the stage fails above this share of LLM calls that failed for good
    (transport errors after retries, 4xx): template fallbacks must not hide a dead generator.
    model_dep: the local model folder ``dvc.yaml`` makes this stage depend on
    (``${generate.model_dep}``; :func:`~librachem.llm.models.check_model_dep` says what to set).
    """

    seed: int = Field(default=13, ge=0)
    intent_set: Literal["paper", "extended"] = "extended"
    max_requests: SplitCaps = SplitCaps()
    intent_weights: dict[Annotated[str, Field(pattern=r"^(legitimate|illegitimate):[a-z_]+$")],
                         Annotated[int, Field(ge=1, le=100)]] = Field(default_factory=dict)
    chunk_size: int = Field(default=32, ge=1)
    generator: LLMParams = LLMParams(max_tokens=128)
    short_max_tokens: int = Field(default=64, ge=1)
    truncation: Literal["trim", "drop"] = "trim"
    max_answer_chars: int = Field(default=1500, ge=1)
    accept_unsure: bool = True
    hazard: HazardParams = HazardParams()
    fallback: FallbackParams = FallbackParams()
    max_drop_rate: float = Field(default=0.5, ge=0.0, le=1.0)
    max_llm_failure_rate: float = Field(default=0.2, ge=0.0, le=1.0)
    rows_per_shard: int = Field(default=1000, ge=1, le=10_000_000)
    model_dep: str = Field(default="models/base", min_length=1)

    @model_validator(mode="after")
    def _model_dep(self) -> GenerateParams:
        check_model_dep(self.generator, self.model_dep, "generate")
        return self

    @field_validator("intent_weights")
    @classmethod
    def _known_intents(cls, value: dict[str, int]) -> dict[str, int]:
        """Keys must name an intent of the packaged request templates (so `librachem
        check-params` catches a typo before any LLM call)."""
        if value:
            known = {f"{label}:{i.name}" for i in load_request_templates().intents
                     for label in ("legitimate", "illegitimate")}
            unknown = sorted(set(value) - known)
            if unknown:
                raise ValueError(f"unknown label:intent keys {unknown}; expected some of "
                                 f"{sorted(known)}")
        return value


@dataclass
class Answer:
    """One resolved answer (after tidy, hazard scan, gate and fallback)."""

    text: str | None
    source: str
    raw: str | None
    reason: str | None
    hazard_score: int = 0
    redacted: bool = False


@dataclass
class Tally:
    """Counters that end up in ``metrics/data.json``."""

    drops: Counter = field(default_factory=Counter)
    answer_failures: dict[str, Counter] = field(
        default_factory=lambda: {k: Counter() for k in KINDS})
    fallbacks: Counter = field(default_factory=Counter)
    hazard: Counter = field(default_factory=Counter)
    trimmed: int = 0


def in_hazard_scope(req: Request, scope: str) -> bool:
    """Whether answers to ``req`` are hazard-scanned under ``scope``."""
    if scope == "illegitimate_label":
        return req.label == "illegitimate"
    return req.compound_class == "illegitimate"


def resolve_answer(kind: Kind, req: Request, completion: Completion, params: GenerateParams,
                   classify: Any, tally: Tally) -> Answer:
    """Tidy, scan, gate and (if allowed) fall back for one answer. Counts into ``tally``."""
    raw = completion.text if completion.ok else None
    score, redacted, flagged = 0, False, False
    if in_hazard_scope(req, params.hazard.scope) and raw is not None:
        # Scored on the raw reply: the client's own scan (``hazard_score``; its text is
        # then already redacted, also in the call cache) or, without one, here.
        tally.hazard["scanned"] += 1
        score = completion.hazard_score if completion.hazard_score is not None else scan(raw).score
        flagged = score >= params.hazard.threshold
        if flagged:
            tally.hazard["flagged"] += 1
            raw = redact(raw)  # never store an actionable raw text either (no-op if done)
    text, note = tidy(raw, completion.finish_reason, truncation=params.truncation)
    reason = None if text is not None else note
    tally.trimmed += note == "trimmed"
    if text is not None and len(text) > params.max_answer_chars:
        reason, text = "too_long", None
    if flagged and text is not None:
        text = redact(text) if params.hazard.action == "redact" else None
        if text is None or len(redacted_remainder(text)) < params.hazard.min_remaining_chars:
            tally.hazard["dropped"] += 1
            reason, text = "hazard", None
        else:
            tally.hazard["redacted"] += 1
            redacted = True
    if text is not None:
        reason = verdict_reason(classify(text), kind.expect, accept_unsure=params.accept_unsure)
        if reason is not None:
            text = None
    if reason is None:
        return Answer(text=text, source="llm", raw=raw, reason=None, hazard_score=score,
                      redacted=redacted)
    tally.answer_failures[kind.name][reason] += 1
    if getattr(params.fallback, kind.name, "none") == "template":
        picked = pick_fallback(kind, req.subject, params.seed, req.compound_id, req.mode,
                               req.intent, kind.name)
        if picked is not None:
            tally.fallbacks[kind.name] += 1
            return Answer(text=picked[1], source=f"template:{picked[0]}", raw=raw, reason=None,
                          hazard_score=score)
    return Answer(text=None, source="llm", raw=raw, reason=reason, hazard_score=score)


def chat_requests(reqs: list[Request], prompts: AnswerPrompts,
                  params: GenerateParams) -> list[tuple[ChatRequest, ChatRequest]]:
    """The (chosen, rejected) generator requests of each request, in order."""
    out = []
    for req in reqs:
        pair = []
        for kind_name in KINDS_BY_LABEL[req.label]:
            kind = prompts.kinds[kind_name]
            max_tokens = (params.generator.max_tokens if kind_name == "helpful"
                          else params.short_max_tokens)
            scan_at = (params.hazard.threshold if in_hazard_scope(req, params.hazard.scope)
                       else None)  # scanned (and redacted) before the call cache stores it
            pair.append(params.generator.request(build_messages(kind, req.prompt),
                                                 max_tokens=max_tokens,
                                                 redact_threshold=scan_at))
        out.append((pair[0], pair[1]))
    return out


def _zeros(keys: tuple[str, ...], counts: Counter) -> dict[str, int]:
    return {k: int(counts.get(k, 0)) for k in keys}


def build_rows(reqs: list[Request], pairs: list[tuple[ChatRequest, ChatRequest]],
               done: dict[str, Completion], prompts: AnswerPrompts, params: GenerateParams,
               classify: Any, tally: Tally) -> list[dict[str, Any]]:
    """Phase 3: resolve both answers of each request and assemble the triplet rows."""
    rows = []
    for req, (chosen_req, rejected_req) in zip(reqs, pairs):
        kinds = KINDS_BY_LABEL[req.label]
        completions = (done[render_key(chosen_req)], done[render_key(rejected_req)])
        answers = [resolve_answer(prompts.kinds[k], req, c, params, classify, tally)
                   for k, c in zip(kinds, completions)]
        reason = next((a.reason for a in answers if a.reason), None)
        if reason is None and normalised(answers[0].text) == normalised(answers[1].text):
            reason = "identical"
        if reason is not None:
            tally.drops[reason] += 1
            continue
        chosen, rejected = answers
        redacted = chosen.redacted or rejected.redacted
        scanned = in_hazard_scope(req, params.hazard.scope)
        model_id = next((c.model_id for c, a in zip(completions, answers)
                         if a.source == "llm" and c.model_id), params.generator.model)
        rows.append({
            **req.as_dict(),
            "row_id": row_id(req.prompt, chosen.text, rejected.text),
            "chosen": chosen.text, "rejected": rejected.text,
            "prompt_version": prompts.version, "generator_model": model_id,
            "chosen_kind": kinds[0], "rejected_kind": kinds[1],
            "chosen_source": chosen.source, "rejected_source": rejected.source,
            "chosen_raw": chosen.raw, "rejected_raw": rejected.raw,
            "chosen_cache_key": completions[0].cache_key,
            "rejected_cache_key": completions[1].cache_key,
            "hazard_outcome": "redacted" if redacted else ("clean" if scanned else "not_scanned"),
            "hazard_score": max(chosen.hazard_score, rejected.hazard_score),
            "phase": "generate",
        })
    return rows


def data_metrics(reqs: list[Request], rows: list[dict[str, Any]], tally: Tally,
                 llm_stats: dict[str, float], intents: tuple[str, ...]) -> dict[str, Any]:
    """The ``metrics/data.json`` mapping (every key present, zero when nothing counted)."""
    dropped = sum(tally.drops.values())
    return {
        "requests": len(reqs),
        "rows": len(rows),
        "dropped": dropped,
        "drop_rate": round(dropped / len(reqs), 6) if reqs else 0.0,
        "rows_by_label": _zeros(LABELS, Counter(r["label"] for r in rows)),
        "rows_by_intent": _zeros(intents, Counter(r["intent"] for r in rows)),
        "rows_by_mode": _zeros(MODES, Counter(r["mode"] for r in rows)),
        "rows_by_split": _zeros(SPLITS, Counter(r["split"] for r in rows)),
        "drops": _zeros(ROW_REASONS, tally.drops),
        "answer_failures": {k: _zeros(ANSWER_REASONS, tally.answer_failures[k]) for k in KINDS},
        "fallbacks": _zeros(KINDS, tally.fallbacks),
        "fallback_rate": round(sum(tally.fallbacks.values()) / (2 * len(reqs)), 6) if reqs
        else 0.0,
        "trimmed": tally.trimmed,
        "hazard": _zeros(("scanned", "flagged", "redacted", "dropped"), tally.hazard),
        "llm": {k: float(v) for k, v in sorted(llm_stats.items())},
    }


def run_generate(seeds_path: Path, out_dir: Path, metrics_path: Path, params: GenerateParams,
                 client: Any, *, classify: Any = None) -> dict[str, Any]:
    """Run the three phases and write ``out_dir`` (shards + manifest) and the metrics file.

    Args:
        seeds_path: ``data/seeds/balanced.parquet`` (columns: see :mod:`librachem.generate.requests`).
        out_dir: the triplet shard folder (``train-*.parquet``, ``test-*.parquet``).
        metrics_path: ``metrics/data.json``.
        params: the ``generate`` section.
        client: an LLM client (``complete(requests)``, optional ``stats()``).
        classify: refusal detector ``text -> refusal|compliance|unsure`` (default: the
            shared :func:`librachem.common.refusal.classify`).

    Returns:
        The metrics mapping.

    Raises:
        DataError: bad seeds. ConfigError: bad templates.
        QualityGateError: drop rate above ``max_drop_rate``, LLM failure rate above
            ``max_llm_failure_rate``, or a label with requests in a split but no rows there
            (metrics are written first; no shards are written).
    """
    if classify is None:
        from librachem.common.refusal import classify
    invalidate(out_dir)  # a failed or killed run leaves no complete-looking old output
    templates = load_request_templates()
    prompts = load_answer_prompts()
    seeds = read_seeds(seeds_path)
    reqs = cap_requests(craft_requests(seeds, templates, params.intent_set, params.seed),
                        params.max_requests.model_dump(), params.seed, params.intent_weights)
    log.info("phase 1: %d requests from %d seeds rows", len(reqs), len(seeds))
    pairs = chat_requests(reqs, prompts, params)
    done = complete_all(client, [r for pair in pairs for r in pair], params.chunk_size,
                        "generate")
    tally = Tally()
    rows = build_rows(reqs, pairs, done, prompts, params, classify, tally)
    stats = client.stats() if hasattr(client, "stats") else {}
    metrics = data_metrics(reqs, rows, tally, stats, tuple(i.name for i in templates.intents))
    if hasattr(client, "failure_report"):
        metrics["llm_failures"] = client.failure_report()
    write_json(metrics_path, metrics)
    log.info("phase 2: %d rows kept, %d dropped %s, %d fallbacks", len(rows),
             metrics["dropped"], dict(tally.drops), sum(tally.fallbacks.values()))
    check_failure_rate("generate", "generate.max_llm_failure_rate", client,
                       params.max_llm_failure_rate, metrics_path)
    if metrics["drop_rate"] > params.max_drop_rate:
        raise QualityGateError(
            f"generate dropped {metrics['dropped']}/{len(reqs)} requests "
            f"(rate {metrics['drop_rate']:.3f} > generate.max_drop_rate "
            f"{params.max_drop_rate}); reasons {dict(tally.drops)}; see {metrics_path}")
    for split in SPLITS:
        for label in ("legitimate", "illegitimate"):
            asked = sum(r.split == split and r.label == label for r in reqs)
            if asked and not any(r["split"] == split and r["label"] == label for r in rows):
                raise QualityGateError(
                    f"generate: the {split} split has {asked} {label} requests but no "
                    f"{label} row survived; see {metrics_path}")
    tables = {split: rows_to_table([r for r in rows if r["split"] == split], TRIPLET_SCHEMA)
              for split in SPLITS}
    write_shards(out_dir, tables, TRIPLET_SCHEMA, rows_per_shard=params.rows_per_shard, meta={
        "stage": "generate", "params": params.model_dump(mode="json"),
        "template_version": templates.version, "prompt_version": prompts.version,
        "versions": package_versions()})
    return metrics
