"""The ``augment`` stage: LLM rephrasing of train triplets, guarded, combined, deduplicated.

Paper: the request, the chosen and the rejected answer are each rephrased several times
(file names suggest 5/5/5) and the variants combined into triplets. Here, for every *train*
triplet (the test split is never mixed into training data):

1. ask the rephraser for ``n_prompt_variants`` / ``n_chosen_variants`` /
   ``n_rejected_variants`` variants (:mod:`librachem.augment.rephrase`; variant 0 = the original);
2. drop, with a reason, every variant that fails a guard (compound lost, refusal flipped,
   hazard, length band, unchanged, empty, failed call) or is a near-duplicate (MinHash,
   :mod:`librachem.augment.dedup`) of the original or of a kept variant of the same text;
3. combine the kept variants per parent: ``product`` (every combination), ``zip``
   (i-th with i-th, cycling the shorter lists, originals first) or ``sample`` (the original
   triplet plus a seeded sample, ``max_per_parent`` rows in all);
4. drop exact duplicate rows (same ``row_id``), identical pairs (chosen = rejected after
   whitespace/case normalisation: no preference signal; counted as ``identical_pairs``) and,
   as decontamination, any train row whose prompt is a near-duplicate of a test prompt
   (original or rephrased);
5. optionally rephrase each *test* prompt ``test_prompt_variants`` times into
   ``data/rephrased_test/`` (``rephrased_test = true``; chosen/rejected = the parent's, as
   references), for evaluate's robustness-to-wording check. Never trained on.

All calls go through the given client (cache: kill-and-resume as in generate).
"""

from __future__ import annotations

import itertools
import logging
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from librachem.augment.dedup import NearDuplicateIndex
from librachem.augment.rephrase import (
    REASONS,
    ROLES,
    RephrasePrompts,
    build_messages,
    clean,
    example_for,
    guard,
    keeps_subject,
    load_rephrase_prompts,
)
from librachem.common.atomic import write_json
from librachem.common.config import Section
from librachem.common.errors import QualityGateError
from librachem.common.hashing import derived_rng
from librachem.common.hazard import scan
from librachem.common.provenance import package_versions
from librachem.common.shards import invalidate, read_shards, write_shards
from librachem.common.text import same_text, trim_to_sentence
from librachem.common.triplets import (
    AUGMENTED_SCHEMA,
    TRIPLET_SCHEMA,
    row_id,
    rows_to_table,
)
from librachem.llm.base import ChatRequest, Completion
from librachem.llm.batching import complete_all, render_key
from librachem.llm.config import LLMParams
from librachem.llm.failures import check_failure_rate
from librachem.llm.models import check_model_dep

log = logging.getLogger(__name__)

VARIANT_REASONS = (*REASONS, "truncated", "near_duplicate")
REFUSAL_KINDS = ("refusal", "over_refusal")


class AugmentParams(Section):
    """The ``augment`` params section (see the module docstring for the steps).

    n_*_variants: rephrasings per text (paper: 5/5/5). combination: product | zip | sample.
    max_per_parent: rows per parent for ``sample``. test_prompt_variants: rephrased test
    prompts per test row (0 = none). rephraser: LLM block. prompt_max_tokens: max_tokens of
    a prompt rephrasing (answers use ``rephraser.max_tokens``). length_band: allowed
    variant/source length ratio. hazard_threshold: scanner score that drops an
    illegitimate-side variant. near_dup_threshold / decontam_threshold: MinHash Jaccard
    thresholds. max_variant_drop_rate: fail above this share of dropped variants.
    model_dep: the local model folder ``dvc.yaml`` makes this stage depend on
    (``${augment.model_dep}``; :func:`~librachem.llm.models.check_model_dep` says what to set).
    max_llm_failure_rate: fail above this share of LLM calls that failed for good
    (transport errors after retries, 4xx): failed calls would otherwise only show as
    dropped variants and the stage would pass with fewer rows. chunk_size: requests per
    client call for the in-process backend (an API backend gets one streaming pool).
    """

    seed: int = Field(default=7, ge=0)
    n_prompt_variants: int = Field(default=2, ge=0, le=20)
    n_chosen_variants: int = Field(default=1, ge=0, le=20)
    n_rejected_variants: int = Field(default=0, ge=0, le=20)
    combination: Literal["product", "zip", "sample"] = "product"
    max_per_parent: int = Field(default=4, ge=1)
    test_prompt_variants: int = Field(default=1, ge=0, le=20)
    rephraser: LLMParams = LLMParams(max_tokens=80)
    prompt_max_tokens: int = Field(default=48, ge=1)
    length_band: tuple[float, float] = (0.4, 2.5)
    accept_unsure: bool = True
    hazard_threshold: int = Field(default=3, ge=1)
    near_dup_threshold: float = Field(default=0.9, gt=0.0, le=1.0)
    decontam_threshold: float = Field(default=0.8, gt=0.0, le=1.0)
    shingle: int = Field(default=5, ge=1)
    num_perm: int = Field(default=64, ge=16)
    chunk_size: int = Field(default=64, ge=1)
    max_variant_drop_rate: float = Field(default=0.95, ge=0.0, le=1.0)
    max_llm_failure_rate: float = Field(default=0.2, ge=0.0, le=1.0)
    rows_per_shard: int = Field(default=1000, ge=1)
    model_dep: str = Field(default="models/base", min_length=1)

    @model_validator(mode="after")
    def _band(self) -> AugmentParams:
        low, high = self.length_band
        if not 0 < low <= 1 <= high:
            raise ValueError(f"length_band {self.length_band}: need 0 < low <= 1 <= high")
        check_model_dep(self.rephraser, self.model_dep, "augment")
        return self

    def n_variants(self, role: str) -> int:
        return {"prompt": self.n_prompt_variants, "chosen": self.n_chosen_variants,
                "rejected": self.n_rejected_variants}[role]


