"""How prompts are formatted for training and inference, and the pre-training template check.

Formats (params key ``format`` of the ``sft`` and ``dpo`` sections):

- ``chat`` (default): the model's own chat template (SmolLM2: ChatML, which inserts its default
  system prompt). Rows go to TRL in conversational form, so TRL renders them with
  ``tokenizer.apply_chat_template``, exactly as inference does.
- ``question_answer``: the paper's format (official code, ``sft_llama2.py`` / ``dpo_llama2.py``):
  ``"Question: {prompt}\\n\\nAnswer: {answer}"`` then EOS. It is installed as the tokenizer's chat
  template (:data:`QA_TEMPLATE`), so training, the saved tokenizer and inference
  (``apply_chat_template(..., add_generation_prompt=True)``) all render it the same way. The space
  after ``Answer:`` belongs to the answer, not the prompt: a prompt ending in a bare space would be
  tokenised as a lone space token at inference but merged into the first answer word in training
  (a train/inference mismatch), so the rendered prompt ends with ``Answer:``.

:func:`check_batches` inspects the batches the trainer will actually see (after TRL's own
tokenisation and collation) and counts, per sequence: a doubled BOS, a doubled EOS (also with
only whitespace tokens between: ChatML's ``<|im_end|>\\n<|im_end|>``), an EOS inside
the completion that is masked out of the loss (the pad = eos mistake), a completion without EOS that
was not cut by ``max_length``, and an empty completion. :func:`drop_unfit_rows` removes, and counts,
rows whose completion would be truncated to nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from librachem.common.errors import TrainingError

log = logging.getLogger(__name__)

Format = Literal["chat", "question_answer"]

QA_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ 'Question: ' + message['content'] + '\n\nAnswer:' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
    "{% else %}{{ raise_exception('question_answer format has no ' + message['role'] + ' role') }}"
    "{% endif %}{% endfor %}"
)
"""Jinja chat template of the paper's ``Question: ...\\n\\nAnswer: ...`` format (version 1)."""

TEMPLATE_VERSIONS = {"chat": "model", "question_answer": "qa-v1"}

# Failures that stop training; the other counters are informational.
FAILING = ("doubled_bos", "doubled_eos", "masked_eos", "missing_eos", "empty_completion")


def apply_format(tokenizer: Any, fmt: Format) -> Any:
    """Set up ``tokenizer`` (in place) for ``fmt`` and return it.

    Raises:
        TrainingError: ``chat`` with a tokenizer that has no chat template, or no EOS token.
    """
    if tokenizer.eos_token is None:
        raise TrainingError("the tokenizer has no eos_token; completions could never end")
    if fmt == "question_answer":
        tokenizer.chat_template = QA_TEMPLATE
    elif fmt == "chat":
        if not getattr(tokenizer, "chat_template", None):
            raise TrainingError("format 'chat' needs a tokenizer with a chat template; "
                                "use format: question_answer")
    else:
        raise TrainingError(f"unknown format {fmt!r}; expected 'chat' or 'question_answer'")
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def user_turn(prompt: str) -> list[dict[str, str]]:
    """The conversational prompt for one request: ``[{"role": "user", "content": prompt}]``."""
    return [{"role": "user", "content": prompt}]


def assistant_turn(text: str) -> list[dict[str, str]]:
    """The conversational completion: ``[{"role": "assistant", "content": text}]``."""
    return [{"role": "assistant", "content": text}]


def render_prompt(tokenizer: Any, prompt: str) -> str:
    """The exact text the model sees at inference (generation prompt included)."""
    return tokenizer.apply_chat_template(user_turn(prompt), tokenize=False,
                                         add_generation_prompt=True)


def prompt_length(tokenizer: Any, prompt: str) -> int:
    """Token count of the rendered inference prompt (no special tokens added twice)."""
    return len(tokenizer(render_prompt(tokenizer, prompt), add_special_tokens=False)["input_ids"])


