"""Prompt formats and the pre-training template check, on crafted token sequences."""

import pytest
import torch

from librachem.common.chat_format import (
    QA_TEMPLATE,
    apply_format,
    check_batches,
    check_sequence,
    completion_length,
    drop_unfit_rows,
    prompt_length,
    render_prompt,
)
from librachem.common.errors import TrainingError
from tests.tiny_model import tiny_tokenizer

BOS, EOS, NL = 1, 2, 198  # SmolLM2: <|im_start|>, <|im_end|> (= pad), "\n"


def _seq(prompt, completion):
    return prompt + completion, [0] * len(prompt) + [1] * len(completion)


def test_clean_chatml_sequence_passes():
    ids, mask = _seq([BOS, 50, 51, EOS, NL, BOS, 60, NL], [70, 71, EOS, NL])
    assert check_sequence(ids, mask, bos_id=BOS, eos_id=EOS, max_length=64) == []


def test_doubled_eos_is_caught():
    ids, mask = _seq([BOS, 50, EOS, NL, BOS, 60, NL], [70, 71, EOS, EOS, NL])
    assert "doubled_eos" in check_sequence(ids, mask, bos_id=BOS, eos_id=EOS, max_length=64)


def test_doubled_bos_is_caught():
    ids, mask = _seq([BOS, BOS, 50, 51], [70, EOS])
    assert check_sequence(ids, mask, bos_id=BOS, eos_id=EOS, max_length=64) == ["doubled_bos"]


def test_masked_final_eos_is_caught():
    # The classic pad = eos mistake: labels[input_ids == pad_id] = -100 also hides the real EOS.
    ids, mask = _seq([BOS, 50, 51], [70, 71, EOS])
    mask[-1] = 0
    assert check_sequence(ids, mask, bos_id=BOS, eos_id=EOS, max_length=64) == ["masked_eos"]


def test_missing_eos_vs_truncated():
    ids, mask = _seq([BOS, 50], [70, 71])
    assert check_sequence(ids, mask, bos_id=BOS, eos_id=EOS, max_length=64) == ["missing_eos"]
    assert check_sequence(ids, mask, bos_id=BOS, eos_id=EOS,
                          max_length=4) == ["truncated_by_max_length"]


def test_empty_completion_is_caught():
    ids, mask = _seq([BOS, 50, 51], [])
    assert check_sequence(ids, mask, bos_id=BOS, eos_id=EOS, max_length=64) == ["empty_completion"]


def test_check_batches_on_pad_eq_eos_labels():
    """A collator that masks labels where input_ids == pad_id (pad = eos) fails the check;
    TRL-style labels pass. Padding is stripped with attention_mask."""
    tok = tiny_tokenizer()
    rows = [[BOS, 50, 51, 70, EOS], [BOS, 50, 80, 81, 82, EOS]]
    width = max(map(len, rows))
    ids = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in rows])
    att = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in rows])
    good = ids.clone()
    good[:, :2] = -100
    good[att == 0] = -100
    report = check_batches([{"input_ids": ids, "attention_mask": att, "labels": good}], tok,
                           max_length=64)
    assert report.ok and report.sequences == 2
    bad = good.masked_fill(ids == tok.pad_token_id, -100)
    report = check_batches([{"input_ids": ids, "attention_mask": att, "labels": bad}], tok,
                           max_length=64)
    assert not report.ok and report.counts["masked_eos"] == 2
    assert report.as_dict()["examples"]["masked_eos"]


def test_question_answer_format_matches_paper_and_is_a_prefix():
    tok = apply_format(tiny_tokenizer(), "question_answer")
    assert tok.chat_template == QA_TEMPLATE
    prompt = render_prompt(tok, "How is aspirin made?")
    assert prompt == "Question: How is aspirin made?\n\nAnswer:"
    full = tok.apply_chat_template(
        [{"role": "user", "content": "How is aspirin made?"},
         {"role": "assistant", "content": "Acetylate salicylic acid."}], tokenize=False)
    assert full == prompt + " Acetylate salicylic acid." + tok.eos_token
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    f_ids = tok(full, add_special_tokens=False)["input_ids"]
    assert f_ids[: len(p_ids)] == p_ids  # inference prompt tokens = training prompt tokens
    with pytest.raises(Exception, match="no system role"):
        tok.apply_chat_template([{"role": "system", "content": "x"}], tokenize=False)


