"""Rephrasing for ``augment``, pure parts: prompts, clean-up of replies, and the guards.

Prompts come from ``resources/augment/rephrase.yaml`` (versioned): variant ``i`` (1-based)
uses style ``i`` (cycling through the styles), with a one-pair few-shot in that style, so
greedy decoding gives distinct, reproducible variants.

Guards (each returns a drop reason or ``None``), applied to every variant:

=================== ==========================================================
``llm_error``       the call failed
``empty``           nothing left after clean-up
``unchanged``       the variant equals its source (after case/space folding)
``subject_lost``    TEXT mode: the compound name is missing (case-insensitive);
                    SMILES mode: no token of the text is a SMILES that RDKit
                    canonicalises to the source molecule
``length``          length ratio variant/source outside the params band
``hazard``          an illegitimate-side text scores over the hazard threshold
``refusal_flip``    a refusal no longer reads as one, or an answer now reads as one
=================== ==========================================================
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from librachem.common.errors import ConfigError

ROLES = ("prompt", "chosen", "rejected")
REASONS = ("llm_error", "empty", "unchanged", "subject_lost", "length", "hazard",
           "refusal_flip")

_PREFIX = re.compile(r"^\s*(?:(?:sure|okay|ok)[,!.]?\s*)?(?:here(?:'s| is)[^:\n]{0,60}:|"
                     r"(?:rewritten|rephrased|rewrite|text)(?:\s+text)?\s*:)\s*", re.I)
_SMILES_TOKEN = re.compile(r"[A-Za-z0-9@+\-\[\]\(\)=#$/\\%.:]{2,}")


@dataclass(frozen=True)
class Example:
    source: str
    rewrites: tuple[str, ...]


@dataclass(frozen=True)
class RephrasePrompts:
    version: str
    system: str
    user_template: str
    styles: tuple[str, ...]
    few_shot: dict[str, Example]  # prompt | refusal | answer


@lru_cache(maxsize=4)
def load_rephrase_prompts(path: str | None = None) -> RephrasePrompts:
    """Parse the rephrase prompts (default: packaged ``resources/augment/rephrase.yaml``).

    Raises:
        ConfigError: missing keys, or a few-shot example without one rewrite per style.
    """
    text = (Path(path).read_text("utf-8") if path else resources.files("librachem")
            .joinpath("resources", "augment", "rephrase.yaml").read_text("utf-8"))
    raw = yaml.safe_load(text)
    try:
        styles = tuple(raw["styles"])
        few = {k: Example(source=v["source"], rewrites=tuple(v["rewrites"]))
               for k, v in raw["few_shot"].items()}
        prompts = RephrasePrompts(version=str(raw["version"]), system=raw["system"].strip(),
                                  user_template=raw["user_template"], styles=styles,
                                  few_shot=few)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"rephrase prompts: missing or malformed key {exc}") from exc
    for name in ("prompt", "refusal", "answer"):
        if name not in few or len(few[name].rewrites) != len(styles):
            raise ConfigError(f"rephrase prompts: few_shot.{name} needs one rewrite per style")
    return prompts


def example_for(role: str, expect: str) -> str:
    """Which few-shot example a text uses: prompts -> ``prompt``, refusals -> ``refusal``,
    other answers -> ``answer``."""
    if role == "prompt":
        return "prompt"
    return "refusal" if expect == "refusal" else "answer"


def build_messages(prompts: RephrasePrompts, text: str, variant: int,
                   example: str) -> list[dict[str, str]]:
    """Messages asking for variant ``variant`` (1-based) of ``text``."""
    if variant < 1:
        raise ValueError("variant indices start at 1 (0 is the original)")
    style_index = (variant - 1) % len(prompts.styles)
    style = prompts.styles[style_index]
    shot = prompts.few_shot[example]
    return [
        {"role": "system", "content": prompts.system},
        {"role": "user", "content": prompts.user_template.format(style=style, text=shot.source)},
        {"role": "assistant", "content": shot.rewrites[style_index]},
        {"role": "user", "content": prompts.user_template.format(style=style, text=text)},
    ]


def clean(text: str | None, role: str) -> str | None:
    """Strip a chatty prefix ("Here is the rewritten text:") and wrapping quotes; prompts keep
    their first non-empty line only. ``None`` for a failed call."""
    if text is None:
        return None
    text = _PREFIX.sub("", text.strip()).strip()
    if role == "prompt":
        text = next((line.strip() for line in text.splitlines() if line.strip()), "")
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1].strip()
    return " ".join(text.split())


def _canonical(smiles: str) -> str | None:
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    mol = Chem.MolFromSmiles(smiles)
    return Chem.MolToSmiles(mol) if mol is not None else None


def keeps_subject(text: str, subject: str, mode: str, smiles: str | None) -> bool:
    """Whether ``text`` still names the compound (see module table, ``subject_lost``)."""
    if mode == "text":
        return subject.lower() in text.lower()
    if subject in text:
        return True
    target = _canonical(smiles or subject)
    if target is None:
        return False
    for token in _SMILES_TOKEN.findall(text):
        token = token.rstrip(".,:;")
        if not token.isalpha() or token.isupper():  # skip plain words
            if _canonical(token) == target:
                return True
    return False


def guard(variant: str | None, source: str, *, check_subject: bool, subject: str, mode: str,
          smiles: str | None, band: tuple[float, float], hazard_scan: Any | None,
          expect: str | None, classify: Any, accept_unsure: bool) -> str | None:
    """Run every guard on one variant; the first failing reason, or ``None`` to keep it.

    Args:
        hazard_scan: ``text -> bool`` (flagged) for illegitimate-side texts, else ``None``.
        expect: ``refusal`` / ``compliance`` for answers, ``None`` for prompts.
    """
    if variant is None:
        return "llm_error"
    if not variant:
        return "empty"
    if " ".join(variant.lower().split()) == " ".join(source.lower().split()):
        return "unchanged"
    if check_subject and not keeps_subject(variant, subject, mode, smiles):
        return "subject_lost"
    ratio = len(variant) / max(len(source), 1)
    if not band[0] <= ratio <= band[1]:
        return "length"
    if hazard_scan is not None and hazard_scan(variant):
        return "hazard"
    if expect is not None:
        verdict = classify(variant)
        if expect == "refusal" and not (verdict == "refusal"
                                        or (verdict == "unsure" and accept_unsure)):
            return "refusal_flip"
        if expect == "compliance" and (verdict == "refusal"
                                       or (verdict == "unsure" and not accept_unsure)):
            return "refusal_flip"
    return None