@dataclass
class DropCounts:
    """Rows removed before training, by reason (never trained on, always reported)."""

    rows_in: int = 0
    empty_completion: int = 0
    prompt_fills_max_length: int = 0
    identical_pair: int = 0
    completion_budget_below_min: int = 0
    completion_cut_below_share: int = 0

    @property
    def dropped(self) -> int:
        return (self.empty_completion + self.prompt_fills_max_length + self.identical_pair
                + self.completion_budget_below_min + self.completion_cut_below_share)

    def as_dict(self) -> dict[str, int]:
        return {"rows_in": self.rows_in, "rows_kept": self.rows_in - self.dropped,
                "dropped_empty_completion": self.empty_completion,
                "dropped_prompt_fills_max_length": self.prompt_fills_max_length,
                "dropped_identical_pair": self.identical_pair,
                "dropped_completion_budget_below_min": self.completion_budget_below_min,
                "dropped_completion_cut_below_share": self.completion_cut_below_share}


def completion_length(tokenizer: Any, prompt: str, completion: str, prompt_tokens: int) -> int:
    """Tokens of ``completion`` as the trainer sees it: the rendered prompt + assistant turn
    minus the rendered inference prompt (end-of-turn marker included)."""
    full = tokenizer.apply_chat_template([*user_turn(prompt), *assistant_turn(completion)],
                                         tokenize=False)
    return len(tokenizer(full, add_special_tokens=False)["input_ids"]) - prompt_tokens


def drop_unfit_rows(rows: Sequence[dict[str, str]], tokenizer: Any, max_length: int,
                    completion_keys: Sequence[str], *, min_completion_tokens: int = 1,
                    min_completion_share: float = 0.0) -> tuple[list[dict[str, str]], DropCounts]:
    """Remove, and count by reason, rows unfit for training.

    Reasons, checked in this order: an empty completion; an identical pair (``chosen`` and
    ``rejected`` both among ``completion_keys`` and the same text after whitespace/case
    normalisation: zero preference signal); a prompt that alone fills ``max_length``; a
    completion budget (``max_length`` minus prompt tokens) below ``min_completion_tokens``;
    a completion that ``max_length`` would cut to less than ``min_completion_share`` of its
    tokens (TRL truncates ``keep_start``: the end of the completion is lost, so a DPO pair
    cut to its first few tokens compares two near-identical prefixes).

    Args:
        rows: dicts with a ``prompt`` string and the string columns in ``completion_keys``.
        max_length: the trainer's ``max_length`` (prompt + completion tokens).
        min_completion_tokens: the smallest completion budget kept (tokens).
        min_completion_share: the smallest kept share (0..1) of each completion's tokens.

    Returns:
        The kept rows (order kept) and the counts. TRL would silently drop a row whose prompt
        alone reaches ``max_length``; we drop it first so the count is ours to report.
    """
    from librachem.common.text import same_text

    counts = DropCounts(rows_in=len(rows))
    pair = "chosen" in completion_keys and "rejected" in completion_keys
    kept = []
    for row in rows:
        if any(not str(row[key]).strip() for key in completion_keys):
            counts.empty_completion += 1
            continue
        if pair and same_text(row["chosen"], row["rejected"]):
            counts.identical_pair += 1
            continue
        n_prompt = prompt_length(tokenizer, row["prompt"])
        budget = max_length - n_prompt
        if budget <= 0:
            counts.prompt_fills_max_length += 1
        elif budget < min_completion_tokens:
            counts.completion_budget_below_min += 1
        elif min_completion_share > 0 and any(
                budget < min_completion_share * completion_length(
                    tokenizer, row["prompt"], row[key], n_prompt)
                for key in completion_keys):
            counts.completion_cut_below_share += 1
        else:
            kept.append(row)
    return kept, counts


@dataclass
class CheckReport:
    """Result of :func:`check_batches`: counts per issue and a few decoded examples."""

    sequences: int = 0
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(
        (*FAILING, "truncated_by_max_length"), 0))
    examples: dict[str, list[str]] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return self.sequences > 0 and not any(self.counts[k] for k in FAILING)

    def failures(self) -> list[str]:
        return [f"{k}: {self.counts[k]}" for k in FAILING if self.counts[k]]

    def as_dict(self) -> dict[str, Any]:
        return {"sequences_checked": self.sequences, "counts": dict(self.counts),
                "failing_checks": list(FAILING), "ok": self.ok, "examples": self.examples}


def _runs(ids: Sequence[int], token: int | None, blank_ids: Collection[int] = ()) -> bool:
    """Whether ``token`` occurs twice in a row, whitespace-only tokens between ignored."""
    if token is None:
        return False
    solid = [i for i in ids if i not in blank_ids]
    return any(a == b == token for a, b in zip(solid, solid[1:]))


