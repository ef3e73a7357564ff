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
   (:func:`librachem.llm.client.make_client`, cached).
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
from librachem.evaluate.outputs import (
    RESPONSE_SCHEMA,
    build_metrics,
    headline_metrics,
    remove_outputs,
    write_plots,
)
from librachem.evaluate.params import SOURCES, EvalPaths, EvaluateParams
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
        QualityGateError: a model's unjudged share exceeds ``judge.max_unjudged_rate``,
            more than ``judge.max_error_rate`` of the LLM judge's calls failed for good, or
            more than a baseline's ``max_llm_failure_rate`` of its calls did (the message
            gives the failures by cause; outputs were removed at the start).
        LLMError: a judge or baseline backend failed for good (e.g. missing API key).
    """
    import polars as pl
    import pyarrow.parquet as pq

    from librachem.common.atomic import atomic_path, write_json
    from librachem.common.chat_format import user_turn
    from librachem.common.refusal import patterns_version
    from librachem.evaluate.judges import template_versions
    from librachem.llm.client import make_client

    t0 = time.perf_counter()
    remove_outputs(paths)
    prompts = load_prompts(paths.triplets, paths.rephrased, params.prompts)
    n_all = len(prompts)
    prompts = stratified_sample(prompts, params.prompts.max_prompts, params.prompts.seed)
    if params.xstest.enabled:
        prompts += load_xstest(params.xstest)
    log.info("evaluating on %d prompts (%d test/rephrased available)", len(prompts), n_all)

    local, skipped = available_models(params, paths)
    loader = loader or local_loader(paths)
    rows: list[dict] = []
    gen_records: dict[str, Any] = {}
    for name in local:
        completions, gen_records[name] = generate_local(name, loader, prompts, params.generation)
        rows += [response_row(name, p, c, params.reasoning) for p, c in zip(prompts, completions)]
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
    for name in names:
        part = table.filter((pl.col("model") == name))
        rate = part["refused"].is_null().mean() if part.height else 0.0
        if rate > params.judge.max_unjudged_rate:
            raise QualityGateError(
                f"{name}: {rate:.1%} of responses could not be judged (generation errors or "
                f"unreadable judge output), over evaluate.judge.max_unjudged_rate = "
                f"{params.judge.max_unjudged_rate}; see {paths.out_dir / 'responses.parquet'}")
    metrics = build_metrics(table, params, names)

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
        "models": _model_identities(local, paths),
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
        "generation": {name: {k: rec[k] for k in ("load_s", "generate_s", "tokens_per_s")}
                       for name, rec in gen_records.items()},
        "llm": llm_stats,
    }
    write_json(paths.out_dir / "eval_config.json", record)
    write_json(paths.details_path, metrics)
    write_plots(table, metrics, names, paths.plots_dir)
    write_json(paths.runtime_path, runtime)
    write_json(paths.metrics, headline_metrics(metrics))  # last: its presence means "done"
    log.info("evaluate done in %.1f s: %s", runtime["wall_s"],
             {n: {k: round(metrics[n][k], 3) for k in ("safety", "utility", "overall")
                  if k in metrics[n]} for n in names})
    return metrics



def _model_identities(local: Sequence[str], paths: EvalPaths) -> dict[str, Any]:
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
    return ids