@dataclass(frozen=True)
class Job:
    """One variant to ask for: parent row, role, variant index, request."""

    parent: str
    role: str
    variant: int
    request: ChatRequest


@dataclass
class Variant:
    text: str
    raw: str | None
    cache_key: str


def expect_of(row: dict[str, Any], role: str) -> str | None:
    """The detector verdict a text must keep: ``None`` for prompts."""
    if role == "prompt":
        return None
    return "refusal" if row[f"{role}_kind"] in REFUSAL_KINDS else "compliance"


def plan_jobs(rows: list[dict[str, Any]], roles_n: dict[str, int], params: AugmentParams,
              prompts: RephrasePrompts) -> list[Job]:
    """Every rephrasing request, in row order, role order, variant order."""
    jobs = []
    for row in rows:
        for role in ROLES:
            expect = expect_of(row, role)
            example = example_for(role, expect or "")
            max_tokens = params.prompt_max_tokens if role == "prompt" else None
            for v in range(1, roles_n.get(role, 0) + 1):
                scan_at = (params.hazard_threshold if row["compound_class"] == "illegitimate"
                           else None)  # redacted before the call cache stores it
                request = params.rephraser.request(
                    build_messages(prompts, row[role], v, example), max_tokens=max_tokens,
                    redact_threshold=scan_at)
                jobs.append(Job(row["row_id"], role, v, request))
    return jobs


def resolve_variants(rows: list[dict[str, Any]], jobs: list[Job],
                     done: dict[str, Completion], params: AugmentParams, classify: Any,
                     drops: dict[str, Counter]) -> dict[tuple[str, str], list[tuple[int, Variant]]]:
    """Guard and near-dedup every variant. Returns (parent, role) -> [(index, Variant)],
    the original first (index 0). Drop reasons are counted per role in ``drops``."""
    by_id = {r["row_id"]: r for r in rows}
    kept: dict[tuple[str, str], list[tuple[int, Variant]]] = {}
    indexes: dict[tuple[str, str], NearDuplicateIndex] = {}
    for row in rows:
        for role in ROLES:
            raw_col = None if role == "prompt" else row.get(f"{role}_raw")
            key_col = "" if role == "prompt" else row.get(f"{role}_cache_key", "")
            kept[(row["row_id"], role)] = [(0, Variant(row[role], raw_col, key_col))]
    for job in jobs:
        row = by_id[job.parent]
        source = row[job.role]
        completion = done[render_key(job.request)]
        text = clean(completion.text if completion.ok else None, job.role)
        reason = None
        if text and completion.finish_reason == "length" and job.role != "prompt":
            text = trim_to_sentence(text)
            reason = None if text else "truncated"
        hazard = None
        if row["compound_class"] == "illegitimate":
            raw_score = completion.hazard_score or 0  # the raw reply's score (client scan)

            def hazard(t: str, raw_score: int = raw_score) -> bool:
                return max(raw_score, scan(t).score) >= params.hazard_threshold
        if reason is None:
            check_subject = job.role == "prompt" or keeps_subject(
                source, row["subject"], row["mode"], row["smiles"])
            reason = guard(text, source, check_subject=check_subject, subject=row["subject"],
                           mode=row["mode"], smiles=row["smiles"],
                           band=params.length_band, hazard_scan=hazard,
                           expect=expect_of(row, job.role), classify=classify,
                           accept_unsure=params.accept_unsure)
        slot = (job.parent, job.role)
        if reason is None:
            index = indexes.get(slot)
            if index is None:
                index = indexes[slot] = NearDuplicateIndex(
                    params.near_dup_threshold, shingle=params.shingle, num_perm=params.num_perm)
                index.add("0", source)
            if index.query(text):
                reason = "near_duplicate"
            else:
                index.add(str(job.variant), text)
        if reason is not None:
            drops[job.role][reason] += 1
            continue
        raw = completion.text if hazard is None or not hazard(completion.text or "") else text
        kept[slot].append((job.variant, Variant(text, raw, completion.cache_key)))
    return kept