def check_sequence(ids: Sequence[int], loss_mask: Sequence[int], *, bos_id: int | None,
                   eos_id: int, max_length: int | None,
                   blank_ids: Collection[int] = ()) -> list[str]:
    """Issues of one unpadded sequence (prompt + completion).

    Args:
        ids: token ids without padding.
        loss_mask: 1 where the token is a training target (completion), same length as ``ids``.
        max_length: the trainer's limit; a completion without EOS at exactly this length counts as
            ``truncated_by_max_length`` (informational) instead of ``missing_eos``.
        blank_ids: ids of whitespace-only tokens, skipped when looking for a doubled BOS/EOS:
            ChatML renders ``<|im_end|>\n``, so a trainer that appends its own EOS yields
            ``<|im_end|>\n<|im_end|>``, a doubled end marker with a newline between.

    Returns:
        Names of the issues found (subset of :data:`FAILING` plus ``truncated_by_max_length``).
    """
    issues = []
    if _runs(ids, bos_id, blank_ids):
        issues.append("doubled_bos")
    if _runs(ids, eos_id, blank_ids):
        issues.append("doubled_eos")
    targets = [i for i, m in enumerate(loss_mask) if m]
    if not targets:
        return [*issues, "empty_completion"]
    start = targets[0]
    eos_in_completion = [i for i in range(start, len(ids)) if ids[i] == eos_id]
    if any(not loss_mask[i] for i in eos_in_completion):
        issues.append("masked_eos")
    if not eos_in_completion:
        if max_length is not None and len(ids) >= max_length:
            issues.append("truncated_by_max_length")
        else:
            issues.append("missing_eos")
    return issues


def check_batches(batches: Iterable[dict[str, Any]], tokenizer: Any, *,
                  max_length: int | None, max_examples: int = 3) -> CheckReport:
    """Run :func:`check_sequence` over collated batches as the trainer sees them.

    Args:
        batches: dicts of tensors with ``input_ids`` and ``attention_mask`` (B, T) and either
            ``completion_mask`` (TRL DPO collator) or ``labels`` (-100 = not a target; SFT collator).
            Padding is removed with ``attention_mask`` (right padding).
        tokenizer: supplies ``bos_token_id``, ``eos_token_id`` and ``decode`` for the examples.

    Returns:
        A :class:`CheckReport`; check ``.ok``.
    """
    report = CheckReport()
    blank: dict[int, bool] = {}

    def blank_ids(ids: Sequence[int]) -> set[int]:
        for i in set(ids) - blank.keys():
            blank[i] = i not in special and not tokenizer.decode([i]).strip()
        return {i for i in ids if blank[i]}

    special = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    for batch in batches:
        ids_b = batch["input_ids"].tolist()
        att_b = batch["attention_mask"].tolist()
        if "completion_mask" in batch:
            mask_b = batch["completion_mask"].tolist()
        else:
            mask_b = (batch["labels"] != -100).long().tolist()
        for ids, att, mask in zip(ids_b, att_b, mask_b, strict=True):
            n = sum(att)
            ids, mask = ids[:n], mask[:n]
            report.sequences += 1
            for issue in check_sequence(ids, mask, bos_id=tokenizer.bos_token_id,
                                        eos_id=tokenizer.eos_token_id, max_length=max_length,
                                        blank_ids=blank_ids(ids)):
                report.counts[issue] += 1
                shown = report.examples.setdefault(issue, [])
                if len(shown) < max_examples:
                    shown.append(tokenizer.decode(ids[-48:]))
    return report


def check_trainer_sample(trainer: Any, tokenizer: Any, *, sample: int,
                         max_length: int | None) -> CheckReport:
    """Collate the first ``sample`` rows of ``trainer.train_dataset`` with the trainer's own
    collator and check them (the exact tensors training would use)."""
    dataset = trainer.train_dataset
    n = min(sample, len(dataset))
    columns = [c for c in ("prompt_ids", "chosen_ids", "rejected_ids", "input_ids", "labels")
               if c in dataset.column_names]
    rows = dataset.select(range(n)).select_columns(columns)
    batch_size = 8
    batches = (trainer.data_collator([rows[i] for i in range(s, min(s + batch_size, n))])
               for s in range(0, n, batch_size))
    return check_batches(batches, tokenizer, max_length=max_length)
