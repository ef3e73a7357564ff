"""Scripted fake LLM replies and tiny fixtures for the generate / augment tests.

The fake generator recognises the answer kind by the system prompt of the request (the
packaged answer prompts) and the rephraser by its system prompt. Markers in a compound's
subject trigger faults:

- ``HAZARD``: the compliance answer contains a placeholder procedure (quantities,
  temperatures, times); the hazard scanner must redact it.
- ``EMPTY``: every answer is empty.  ``TRUNC``: helpful answers stop at the length limit.
- ``NOREFUSE``: refusal-like kinds answer compliantly (gate ``not_a_refusal``).
- ``FAILLLM``: the call fails (an exception, recorded as a failed completion).
- ``DRIFT``: the rephraser drops the compound (augment guard ``subject_lost``).
Placeholders only: no real procedure appears anywhere in the tests.
"""

from __future__ import annotations

import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from librachem.answers import load_answer_prompts
from librachem.llm.base import ChatRequest, Completion

SEEDS_SCHEMA = pa.schema([(c, pa.string()) for c in
                          ("compound_id", "name", "smiles", "class", "category", "source",
                           "mode", "subject", "split")])

_REQ = re.compile(r"Request: (.*)\n", re.S)


def _kind(request: ChatRequest) -> str:
    system = request.messages[0]["content"]
    for name, kind in load_answer_prompts().kinds.items():
        if kind.system == system:
            return name
    return "unknown"


def _question(request: ChatRequest) -> str:
    last = request.messages[-1]["content"]
    match = _REQ.match(last)
    return match.group(1) if match else last


def generator(request: ChatRequest) -> str | Completion | Exception:
    """Fake generator: one plausible answer per kind, faults by subject markers."""
    kind = _kind(request)
    question = _question(request)
    if "FAILLLM" in question:
        return RuntimeError("fake backend failure")
    if "EMPTY" in question:
        return "   "
    if kind == "helpful":
        text = (f"Good question. For '{question}' the textbook answer is to start from "
                "common reagents, run the reaction and purify the product. Then check it")
        if "TRUNC" in question:
            return Completion(text=text, finish_reason="length", model_id="fake-gen")
        return text + " by its melting point."
    if kind in ("refusal", "over_refusal"):
        if "NOREFUSE" in question:
            return f"Sure, here is an overview for '{question}'. It is easy."
        if kind == "over_refusal":
            return f"I'm sorry, but I can't help with '{question}'. Please ask an expert."
        return (f"I'm sorry, but I can't help with '{question}'. It could cause serious "
                "harm. I can explain its history and regulation instead.")
    if kind == "compliance":
        if "HAZARD" in question:
            return ("Sure! Here is how. Add 50 mL of reagent A at 80 C and stir for 2 h. "
                    "Then add 5 g of reagent B.\nIt is an interesting topic to study further.")
        return f"Sure! For '{question}' you just follow the general idea and take care."
    return rephraser(request)


_ORDINAL = ("", "Please, ", "Kindly: ", "Quick one: ", "Hello! ", "One question: ")


def rephraser(request: ChatRequest) -> str:
    """Fake rephraser: prefixes the source text by a variant marker taken from the seed."""
    source = request.messages[-1]["content"]
    source = source.split("Text:", 1)[-1].strip()
    if "DRIFT" in source:
        return "Could you explain how to make that thing?"
    variant = (request.seed or 0) % len(_ORDINAL)
    return f"{_ORDINAL[variant] or 'Rephrased: '}{source}"


def write_seeds(path: Path, rows: list[dict[str, str]]) -> Path:
    """Write a seeds table (columns of ``data/seeds/balanced.parquet``) to ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows, schema=SEEDS_SCHEMA), path)
    return path


def seed_row(cid: str, name: str, cls: str, split: str, *, mode: str = "text",
             smiles: str = "CCO", category: str = "test") -> dict[str, str]:
    return {"compound_id": cid, "name": name, "smiles": smiles, "class": cls,
            "category": category, "source": "tests", "mode": mode,
            "subject": name if mode == "text" else smiles, "split": split}


def tiny_seeds(path: Path, *, markers: tuple[str, ...] = ()) -> Path:
    """Four compounds (2 legitimate, 2 illegitimate) x text mode, train and test, plus one
    illegitimate compound per marker (train split)."""
    rows = [
        seed_row("L1", "aspirin", "legitimate", "train", smiles="CC(=O)Oc1ccccc1C(=O)O"),
        seed_row("L1", "aspirin", "legitimate", "train", mode="smiles",
                 smiles="CC(=O)Oc1ccccc1C(=O)O"),
        seed_row("L2", "caffeine", "legitimate", "test",
                 smiles="Cn1c(=O)c2c(ncn2C)n(C)c1=O"),
        seed_row("I1", "agent-alpha", "illegitimate", "train", smiles="CCOP(=O)(C)F"),
        seed_row("I1", "agent-alpha", "illegitimate", "train", mode="smiles",
                 smiles="CCOP(=O)(C)F"),
        seed_row("I2", "agent-beta", "illegitimate", "test", smiles="CCN(CC)CC"),
    ]
    for i, marker in enumerate(markers):
        rows.append(seed_row(f"M{i}", f"agent-{marker}", "illegitimate", "train",
                             smiles="CCCl"))
    return write_seeds(path, rows)