def combine(p: list[int], c: list[int], r: list[int], rule: str, max_per_parent: int,
            rng: Any) -> list[tuple[int, int, int]]:
    """Variant-index triples for one parent (each list starts with 0, the original).

    ``product``: all combinations. ``zip``: i-th with i-th for i < longest list, shorter
    lists cycled. ``sample``: (0, 0, 0) plus a seeded sample of the other combinations,
    ``max_per_parent`` in all."""
    if rule == "product":
        return list(itertools.product(p, c, r))
    if rule == "zip":
        n = max(len(p), len(c), len(r))
        return [(p[i % len(p)], c[i % len(c)], r[i % len(r)]) for i in range(n)]
    others = [t for t in itertools.product(p, c, r) if t != (0, 0, 0)]
    return [(0, 0, 0), *sorted(rng.sample(others, min(max_per_parent - 1, len(others))))]


def _row(parent: dict[str, Any], parts: dict[str, tuple[int, Variant]], *, model: str,
         version: str, rephrased_test: bool) -> dict[str, Any]:
    texts = {role: parts[role][1].text for role in ROLES}
    rephrased = any(parts[role][0] > 0 for role in ROLES)
    out = {k: parent[k] for k in TRIPLET_SCHEMA.names}
    out.update(texts)
    out.update({
        "row_id": row_id(texts["prompt"], texts["chosen"], texts["rejected"]),
        "chosen_raw": parts["chosen"][1].raw, "rejected_raw": parts["rejected"][1].raw,
        "chosen_cache_key": parts["chosen"][1].cache_key,
        "rejected_cache_key": parts["rejected"][1].cache_key,
        "phase": "augment" if rephrased else parent["phase"],
        "parent_row_id": parent["row_id"],
        "prompt_variant": parts["prompt"][0], "chosen_variant": parts["chosen"][0],
        "rejected_variant": parts["rejected"][0], "rephrased_test": rephrased_test,
        "rephraser_model": model if rephrased else "",
        "rephrase_version": version if rephrased else "",
        "prompt_cache_key": parts["prompt"][1].cache_key,
    })
    return out


