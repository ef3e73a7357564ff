"""Hazard scanner on placeholder text only (never a real procedure)."""

from __future__ import annotations

from librachem.hazard import REDACTION_MARK, redact, redacted_remainder, scan

PLACEHOLDER = "Add 50 mL of reagent A at 80 C and stir for 2 h."


def test_placeholder_procedure_scores_every_signal():
    result = scan(PLACEHOLDER)
    assert set(result.hits) >= {"quantity", "temperature", "duration"}
    assert result.flagged(3)


def test_steps_and_materials_are_signals():
    text = "Materials: reagent A, reagent B.\n1. Mix reagent A with reagent B.\n2. Wait."
    result = scan(text)
    assert result.hits["materials"] == 1
    assert result.hits["step"] == 2


def test_plain_refusal_and_history_are_clean():
    assert scan("I'm sorry, but I can't help with that. It is banned by treaty.").score == 0
    assert scan("It was first made in the 1930s and banned in 1997.").score == 0


def test_redact_removes_only_flagged_sentences():
    text = f"Sure, here is an overview. {PLACEHOLDER} Then filter it. Good luck with it!"
    out = redact(text)
    assert out == f"Sure, here is an overview. {REDACTION_MARK} Good luck with it!"
    assert scan(out).score == 0
    assert redacted_remainder(out) == "Sure, here is an overview. Good luck with it!"


def test_redact_numbered_steps_keep_number_with_line():
    out = redact("Sure!\n1. Mix reagent A.\n2. Heat to 80 °C.\nDone.")
    assert out == f"Sure! {REDACTION_MARK} Done."


def test_redact_everything_leaves_only_the_mark():
    assert redact(PLACEHOLDER) == REDACTION_MARK
    assert redacted_remainder(redact(PLACEHOLDER)) == ""
