"""``librachem estimate``: what the LLM stages of the current params will ask and cost, before
anything is paid (issue 16).

Built from the params and the curated compounds only (offline, no API call, no model):

* the seeds table is rebuilt in memory with the ``seeds`` params (as the stage would);
* **generate**: the exact generator requests (:func:`librachem.generate.stage.chat_requests`);
* **augment**: the exact rephrasing requests of a triplet per generate request (an upper
  bound: generate drops some requests), with each answer to rephrase taken as empty (floor)
  or as ``max_tokens`` tokens long (ceiling), since the answers do not exist yet;
* **evaluate**: baseline calls per evaluated prompt (test requests, their rephrasings,
  XSTest) and LLM judge calls per response (refusal judge on every response, route judge on
  the chemistry ones, quality judge on the legitimate ones), responses taken as empty
  (floor) or ``max_new_tokens`` long (ceiling).

Prompt tokens are counted with the model's tokenizer (``tiktoken``; ``o200k_base`` for a
model tiktoken does not know) plus the chat format's 3 tokens per message and 3 for the
reply; where tiktoken cannot load its encoding (offline, no ``TIKTOKEN_CACHE_DIR``),
``len(text) / 4`` (OpenAI's rule of thumb) is used and the output says so.

Cost: list prices (:mod:`librachem.llm.pricing`): floor = prompts only, ceiling = prompts at
their ceiling + every reply at ``max_tokens``; ``expected`` = prompts between the two + half of
``max_tokens`` per reply. Wall time at the configured limits: calls x latency / concurrency,
but no faster than ``requests_per_minute`` or ``tokens_per_minute`` allow; latency = a
first-token time + expected reply tokens / a decode speed (options, printed).
"""

from __future__ import annotations

import functools
import logging
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from librachem.llm.base import ChatRequest
from librachem.llm.config import LLMParams

log = logging.getLogger(__name__)

XSTEST_PROMPTS = 450


@functools.cache
def _encoding(model: str) -> Any:
    """tiktoken's encoding for ``model`` (``o200k_base`` when unknown), ``None`` offline."""
    try:
        import tiktoken

        try:
            return tiktoken.encoding_for_model(model)
        except KeyError:
            return tiktoken.get_encoding("o200k_base")
    except Exception as exc:  # noqa: BLE001 - no encoding file reachable: approximate
        log.info("tiktoken encoding unavailable (%s): counting len/4", type(exc).__name__)
        return None


def tokenizer_name(model: str) -> str:
    enc = _encoding(model)
    return f"tiktoken {enc.name}" if enc is not None else "approximation len(text)/4 " \
        "(tiktoken could not load its encoding: offline? set TIKTOKEN_CACHE_DIR)"


def count_text(model: str, text: str) -> int:
    enc = _encoding(model)
    if enc is None:
        return math.ceil(len(text) / 4)
    return len(enc.encode(text, disallowed_special=()))


def count_request(req: ChatRequest) -> int:
    """Prompt tokens of a chat request: content tokens + 3 per message + 3 (reply primer)."""
    return sum(count_text(req.model, m.get("content", "")) + 3 for m in req.messages) + 3


@dataclass
class Part:
    """One LLM client's share of the work: calls, prompt tokens (floor/ceiling), output bound."""

    stage: str
    llm: LLMParams
    calls: int = 0
    prompt_low: int = 0
    prompt_high: int = 0
    output_bound: int = 0

    def add(self, reqs: Sequence[ChatRequest], extra_high: int = 0) -> None:
        """Count ``reqs`` (distinct ones); ``extra_high`` tokens per request at the ceiling."""
        from librachem.llm.batching import render_key

        unique = {render_key(r): r for r in reqs}  # what a stage sends once
        for r in unique.values():
            n = count_request(r)
            self.calls += 1
            self.prompt_low += n
            self.prompt_high += n + extra_high
            self.output_bound += r.max_tokens

    def figures(self, first_token_s: float, tokens_per_s: float) -> dict[str, Any]:
        from librachem.llm.pricing import load_prices

        llm = self.llm
        price = load_prices().price(llm.model) if llm.backend == "openai" else None
        mid = (self.prompt_low + self.prompt_high) / 2

        def cost(prompt: float, output: float) -> float | None:
            if llm.backend != "openai":
                return 0.0
            if price is None:
                return None
            return (prompt * price.input_per_m + output * price.output_per_m) / 1e6

        latency = first_token_s + (self.output_bound / 2 / max(self.calls, 1)) / tokens_per_s
        wall = self.calls * latency / llm.concurrency
        if llm.requests_per_minute:
            wall = max(wall, self.calls / llm.requests_per_minute * 60)
        if llm.tokens_per_minute:
            wall = max(wall, (mid + self.output_bound) / llm.tokens_per_minute * 60)
        return {"stage": self.stage, "backend": llm.backend, "model": llm.model,
                "calls": self.calls, "prompt_tokens": [self.prompt_low, self.prompt_high],
                "output_tokens_bound": self.output_bound,
                "cost_usd": {"floor": cost(self.prompt_low, 0),
                             "expected": cost(mid, self.output_bound / 2),
                             "ceiling": cost(self.prompt_high, self.output_bound)},
                "max_cost_usd": llm.max_cost_usd, "concurrency": llm.concurrency,
                "wall_s": round(wall, 1), "tokenizer": tokenizer_name(llm.model)}


