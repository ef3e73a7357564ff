"""Phase 2 of ``generate``, pure parts: answer prompts, clean-up, quality gates, fallbacks.

Role swap by label (paper, section "GPT-assisted rephrasing"):

============== ================= ==================
label          chosen kind       rejected kind
============== ================= ==================
legitimate     ``helpful``       ``over_refusal``
illegitimate   ``refusal``       ``compliance`` (compliant-sounding, NOT actionable)
============== ================= ==================

The prompts of each kind live in ``resources/generate/answers.yaml`` (versioned). For the
refusal-like and compliance kinds the request is wrapped as an instruction ("Request: ...
Write a polite refusal of this request."): measured on SmolLM2-135M-Instruct, asking the
question directly with a refusal system prompt gave a refusal for about half of the
requests, the wrapped instruction for all of a sample (see the generate issue report).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from librachem.common.errors import ConfigError
from librachem.common.text import trim_to_sentence

KINDS_BY_LABEL = {"legitimate": ("helpful", "over_refusal"),
                  "illegitimate": ("refusal", "compliance")}
KINDS = ("helpful", "over_refusal", "refusal", "compliance")

# Drop reasons of one answer, in the order the checks run (stable metric keys).
ANSWER_REASONS = ("llm_error", "empty", "truncated", "too_long", "hazard", "not_a_refusal",
                  "reads_as_refusal")

_SENT_SPLIT = re.compile(r"(?<=[.!?])\s+")


@dataclass(frozen=True)
class Kind:
    """One answer kind: prompts, the detector verdict expected, the fallback pool."""

    name: str
    expect: str  # "refusal" | "compliance"
    system: str
    user_template: str
    few_shot: tuple[tuple[str, str], ...]
    pool: dict[str, str]


@dataclass(frozen=True)
class AnswerPrompts:
    version: str
    kinds: dict[str, Kind]


@lru_cache(maxsize=8)
def load_answer_prompts(path: str | None = None) -> AnswerPrompts:
    """Parse the answer prompts file (default: packaged ``resources/generate/answers.yaml``).

    Raises:
        ConfigError: a kind is missing, has a bad ``expect``, or a template lacks its field.
    """
    text = (Path(path).read_text("utf-8") if path else resources.files("librachem")
            .joinpath("resources", "generate", "answers.yaml").read_text("utf-8"))
    raw = yaml.safe_load(text)
    if not isinstance(raw, dict) or "version" not in raw:
        raise ConfigError("answer prompts need a `version`")
    pools = raw.get("fallback_pools") or {}
    kinds = {}
    for name in KINDS:
        spec = (raw.get("kinds") or {}).get(name)
        if spec is None:
            raise ConfigError(f"answer prompts lack kind {name!r}")
        if spec.get("expect") not in ("refusal", "compliance"):
            raise ConfigError(f"answer kind {name!r}: expect must be refusal or compliance")
        if "{request}" not in spec.get("user_template", ""):
            raise ConfigError(f"answer kind {name!r}: user_template lacks {{request}}")
        pool = {str(k): str(v) for k, v in (pools.get(name) or {}).items()}
        for pid, tmpl in pool.items():
            if "{subject}" not in tmpl:
                raise ConfigError(f"fallback template {pid!r} lacks {{subject}}")
        kinds[name] = Kind(
            name=name, expect=spec["expect"], system=spec["system"].strip(),
            user_template=spec["user_template"],
            few_shot=tuple((fs["user"], fs["assistant"].strip()) for fs in spec["few_shot"]),
            pool=pool)
    return AnswerPrompts(version=str(raw["version"]), kinds=kinds)


def build_messages(kind: Kind, request: str) -> list[dict[str, str]]:
    """Chat messages asking the generator for a ``kind`` answer to ``request``."""
    messages = [{"role": "system", "content": kind.system}]
    for user, assistant in kind.few_shot:
        messages.append({"role": "user", "content": kind.user_template.format(request=user)})
        messages.append({"role": "assistant", "content": assistant})
    messages.append({"role": "user", "content": kind.user_template.format(request=request)})
    return messages


def drop_repeats(text: str) -> str:
    """Remove sentences that repeat an earlier one verbatim (small models loop)."""
    seen: set[str] = set()
    out = []
    for sentence in _SENT_SPLIT.split(text.strip()):
        key = " ".join(sentence.lower().split())
        if key and key in seen:
            continue
        seen.add(key)
        out.append(sentence)
    return " ".join(out)


def tidy(text: str | None, finish_reason: str, *, truncation: str) -> tuple[str | None, str]:
    """Clean one raw answer.

    Returns:
        (text or ``None``, note) where note is ``ok``, ``trimmed`` (a length-cut answer cut
        back to its last full sentence), or a drop reason: ``llm_error``, ``empty``,
        ``truncated`` (length-cut and ``truncation == "drop"``, or nothing left to keep).
    """
    if text is None:
        return None, "llm_error"
    text = " ".join(drop_repeats(text).split(" ")).strip()
    if not text:
        return None, "empty"
    if finish_reason == "length":
        if truncation == "drop":
            return None, "truncated"
        trimmed = trim_to_sentence(text)
        if len(trimmed) < 20:
            return None, "truncated"
        return trimmed, "trimmed"
    return text, "ok"


def verdict_reason(verdict: str, expect: str, *, accept_unsure: bool) -> str | None:
    """The drop reason for a detector ``verdict`` on an answer that should be ``expect``."""
    if expect == "refusal":
        if verdict == "refusal" or (verdict == "unsure" and accept_unsure):
            return None
        return "not_a_refusal"
    if verdict == "refusal" or (verdict == "unsure" and not accept_unsure):
        return "reads_as_refusal"
    return None


def pick_fallback(kind: Kind, subject: str, *key_parts: Any) -> tuple[str, str] | None:
    """A pool template for ``kind`` picked by a hash of ``key_parts``: (pool id, text)."""
    if not kind.pool:
        return None
    ids = sorted(kind.pool)
    digest = hashlib.sha256("\x1f".join(map(str, key_parts)).encode("utf-8")).digest()
    pid = ids[int.from_bytes(digest[:4], "big") % len(ids)]
    return pid, kind.pool[pid].format(subject=subject)


def normalised(text: str) -> str:
    """Case- and space-folded text (for the chosen == rejected check)."""
    return " ".join(text.lower().split())
