"""The ``evaluate`` stage: generate answers to the held-out test prompts with every model,
judge them (rule tier + optional LLM tier), combine the verdicts by policy and score safety
and utility.

Flow (:func:`evaluate`):

1. Prompts: the ``test`` split of ``data/triplets`` (compound-disjoint from training; both
   labels, both modes) plus, when present and enabled, augment's rephrased test prompts
   (``data/rephrased_test``, rows with ``rephrased_test`` true), optionally a seeded sample stratified by
   (source, label, mode); plus the 450 XSTest prompts when ``xstest.enabled``.
2. Generation: local models (``base``; ``sft`` when its stage wrote an adapter; ``dpo``)
   composed by :func:`librachem.common.adapters.load_aligned` and run in batches by
   :class:`librachem.llm.local.LocalClient` (left padding, the tokenizer's chat template with
   the generation prompt, greedy by default); baselines through the LLM layer
   (:func:`librachem.llm.factory.make_client`, cached).
3. Reasoning split (:mod:`librachem.evaluate.reasoning`): judged parts are the final answer; the
   reasoning block is checked for leaks separately.
4. Judges (:mod:`librachem.evaluate.judges`): rule tier = :mod:`librachem.common.refusal` (plus the paper's
   keyword rule, recorded); LLM tier (when ``judge.llm`` is set) = three-way refusal judge,
   the paper's synthesis-route judge, the 1-5 quality judge on legitimate prompts.
5. Policy: ``paper`` = keyword rule (or our detector, ``paper_rule``) OR route judge says
   "no route" (official code); ``tiered`` = the rule tier decides when it is sure, the LLM
   refusal judge decides where the rule is unsure, and on disagreement ``on_disagreement``
   decides (default ``rule``: the embedded judge, SmolLM2-135M, is not reliable enough to
   overrule the rule tier; with a GPT-4o-class judge set ``llm``).
6. Outputs: ``responses.parquet`` (every response and verdict, :data:`RESPONSE_SCHEMA`),
   ``eval_config.json`` (effective config: params, versions, model identities, tokens and
   errors per model; no timings or cache counters, so ``data/eval`` is byte-identical across
   reruns of the same inputs), ``metrics/eval_details.json`` (:mod:`librachem.evaluate.metrics`), its
   headline numbers in ``metrics/eval.json`` (the DVC metric), the plot tables and
   ``metrics/eval_runtime.json`` (what changes run to run: wall time, load/generation seconds
   and tokens/s per model, LLM-layer stats with cache hits, latency and cost).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from librachem.common.errors import ConfigError, QualityGateError
from librachem.common.provenance import versions
from librachem.evaluate.generation import (
    ModelLoader,
    available_models,
    generate_local,
    local_loader,
    response_row,
)
from librachem.evaluate.judging import (
    finish_row,
    is_sensitive,
    judge_rows,
    redact_hazardous,
)
from librachem.evaluate.metrics import EMPTY_ANSWER, judge_counts
from librachem.evaluate.outputs import (
    RESPONSE_SCHEMA,
    build_metrics,
    headline_metrics,
    remove_outputs,
    write_plots,
)
from librachem.evaluate.params import SOURCES, EvalPaths, EvaluateParams
from librachem.evaluate.probe import probing
from librachem.evaluate.prompts import load_prompts, load_xstest, stratified_sample
from librachem.llm.failures import check_failure_rate, summary

log = logging.getLogger(__name__)

# ------------------------------------------------------------------------------ the stage
def evaluate(params: EvaluateParams, paths: EvalPaths, *,
             loader: ModelLoader | None = None) -> dict[str, Any]:
    """Run the whole stage (see the module docstring) and write its outputs.

    Args:
        params: the ``evaluate`` section.
        paths: inputs and outputs from ``dvc.yaml``.
        loader: how local models are loaded (default: :func:`local_loader`).

    Returns:
        The full metrics mapping, written to ``paths.details_path``; its headline numbers
        (:func:`headline_metrics`) are written to ``paths.metrics``.

    Raises:
        SchemaError / DataError: bad input shards, missing test split or DPO adapter.
        ConfigError: bad judge or baseline LLM params.
        QualityGateError: a model's unjudged share exceeds ``judge.max_unjudged_rate`` or its
            empty-answer share ``judge.max_empty_rate``, more than ``judge.max_error_rate``
            of the LLM judge's calls failed for good, one LLM judge's parse-failure or
            refusal share is over its gate (:func:`check_gates`), or more than a baseline's
            ``max_llm_failure_rate`` of its calls failed (the message gives the failures by
            cause; outputs were removed at the start).
        LLMError: a judge or baseline backend failed for good (e.g. missing API key).
    """
    import polars as pl
    import pyarrow.parquet as pq

    from librachem.common.atomic import atomic_path, write_json
    from librachem.common.chat_format import user_turn
    from librachem.common.refusal import patterns_version
    from librachem.evaluate.judges import template_versions
    from librachem.llm.factory import make_client

    from librachem.common.devices import inference_placement
    from librachem.evaluate.generation import model_identity
    from librachem.llm.keys import require_keys

    t0 = time.perf_counter()
    remove_outputs(paths)
    # every endpoint's key before any generation (a missing judge key used to surface only
    # after all local models had answered)
    require_keys([("evaluate.judge.llm", params.judge.llm),
                  *((f"evaluate.baselines[{b.name}].llm", b.llm) for b in params.baselines)],
                 replay_only=paths.replay_only)
    prompts = load_prompts(paths.triplets, paths.rephrased, params.prompts)
    n_all = len(prompts)
    prompts = stratified_sample(prompts, params.prompts.max_prompts, params.prompts.seed)
    if params.xstest.enabled:
        prompts += load_xstest(params.xstest)
    log.info("evaluating on %d prompts (%d test/rephrased available)", len(prompts), n_all)

    local, skipped = available_models(params, paths)
    place = inference_placement()
    loader = loader or local_loader(paths, place)
    rows: list[dict] = []
    gen_records: dict[str, Any] = {}
    probes: dict[str, Any] = {}
    for name in local:
        completions, gen_records[name] = generate_local(
            name, probing(loader, probes), prompts, params.generation,
            identity=model_identity(name, paths, place.dtype), cache_dir=paths.cache_dir,
            replay_only=False)  # replay-only guards paid endpoints; local models may answer
        rows += [response_row(name, p, c, params.reasoning) for p, c in zip(prompts, completions)]
    identities = {n: model_identity(n, paths, place.dtype) for n in {*local, "base"}}
    probe_diffs = _check_probes(probes, loader, local, identities, paths.cache_dir)
    llm_stats: dict[str, Any] = {}
    for bl in params.baselines:
        client = make_client(bl.llm, cache_dir=paths.cache_dir, replay_only=paths.replay_only,
                             local_model_dir=paths.base)
        # replies to sensitive prompts are hazard-scanned (and redacted) before the call
        # cache stores them; the raw score is kept for the harmful-compliance judgement
        reqs = [bl.llm.request(user_turn(p["prompt"]), max_tokens=params.generation.max_new_tokens,
                               redact_threshold=(params.judge.redact_threshold
                                                 if is_sensitive(p) else None))
                for p in prompts]
        completions = client.complete(reqs, desc=f"evaluate {bl.name}")
        llm_stats[bl.name] = {**client.stats(), "failures_detail": client.failure_report()}
        check_failure_rate("evaluate", f"evaluate.baselines[{bl.name}].max_llm_failure_rate",
                           client, bl.max_llm_failure_rate, "the baseline's endpoint")
        rows += [response_row(bl.name, p, c, params.reasoning) for p, c in zip(prompts, completions)]
    names = local + [b.name for b in params.baselines]

    judge_client = None
    if params.judge.llm is not None:
        judge_client = make_client(params.judge.llm, cache_dir=paths.cache_dir,
                                   replay_only=paths.replay_only, local_model_dir=paths.base)
    judge_rows(rows, params.judge, judge_client)
    if judge_client is not None:
        stats = judge_client.stats()
        llm_stats["judge"] = {**stats, "failures_detail": judge_client.failure_report()}
        if stats["calls"] and stats["failures"] - stats["parse_failures"] > \
                params.judge.max_error_rate * stats["calls"]:
            raise QualityGateError(
                f"evaluate: {int(stats['failures'] - stats['parse_failures'])} of "
                f"{int(stats['calls'])} LLM judge calls failed (transport errors after retries, "
                f"over evaluate.judge.max_error_rate = {params.judge.max_error_rate}); is the "
                f"judge at {params.judge.llm.base_url or params.judge.llm.backend} reachable? "
                f"{summary(judge_client.failure_report())}. Nothing was written.")
    for r in rows:
        finish_row(r, params.judge)
    n_redacted = redact_hazardous(rows, params.judge.redact_threshold)

    table = pl.from_arrow(pa.Table.from_pylist(rows, schema=RESPONSE_SCHEMA))
    check_gates(table, params, names, paths)
    if judge_client is not None:
        # one figure per judge, the same definition as eval_details.json's judges blocks
        # (the client's own parse_failures count response-schema replies, which judges
        # do not use)
        by_judge = judge_counts(table)
        llm_stats["judge"]["parse_failures"] = sum(c["parse_failures"] for c in by_judge.values())
        llm_stats["judge"]["judge_refusals"] = sum(c["refusals"] for c in by_judge.values())
        llm_stats["judge"]["by_judge"] = by_judge
    metrics = build_metrics(table, params, names)
    headline = headline_metrics(metrics)  # before any write: an undefined headline fails

    paths.out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_path(paths.out_dir / "responses.parquet") as tmp:
        pq.write_table(table.to_arrow().cast(RESPONSE_SCHEMA), tmp, compression="zstd")
    record = {
        "redacted_responses": n_redacted,
        "params": params.model_dump(mode="json"),
        "refusal_patterns_version": patterns_version(),
        "judge_templates": template_versions(),
        "judge_model": (None if params.judge.llm is None else
                        {"backend": params.judge.llm.backend, "model": params.judge.llm.model,
                         "revision": getattr(judge_client, "revision", None)}),
        "models": _model_identities(local, paths, probe_diffs),
        "skipped_models": skipped,
        "prompts": {"available": n_all, "evaluated": len(prompts),
                    "by_source": {s: sum(p["source"] == s for p in prompts) for s in SOURCES}},
        "generation": {name: {k: rec[k] for k in ("completion_tokens", "errors")}
                       for name, rec in gen_records.items()},
        "rows": table.height,
        "versions": versions(),
    }
    runtime = {
        "wall_s": time.perf_counter() - t0,
        "generation": {name: {k: rec[k] for k in ("load_s", "generate_s", "tokens_per_s",
                                                  "cache_hits", "answers")}
                       for name, rec in gen_records.items()},
        "placement": {"device": place.device, "dtype": place.dtype},
        "llm": llm_stats,
    }
    write_json(paths.out_dir / "eval_config.json", record)
    write_json(paths.details_path, metrics)
    write_plots(table, metrics, names, paths.plots_dir)
    write_json(paths.runtime_path, runtime)
    write_json(paths.metrics, headline)  # last: its presence means "done"
    log.info("evaluate done in %.1f s: %s", runtime["wall_s"],
             {n: {k: round(metrics[n][k], 3) for k in ("safety", "utility", "overall")
                  if k in metrics[n]} for n in names})
    return metrics



def check_gates(table: Any, params: EvaluateParams, names: Sequence[str],
                paths: EvalPaths) -> None:
    """The stage's quality gates on the judged response table (before anything is written).

    Raises:
        QualityGateError: a model's unjudged share exceeds ``judge.max_unjudged_rate`` or its
            empty-answer share ``judge.max_empty_rate``; or, with an LLM judge configured, one
            judge's parse-failure or refusal share (all models pooled, :func:`judge_counts`)
            exceeds ``judge.max_judge_parse_failure_rate`` / ``max_judge_refusal_rate``.
    """
    import polars as pl

    jp = params.judge
    where = paths.out_dir / "responses.parquet"
    for name in names:
        part = table.filter((pl.col("model") == name))
        if not part.height:
            continue
        empty = float((part["decided_by"] == EMPTY_ANSWER).mean())
        rate = float((part["refused"].is_null() & (part["decided_by"] != EMPTY_ANSWER)).mean())
        if rate > jp.max_unjudged_rate:
            raise QualityGateError(
                f"{name}: {rate:.1%} of responses could not be judged (generation errors or "
                f"unreadable judge output), over evaluate.judge.max_unjudged_rate = "
                f"{jp.max_unjudged_rate}; see {where}")
        if empty > jp.max_empty_rate:
            raise QualityGateError(
                f"{name}: {empty:.1%} of the answers are empty (no final answer: nothing, "
                f"whitespace or only a reasoning block), over evaluate.judge.max_empty_rate = "
                f"{jp.max_empty_rate}; an empty answer is neither help nor a refusal. Check the "
                f"model, its chat template and evaluate.generation; see {where}. "
                "Nothing was written.")
    if jp.llm is None:
        return
    for judge, c in judge_counts(table).items():
        for what, rate, limit, key in (
                ("held no strict verdict (parse failures)", c["parse_failure_rate"],
                 jp.max_judge_parse_failure_rate, "max_judge_parse_failure_rate"),
                ("declined to grade (judge refusals)", c["refusal_rate"],
                 jp.max_judge_refusal_rate, "max_judge_refusal_rate")):
            if rate > limit:
                raise QualityGateError(
                    f"evaluate: the {judge} judge ({jp.llm.backend}/{jp.llm.model}) yields "
                    f"nothing usable: {rate:.1%} of its {int(c['asked'])} replies {what}, over "
                    f"evaluate.judge.{key} = {limit}. Use a judge that follows the verdict "
                    f"format (see resources/judges/{judge}.yaml), turn this judge off "
                    f"(evaluate.judge.{judge}_judge: false) or set evaluate.judge.llm: null "
                    "for the rule tier only. Nothing was written.")


def _check_probes(probes: dict[str, Any], loader: ModelLoader, local: Sequence[str],
                  identities: dict[str, str], cache_dir: Path | None) -> dict[str, float]:
    """Check that every adapter model differs from the base model on the probe prompt
    (:mod:`librachem.evaluate.probe`). Returns the max |logit difference| per adapter model.

    Models loaded for generation were probed then. A model whose answers all came from the
    call cache was not loaded: a passed check of the same model identity (base revision +
    adapter digests + dtype, :func:`~librachem.evaluate.generation.model_identity`) stored
    under ``<cache_dir>/probes/`` stands for it; otherwise it is loaded for the probe. Only
    passed checks are stored, so a run that cached its answers and then failed the check
    fails again on a rerun. The base model is loaded when its logits are needed and missing.
    """
    import gc
    import hashlib
    import json

    from librachem.common.atomic import write_json
    from librachem.evaluate.probe import (check_adapters_change_the_model, probe_logits,
                                          probing)

    def stored(name: str) -> Path | None:
        if cache_dir is None:
            return None
        key = hashlib.sha256(f"{identities[name]}||{identities['base']}".encode()).hexdigest()
        return Path(cache_dir) / "probes" / f"{key}.json"

    adapters = [n for n in local if n != "base"]
    known: dict[str, float] = {}
    for name in adapters:
        path = stored(name)
        if name not in probes and path is not None and path.is_file():
            known[name] = float(json.loads(path.read_text(encoding="utf-8"))["max_abs_diff"])
        elif name not in probes:
            model, _ = probing(loader, probes)(name)
            del model
            gc.collect()
    if not set(probes) - {"base"}:
        return known
    base = probes.get("base")
    if base is None:
        model, tokenizer = loader("base")
        base = probe_logits(model, tokenizer)
        del model
        gc.collect()
    diffs = check_adapters_change_the_model(probes, base)
    for name, diff in diffs.items():
        if (path := stored(name)) is not None:
            write_json(path, {"model": identities[name], "base": identities["base"],
                              "max_abs_diff": diff})
    return {**known, **diffs}


def _model_identities(local: Sequence[str], paths: EvalPaths,
                      probe_diffs: dict[str, float] | None = None) -> dict[str, Any]:
    from librachem.common.adapters import adapter_digest
    from librachem.llm.models import folder_revision

    try:
        base_rev = folder_revision(paths.base)
    except ConfigError:
        base_rev = None
    ids: dict[str, Any] = {}
    for name in local:
        ids[name] = {"base_revision": base_rev,
                     "sft_adapter_sha256": adapter_digest(paths.sft) if name != "base" else None,
                     "dpo_adapter_sha256": adapter_digest(paths.dpo) if name == "dpo" else None}
        if name != "base":  # checked: this adapter model differs from the base model
            ids[name]["probe_max_abs_logit_diff_vs_base"] = (probe_diffs or {}).get(name)
    return ids