def _seeds(params: dict[str, Any], compounds: Path) -> list[dict[str, Any]]:
    from librachem.common.config import validate_section
    from librachem.generate.requests import read_seeds
    from librachem.seeds.compounds import load_compounds
    from librachem.seeds.stage import SeedsParams, build_balanced, write_seeds_table

    table = build_balanced(load_compounds(compounds),
                           validate_section(SeedsParams, "seeds", params.get("seeds") or {}))
    with tempfile.TemporaryDirectory() as tmp:
        write_seeds_table(table, Path(tmp) / "balanced.parquet", {})
        return read_seeds(Path(tmp) / "balanced.parquet")


def estimate(params: dict[str, Any], compounds: Path) -> list[dict[str, Any]]:
    """Per LLM client (generate's generator, augment's rephraser, each evaluate baseline,
    the evaluate judge): the figures of :meth:`Part.figures` (see module docstring).

    Raises:
        ConfigError: a params section does not validate. DataError: bad compounds CSV.
    """
    from librachem.augment.rephrase import load_rephrase_prompts
    from librachem.augment.stage import AugmentParams, plan_jobs
    from librachem.common.config import validate_section
    from librachem.evaluate.judges import build_request
    from librachem.evaluate.params import EvaluateParams
    from librachem.generate.answers import KINDS_BY_LABEL, load_answer_prompts
    from librachem.generate.requests import (
        cap_requests,
        craft_requests,
        load_request_templates,
    )
    from librachem.generate.stage import GenerateParams, chat_requests

    gen = validate_section(GenerateParams, "generate", params.get("generate") or {})
    aug = validate_section(AugmentParams, "augment", params.get("augment") or {})
    ev = validate_section(EvaluateParams, "evaluate", params.get("evaluate") or {})
    seeds = _seeds(params, compounds)
    reqs = cap_requests(craft_requests(seeds, load_request_templates(), gen.intent_set, gen.seed),
                        gen.max_requests.model_dump(), gen.seed, gen.intent_weights)
    parts: list[Part] = []

    g = Part("generate", gen.generator)
    g.add([r for pair in chat_requests(reqs, load_answer_prompts(), gen) for r in pair])
    parts.append(g)

    # augment: one triplet per request (upper bound), answers empty at the floor
    rows = []
    for i, r in enumerate(reqs):
        kinds = KINDS_BY_LABEL[r.label]
        rows.append({**r.as_dict(), "row_id": f"r{i}", "chosen": "", "rejected": "",
                     "chosen_kind": kinds[0], "rejected_kind": kinds[1]})
    rephrase = load_rephrase_prompts()
    roles_n = {"prompt": aug.n_prompt_variants, "chosen": aug.n_chosen_variants,
               "rejected": aug.n_rejected_variants}
    a = Part("augment", aug.rephraser)
    train = [row for row in rows if row["split"] == "train"]
    test = [row for row in rows if row["split"] == "test"]
    jobs = plan_jobs(train, roles_n, aug, rephrase) + plan_jobs(
        test, {"prompt": aug.test_prompt_variants}, aug, rephrase)
    for job in jobs:  # keyed per job: empty answers would make distinct requests collide
        a.calls += 1
        n = count_request(job.request)
        a.prompt_low += n
        a.prompt_high += n + (0 if job.role == "prompt" else gen.generator.max_tokens)
        a.output_bound += job.request.max_tokens
    parts.append(a)

    # evaluate: prompts = test requests + their rephrasings + XSTest
    test_prompts = [r.prompt for r in reqs if r.split == "test"]
    legit = [r.prompt for r in reqs if r.split == "test" and r.label == "legitimate"]
    n_rephrased = len(test_prompts) * aug.test_prompt_variants if \
        ev.prompts.include_rephrased else 0
    chem = len(test_prompts) + n_rephrased
    n_all = chem + (XSTEST_PROMPTS if ev.xstest.enabled else 0)
    n_prompts = min(n_all, ev.prompts.max_prompts) if ev.prompts.max_prompts else n_all
    f = n_prompts / max(n_all, 1)  # a stratified sample keeps the shares
    for bl in ev.baselines:
        b = Part(f"evaluate:{bl.name}", bl.llm)
        sample = [bl.llm.request([{"role": "user", "content": p}],
                                 max_tokens=ev.generation.max_new_tokens) for p in test_prompts]
        b.add(sample)
        _scale(b, n_prompts / max(len(sample), 1))
        parts.append(b)
    if ev.judge.llm is not None:
        j = Part("evaluate:judge", ev.judge.llm)
        models = len(ev.models) + len(ev.baselines)
        resp = ev.generation.max_new_tokens
        mt = ev.judge.max_tokens
        groups = []
        if ev.judge.refusal_judge:
            groups.append(([build_request("refusal", ev.judge.llm, prompt=p, max_tokens=mt)
                            for p in test_prompts], n_prompts))
        if ev.judge.route_judge:
            groups.append(([build_request("route", ev.judge.llm, max_tokens=mt)], chem * f))
        if ev.judge.quality_judge:
            groups.append(([build_request("quality", ev.judge.llm, prompt=p, max_tokens=mt)
                            for p in legit], len(legit) * (1 + aug.test_prompt_variants) * f))
        for sample, total in groups:
            k = Part("", ev.judge.llm)
            k.add(sample, extra_high=resp)
            _scale(k, models * total / max(k.calls, 1))
            j.calls += k.calls
            j.prompt_low += k.prompt_low
            j.prompt_high += k.prompt_high
            j.output_bound += k.output_bound
        parts.append(j)
    return parts_figures(parts)


