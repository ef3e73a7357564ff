"""Phase 1 of ``generate``: crafting requests from the balanced seeds.

For each seeds row (one compound in one mode) and each intent that the chosen intent set
(``paper`` or ``extended``) applies to the compound's class, one request is written from one
of the intent's templates (``resources/generate/requests.yaml``), picked by a generator seeded
from (params seed, compound id, mode, intent), so adding or removing a compound changes no
other request. The request's ``label`` is ``illegitimate`` exactly when the compound is
illegitimate and the intent is harmful (synthesis, acquisition that evades controls,
weaponisation); legitimate intents on controlled compounds (history, detection, first aid,
why it is controlled) and any request about a legitimate compound are ``legitimate``.

Then each split is capped at ``max_requests[split]`` (0 = no cap) by a stratified, seeded
sample: round-robin over the (label, intent, mode) groups, each group in seeded order, so
caps keep the mix balanced.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import pyarrow.parquet as pq
import yaml

from librachem.common.errors import ConfigError, DataError
from librachem.common.hashing import derived_rng

IntentSet = Literal["paper", "extended"]
SEEDS_COLUMNS = ("compound_id", "name", "smiles", "class", "category", "mode", "subject", "split")
CLASSES = ("legitimate", "illegitimate")


@dataclass(frozen=True)
class Intent:
    """One request intent from the templates file."""

    name: str
    harmful: bool
    sets: dict[str, tuple[str, ...]]  # intent set -> compound classes it applies to
    templates: dict[str, str]  # template id -> text with {subject}


@dataclass(frozen=True)
class RequestTemplates:
    """The parsed request templates file (version + intents in file order)."""

    version: str
    intents: tuple[Intent, ...]

    def intents_for(self, intent_set: str, compound_class: str) -> list[Intent]:
        return [i for i in self.intents if compound_class in i.sets.get(intent_set, ())]


@dataclass(frozen=True)
class Request:
    """One crafted request with its provenance (a future triplet row's left half)."""

    compound_id: str
    name: str
    smiles: str | None
    subject: str
    mode: str
    compound_class: str
    category: str | None
    intent: str
    label: str
    split: str
    template_id: str
    template_version: str
    prompt: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _resource(name: str) -> str:
    return resources.files("librachem").joinpath("resources", "generate", name).read_text("utf-8")


@lru_cache(maxsize=8)
def load_request_templates(path: str | None = None) -> RequestTemplates:
    """Parse the request templates file (default: the packaged ``requests.yaml``).

    Raises:
        ConfigError: missing version, an intent without templates, a template without
            ``{subject}``, or a duplicate template id.
    """
    text = Path(path).read_text("utf-8") if path else _resource("requests.yaml")
    raw = yaml.safe_load(text)
    if not isinstance(raw, dict) or "version" not in raw or "intents" not in raw:
        raise ConfigError("request templates need `version` and `intents`")
    intents = []
    seen: set[str] = set()
    for name, spec in raw["intents"].items():
        templates = dict(spec.get("templates") or {})
        if not templates:
            raise ConfigError(f"request intent {name!r} has no templates")
        for tid, tmpl in templates.items():
            if "{subject}" not in tmpl:
                raise ConfigError(f"request template {tid!r} lacks {{subject}}")
            if tid in seen:
                raise ConfigError(f"duplicate request template id {tid!r}")
            seen.add(tid)
        sets = {k: tuple(v) for k, v in (spec.get("sets") or {}).items()}
        for classes in sets.values():
            bad = set(classes) - set(CLASSES)
            if bad:
                raise ConfigError(f"intent {name!r}: unknown compound classes {sorted(bad)}")
        intents.append(Intent(name=name, harmful=bool(spec.get("harmful")), sets=sets,
                              templates=templates))
    return RequestTemplates(version=str(raw["version"]), intents=tuple(intents))


def request_label(compound_class: str, harmful: bool) -> str:
    """``illegitimate`` iff an illegitimate compound meets a harmful intent."""
    return "illegitimate" if compound_class == "illegitimate" and harmful else "legitimate"


def read_seeds(path: Path | str) -> list[dict[str, Any]]:
    """Read the balanced seeds table as row dicts.

    Raises:
        DataError: file unreadable, a required column missing, a bad class/mode/split, a
            duplicate (compound, mode) row, or a compound in both splits.
    """
    try:
        table = pq.read_table(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read seeds {path}: {exc}") from exc
    missing = [c for c in SEEDS_COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(f"seeds {path} lacks columns {missing}")
    rows = table.select(list(SEEDS_COLUMNS)).to_pylist()
    for i, row in enumerate(rows):
        if row["class"] not in CLASSES:
            raise DataError(f"seeds row {i}: class {row['class']!r} not in {CLASSES}")
        if row["mode"] not in ("text", "smiles") or row["split"] not in ("train", "test"):
            raise DataError(f"seeds row {i}: bad mode {row['mode']!r} or split {row['split']!r}")
        if not row["subject"] or not row["compound_id"]:
            raise DataError(f"seeds row {i}: empty subject or compound_id")
    splits: dict[str, set[str]] = {}
    seen: set[tuple[str, str]] = set()
    for i, row in enumerate(rows):
        splits.setdefault(row["compound_id"], set()).add(row["split"])
        key = (row["compound_id"], row["mode"])
        if key in seen:
            raise DataError(f"seeds row {i}: compound {row['compound_id']!r} appears twice in "
                            f"mode {row['mode']!r} (duplicate seed rows give duplicate row ids)")
        seen.add(key)
    leaked = sorted(c for c, s in splits.items() if len(s) > 1)
    if leaked:
        raise DataError(f"seeds {path}: compounds in both train and test {leaked[:5]} "
                        f"({len(leaked)} in all); the split must be compound-disjoint "
                        "(rerun the seeds stage)")
    return rows


def craft_requests(seeds: list[dict[str, Any]], templates: RequestTemplates,
                   intent_set: str, seed: int) -> list[Request]:
    """All requests for the seeds, before capping (deterministic, in seeds order).

    Raises:
        ConfigError: ``intent_set`` is used by no intent in the templates file.
    """
    if not any(intent_set in i.sets for i in templates.intents):
        raise ConfigError(f"generate.intent_set = {intent_set!r}: no intent in the templates "
                          "file belongs to it")
    out = []
    for row in seeds:
        for intent in templates.intents_for(intent_set, row["class"]):
            rng = derived_rng(seed, row["compound_id"], row["mode"], intent.name)
            tid = rng.choice(sorted(intent.templates))
            out.append(Request(
                compound_id=str(row["compound_id"]), name=row["name"], smiles=row["smiles"],
                subject=row["subject"], mode=row["mode"], compound_class=row["class"],
                category=row["category"], intent=intent.name,
                label=request_label(row["class"], intent.harmful), split=row["split"],
                template_id=tid, template_version=templates.version,
                prompt=intent.templates[tid].format(subject=row["subject"])))
    return out


def cap_requests(requests: list[Request], max_requests: dict[str, int],
                 seed: int, weights: dict[str, int] | None = None) -> list[Request]:
    """Cap each split at ``max_requests[split]`` (missing or 0 = keep all) by a stratified
    seeded round-robin over (label, intent, mode) groups. Output order: split, then the
    round-robin order (deterministic).

    ``weights`` maps ``"<label>:<intent>"`` to how many requests that group gives per round
    (default 1). Labels stay balanced; within a label, a weight of 3 makes an intent three
    times as frequent as a weight-1 intent (while it has requests left). The embedded
    default up-weights ``legitimate:synthesis`` so the model sees as many legitimate as
    illegitimate synthesis requests: with equal weights it learned "synthesis -> refuse".
    """
    weights = weights or {}
    by_split: dict[str, list[Request]] = defaultdict(list)
    for req in requests:
        by_split[req.split].append(req)
    out: list[Request] = []
    for split in sorted(by_split):
        items = by_split[split]
        cap = max_requests.get(split, 0)
        groups: dict[tuple[str, str, str], list[Request]] = defaultdict(list)
        for req in items:
            groups[(req.label, req.intent, req.mode)].append(req)
        per_label: dict[str, list[list[Request]]] = defaultdict(list)
        per_label_w: dict[str, list[int]] = defaultdict(list)
        for key in sorted(groups):
            group = sorted(groups[key], key=lambda r: (r.compound_id, r.template_id))
            derived_rng(seed, "cap", split, *key).shuffle(group)
            per_label[key[0]].append(group)
            per_label_w[key[0]].append(weights.get(f"{key[0]}:{key[1]}", 1))
        # Two-level round-robin: alternate labels, and within a label its (intent, mode) groups.
        streams = [_round_robin(per_label[label], per_label_w[label])
                   for label in sorted(per_label)]
        limit = cap if cap > 0 else len(items)
        picked = _round_robin(streams)[:limit]
        out.extend(picked)
    return out


def _round_robin(queues: list[list[Request]], weights: list[int] | None = None) -> list[Request]:
    """Interleave ``queues``: each round takes the next ``weights[j]`` items (default 1) of
    queue ``j``, until every queue is empty."""
    weights = weights or [1] * len(queues)
    out: list[Request] = []
    pos = [0] * len(queues)
    while any(p < len(q) for p, q in zip(pos, queues)):
        for j, q in enumerate(queues):
            take = q[pos[j]:pos[j] + weights[j]]
            out.extend(take)
            pos[j] += len(take)
    return out