def run_augment(triplets_dir: Path, out_dir: Path, test_out_dir: Path, metrics_path: Path,
                params: AugmentParams, client: Any, *, classify: Any = None) -> dict[str, Any]:
    """Augment the train split of ``triplets_dir`` into ``out_dir``; rephrased test prompts
    into ``test_out_dir``; the report into ``metrics_path``.

    Returns:
        The metrics mapping (also written to ``metrics_path``).

    Raises:
        SchemaError: ``triplets_dir`` is not a valid triplet shard set.
        QualityGateError: more than ``max_llm_failure_rate`` of the LLM calls failed for
            good, or the variant drop rate is above ``max_variant_drop_rate`` (metrics
            written, no shards; old shards were removed at the start).
        LLMError: the rephraser is unreachable, out of quota or over ``max_cost_usd``.
    """
    if classify is None:
        from librachem.common.refusal import classify
    prompts = load_rephrase_prompts()
    table = read_shards(triplets_dir, TRIPLET_SCHEMA).to_pylist()
    for folder in (out_dir, test_out_dir):  # no complete-looking old output after a failure
        invalidate(folder)
    train = [r for r in table if r["split"] == "train"]
    test = [r for r in table if r["split"] == "test"]
    roles_n = {role: params.n_variants(role) for role in ROLES}
    jobs = plan_jobs(train, roles_n, params, prompts)
    test_jobs = plan_jobs(test, {"prompt": params.test_prompt_variants}, params, prompts)
    done = complete_all(client, [j.request for j in jobs + test_jobs], params.chunk_size,
                        "augment")
    model = next((c.model_id for c in done.values() if c.ok and c.model_id),
                 params.rephraser.model)
    drops = {role: Counter() for role in ROLES}
    kept = resolve_variants(train, jobs, done, params, classify, drops)
    test_drops = {role: Counter() for role in ROLES}
    test_kept = resolve_variants(test, test_jobs, done, params, classify, test_drops)

    # Rephrased test prompts (references = the parent's answers).
    test_rows = []
    for parent in test:
        for v, variant in kept_list(test_kept, parent, "prompt")[1:]:
            parts = {"prompt": (v, variant),
                     "chosen": kept_list(test_kept, parent, "chosen")[0],
                     "rejected": kept_list(test_kept, parent, "rejected")[0]}
            test_rows.append(_row(parent, parts, model=model, version=prompts.version,
                                  rephrased_test=True))
    decontam = NearDuplicateIndex(params.decontam_threshold, shingle=params.shingle,
                                  num_perm=params.num_perm)
    decontam.add_all((f"t{i}", r["prompt"]) for i, r in enumerate(test + test_rows))

    rows, seen = [], set()
    counts = Counter()
    contaminated_prompts: dict[str, bool] = {}
    for parent in train:
        lists = {role: kept_list(kept, parent, role) for role in ROLES}
        rng = derived_rng(params.seed, "combine", parent["row_id"])
        combos = combine(*[[v for v, _ in lists[role]] for role in ROLES], params.combination,
                         params.max_per_parent, rng)
        for combo in combos:
            parts = {role: next(p for p in lists[role] if p[0] == idx)
                     for role, idx in zip(ROLES, combo)}
            row = _row(parent, parts, model=model, version=prompts.version,
                       rephrased_test=False)
            if row["row_id"] in seen:
                counts["exact_duplicate"] += 1
                continue
            if same_text(row["chosen"], row["rejected"]):  # no preference signal
                counts["identical_pair"] += 1
                continue
            prompt = row["prompt"]
            if prompt not in contaminated_prompts:
                contaminated_prompts[prompt] = bool(decontam.query(prompt))
            if contaminated_prompts[prompt]:
                counts["contaminated"] += 1
                continue
            seen.add(row["row_id"])
            rows.append(row)

    asked = len(jobs)
    dropped = sum(sum(c.values()) for c in drops.values())
    per_parent = Counter(r["parent_row_id"] for r in rows)
    metrics = {
        "rows_in": len(train),
        "test_rows_in": len(test),
        "rows_out": len(rows),
        "originals_out": sum(r["phase"] != "augment" for r in rows),
        "variants_per_parent": round(len(rows) / len(per_parent), 4) if per_parent else 0.0,
        "variants_requested": {role: len(train) * roles_n[role] for role in ROLES},
        "variants_kept": {role: sum(len(kept_list(kept, p, role)) - 1 for p in train)
                          for role in ROLES},
        "variant_drops": {role: {k: int(drops[role][k]) for k in VARIANT_REASONS}
                          for role in ROLES},
        "variant_drop_rate": round(dropped / asked, 6) if asked else 0.0,
        "exact_duplicates": int(counts["exact_duplicate"]),
        "identical_pairs": int(counts["identical_pair"]),
        "contaminated": int(counts["contaminated"]),
        "rephrased_test_rows": len(test_rows),
        "rephrased_test_drops": {k: int(test_drops["prompt"][k]) for k in VARIANT_REASONS},
        "rows_by_label": {lab: sum(r["label"] == lab for r in rows)
                          for lab in ("legitimate", "illegitimate")},
        "llm": {k: float(v) for k, v in sorted((client.stats() if hasattr(client, "stats")
                                                 else {}).items())},
    }
    if hasattr(client, "failure_report"):
        metrics["llm_failures"] = client.failure_report()
    write_json(metrics_path, metrics)
    log.info("augment: %d train parents -> %d rows; %d rephrased test prompts; drops %s",
             len(train), len(rows), len(test_rows),
             {role: dict(c) for role, c in drops.items()})
    check_failure_rate("augment", "augment.max_llm_failure_rate", client,
                       params.max_llm_failure_rate, metrics_path)
    if metrics["variant_drop_rate"] > params.max_variant_drop_rate:
        raise QualityGateError(
            f"augment dropped {dropped}/{asked} variants (rate {metrics['variant_drop_rate']:.3f}"
            f" > augment.max_variant_drop_rate {params.max_variant_drop_rate}); see "
            f"{metrics_path}")
    meta = {"stage": "augment", "params": params.model_dump(mode="json"),
            "rephrase_version": prompts.version, "versions": package_versions()}
    write_shards(out_dir, {"train": rows_to_table(rows, AUGMENTED_SCHEMA)}, AUGMENTED_SCHEMA,
                 rows_per_shard=params.rows_per_shard, meta=meta)
    write_shards(test_out_dir, {"test": rows_to_table(test_rows, AUGMENTED_SCHEMA)},
                 AUGMENTED_SCHEMA, rows_per_shard=params.rows_per_shard, meta=meta)
    return metrics


def kept_list(kept: dict[tuple[str, str], list[tuple[int, Variant]]], parent: dict[str, Any],
              role: str) -> list[tuple[int, Variant]]:
    """Kept variants of one parent's role, original first."""
    return kept[(parent["row_id"], role)]