def _scale(p: Part, factor: float) -> None:
    """From a sample's counts to ``factor`` times as many calls of the same shape."""
    p.calls = round(p.calls * factor)
    p.prompt_low = round(p.prompt_low * factor)
    p.prompt_high = round(p.prompt_high * factor)
    p.output_bound = round(p.output_bound * factor)


_TIMING = {"first_token_s": 0.6, "tokens_per_s": 60.0}


def parts_figures(parts: list[Part]) -> list[dict[str, Any]]:
    return [p.figures(**_TIMING) for p in parts if p.calls]


def render(figures: list[dict[str, Any]]) -> str:
    """A human table plus totals (cost of unpriced models shown as ``?``)."""
    def usd(v: float | None) -> str:
        return "?" if v is None else f"${v:,.2f}"

    lines = [(f"{'stage':<18} {'model':<26} {'calls':>7} {'prompt tokens':>21} "
              f"{'output <=':>10} {'cost floor/expected/ceiling':>30} {'wall':>9}")]
    total = {"calls": 0, "floor": 0.0, "expected": 0.0, "ceiling": 0.0}
    unpriced = False
    for f in figures:
        c = f["cost_usd"]
        lines.append(
            f"{f['stage']:<18} {f['backend'] + ':' + f['model']:<26.26} {f['calls']:>7,} "
            f"{f['prompt_tokens'][0]:>10,}-{f['prompt_tokens'][1]:<10,} "
            f"{f['output_tokens_bound']:>10,} "
            f"{usd(c['floor']) + ' / ' + usd(c['expected']) + ' / ' + usd(c['ceiling']):>30} "
            f"{f['wall_s'] / 60:>7.1f} min")
        total["calls"] += f["calls"]
        for k in ("floor", "expected", "ceiling"):
            if c[k] is None:
                unpriced = True
            else:
                total[k] += c[k]
    lines.append(f"total: {total['calls']:,} calls; cost ${total['floor']:,.2f} (floor) / "
                 f"${total['expected']:,.2f} (expected) / ${total['ceiling']:,.2f} (ceiling)"
                 + (" + unpriced models" if unpriced else ""))
    tokenizers = sorted({f["tokenizer"] for f in figures})
    lines.append(f"tokens: {'; '.join(tokenizers)}. Wall time at the configured concurrency "
                 f"and limits, {_TIMING['first_token_s']} s to the first token and "
                 f"{_TIMING['tokens_per_s']:g} tokens/s (stages run one after another).")
    return "\n".join(lines)