def test_chat_format_uses_model_template():
    tok = apply_format(tiny_tokenizer(), "chat")
    assert render_prompt(tok, "hi").endswith("<|im_start|>user\nhi<|im_end|>\n"
                                              "<|im_start|>assistant\n")
    bare = tiny_tokenizer()
    bare.chat_template = None
    with pytest.raises(TrainingError, match="chat template"):
        apply_format(bare, "chat")


def test_drop_unfit_rows_counts_each_reason():
    tok = apply_format(tiny_tokenizer(), "chat")
    rows = [{"prompt": "short", "chosen": "ok", "rejected": "no"},
            {"prompt": "short", "chosen": "  ", "rejected": "no"},
            {"prompt": "word " * 200, "chosen": "ok", "rejected": "no"}]
    kept, counts = drop_unfit_rows(rows, tok, 64, ["chosen", "rejected"])
    assert kept == rows[:1]
    assert counts.as_dict() == {"rows_in": 3, "rows_kept": 1, "dropped_empty_completion": 1,
                                "dropped_prompt_fills_max_length": 1,
                                "dropped_identical_pair": 0,
                                "dropped_completion_budget_below_min": 0,
                                "dropped_completion_cut_below_share": 0}


def test_doubled_eos_with_whitespace_between_is_caught():
    """ChatML renders ``<|im_end|>\\n``; a trainer that appends its own EOS gives
    ``<|im_end|>\\n<|im_end|>`` (issue 18 point 8)."""
    ids, mask = _seq([BOS, 50, EOS, NL, BOS, 60, NL], [70, 71, EOS, NL, EOS])
    assert "doubled_eos" in check_sequence(ids, mask, bos_id=BOS, eos_id=EOS, max_length=64,
                                           blank_ids={NL})
    tok = tiny_tokenizer()
    att = torch.ones(1, len(ids), dtype=torch.long)
    batch = {"input_ids": torch.tensor([ids]), "attention_mask": att,
             "completion_mask": torch.tensor([mask])}
    report = check_batches([batch], tok, max_length=64)
    assert not report.ok and report.counts["doubled_eos"] == 1
    # a clean ChatML conversation (end marker, newline, next turn) still passes
    ids, mask = _seq([BOS, 50, EOS, NL, BOS, 60, NL], [70, 71, EOS, NL])
    batch = {"input_ids": torch.tensor([ids]), "attention_mask": torch.ones(1, len(ids),
                                                                            dtype=torch.long),
             "completion_mask": torch.tensor([mask])}
    assert check_batches([batch], tok, max_length=64).ok


def test_identical_pairs_and_short_completion_budgets_are_dropped_and_counted():
    """Issue 18 point 5: no zero-signal pairs, no completions cut to a few tokens."""
    tok = apply_format(tiny_tokenizer(), "chat")
    answer = "Aspirin is made by acetylating salicylic acid with acetic anhydride. " * 2
    fine = {"prompt": "How is aspirin made?", "chosen": answer, "rejected": "I can't help."}
    same = {**fine, "rejected": "  " + answer.upper().replace(" ", "\n")}
    n_prompt = len(tok(render_prompt(tok, "x " * 40), add_special_tokens=False)["input_ids"])
    tight = {**fine, "prompt": "x " * 40}            # leaves max_length - n_prompt tokens
    rows = [fine, same, tight]
    kept, counts = drop_unfit_rows(rows, tok, n_prompt + 10, ["chosen", "rejected"],
                                   min_completion_tokens=12)
    assert counts.identical_pair == 1 and counts.completion_budget_below_min == 1
    assert kept == [fine]
    # SFT (chosen only): no pair to compare
    kept, counts = drop_unfit_rows(rows, tok, 512, ["chosen"])
    assert kept == rows and counts.dropped == 0
    # a budget that would cut the chosen answer to under half of its tokens
    p_len = prompt_length(tok, fine["prompt"])
    c_len = completion_length(tok, fine["prompt"], answer, p_len)
    assert c_len > 30
    max_length = p_len + c_len // 3                  # keeps a third of the chosen answer
    kept, counts = drop_unfit_rows([fine], tok, max_length, ["chosen", "rejected"],
                                   min_completion_tokens=4, min_completion_share=0.5)
    assert counts.as_dict()["dropped_completion_cut_below_share"] == 1 and kept == []
    kept, counts = drop_unfit_rows([fine], tok, max_length, ["chosen", "rejected"],
                                   min_completion_tokens=4, min_completion_share=0.25)
    assert kept == [fine]
