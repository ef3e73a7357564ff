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

from librachem.generate.answers import load_answer_prompts
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


def dead_generator(request: ChatRequest) -> Exception:
    """Every call fails (an unreachable or broken generator)."""
    return ConnectionError("fake generator is down")


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


REPHRASE_PREFIX = ("Quick question from a student: ", "Hello there, I was wondering: ",
                   "For a class project: ", "Asking for a report: ", "One more thing: ")
REPHRASE_SUFFIX = ("Thanks for understanding.", "Hope that is clear.", "That is my answer.",
                   "I hope this is useful.", "Kind regards.")


def rephraser(request: ChatRequest) -> str:
    """Fake rephraser: a prefix (prompts) or suffix (answers) chosen by the style line, so
    each variant differs; markers in the source trigger the augment guards:
    ``DRIFT`` drops the compound, ``FLIP`` turns any answer into its opposite verdict,
    ``HAZARD`` adds a placeholder procedure."""
    from librachem.augment.rephrase import load_rephrase_prompts

    if request.messages[0]["content"] != load_rephrase_prompts().system:
        raise ValueError("not a rephrase request")
    style, _, source = request.messages[-1]["content"].partition("\nText: ")
    i = load_rephrase_prompts().styles.index(style)
    is_prompt = load_rephrase_prompts().few_shot["prompt"].source in request.messages[1]["content"]
    if "DRIFT" in source:
        return "Could you explain how to make that thing?"
    if "HAZARD" in source and is_prompt:
        return f"{source} Add 50 mL of reagent A at 80 C and stir for 2 h."
    if "FLIP" in source and not is_prompt:
        name = re.search(r"agent-\w+", source).group(0)
        return (f"Sure, here you go with {name}, all fine." if "sorry" in source.lower()
                else f"I'm sorry, but I can't help with {name}.")
    if "NEARDUP" in source:
        return source.rstrip(".?!") + "!"
    return f"{REPHRASE_PREFIX[i]}{source}" if is_prompt else f"{source} {REPHRASE_SUFFIX[i]}"


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


def always_sure(request: ChatRequest) -> str:
    """A generator that never refuses (every refusal gate fails)."""
    return "Sure, here it is."


class Killed(Exception):
    """Stands for a kill of the stage process between two LLM chunks."""


class DieAfter:
    """Wraps a client; raises :class:`Killed` after ``n`` complete() calls (a kill between
    chunks), for the kill-and-resume tests of generate and augment."""

    def __init__(self, inner, n):
        self.inner, self.n = inner, n

    def complete(self, requests):
        if self.n == 0:
            raise Killed
        self.n -= 1
        return self.inner.complete(requests)

    def stats(self):
        return self.inner.stats()
