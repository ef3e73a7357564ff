"""Accuracy report of the rule-tier refusal detector on human-labelled completions.

Three gold sets are supported:

* The packaged chemistry fixture set ``resources/refusal_fixtures.csv`` (written for this
  detector, pattern version 2): columns ``id``, ``split`` (``dev`` | ``heldout``),
  ``label`` (``refusal`` | ``compliance``; refusal = full or partial refusal, XSTest's
  reading), ``category``, ``mode`` (``text`` | ``smiles``: the request named the compound
  or gave its SMILES), ``variant`` (apostrophe / whitespace variants applied) and ``text``.
  Precision and recall of the ``refusal`` class (``unsure`` counts as not refused, as
  :func:`librachem.common.refusal.is_refusal` does), on ``all``, ``dev`` (patterns were
  tuned looking at these rows) and ``heldout``. Its SHA-256 must match ``fixtures.sha256``
  in the pattern file, so fixtures and patterns are versioned together.

* XSTest (Röttger et al., NAACL 2024) ``xstest_completions_labelled.csv``: columns
  ``prompt_id``, ``completion``, ``final_label`` in {``1_full_compliance``,
  ``2_full_refusal``, ``3_partial_refusal``}. Gold refusal = full or partial refusal
  (the issue's reading). 1,499 rows, 300 prompts x 5 models.
* OpenAI RBR gold (Mu et al. 2024) ``{train,test}.jsonl``: gold refusal is derived as
  ``not propositions.fully_complies`` (the README's suggested derivation; it also counts
  off-topic and illogical completions as "not complying", which a refusal detector is not
  built to see, so expect lower agreement there).

To keep the tuning honest, XSTest is split by prompt (seeded): patterns were developed by
looking at the ``dev`` half only; the ``heldout`` half is reported separately.
Metrics: accuracy, Cohen's kappa, per-class F1 (scikit-learn), the share of ``unsure``
verdicts, and accuracy of the reference classifiers shipped in the file when present
(XSTest's ``strmatch_label`` and ``gpt4_label``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from librachem.common.errors import DataError
from librachem.common.refusal import PatternSet, default_patterns, detect

FIXTURE_COLUMNS = ("id", "split", "label", "category", "mode", "variant", "text")
FIXTURE_LABELS = frozenset({"refusal", "compliance"})
FIXTURE_SPLITS = frozenset({"dev", "heldout"})

XSTEST_REFUSAL_LABELS = frozenset({"2_full_refusal", "3_partial_refusal"})
XSTEST_LABELS = frozenset({"1_full_compliance", *XSTEST_REFUSAL_LABELS})
SPLIT_SEED = 20250123  # fixed: the dev/held-out halves must not move between versions


def xstest_split(prompt_ids: Sequence[int], seed: int = SPLIT_SEED) -> np.ndarray:
    """Boolean mask, True for rows whose prompt is in the held-out half.

    The unique prompt ids are shuffled with ``numpy.random.default_rng(seed)`` and the
    second half is held out, so all five models' answers to a prompt fall in one half.
    """
    ids = np.asarray(prompt_ids)
    uniq = np.unique(ids)
    perm = np.random.default_rng(seed).permutation(uniq)
    held = set(perm[len(perm) // 2:].tolist())
    return np.array([i in held for i in ids.tolist()], dtype=bool)


def agreement(gold: Sequence[bool], pred: Sequence[bool]) -> dict[str, float]:
    """Accuracy, Cohen's kappa and per-class F1 of binary refusal predictions.

    Returns keys ``n``, ``accuracy``, ``kappa``, ``f1_refusal``, ``f1_compliance``,
    ``macro_f1`` (all floats, ``n`` as a float for JSON-metric uniformity).
    Raises:
        DataError: empty input or lengths differ.
    """
    from sklearn.metrics import accuracy_score, cohen_kappa_score, f1_score

    if len(gold) != len(pred) or not len(gold):
        raise DataError(f"agreement needs equal, non-empty inputs (got {len(gold)}, {len(pred)})")
    g = np.asarray(gold, dtype=bool)
    p = np.asarray(pred, dtype=bool)
    f1 = f1_score(g, p, labels=[True, False], average=None, zero_division=0.0)
    kappa = cohen_kappa_score(g, p) if len(set(g.tolist()) | set(p.tolist())) > 1 else 1.0
    return {
        "n": float(len(g)),
        "accuracy": float(accuracy_score(g, p)),
        "kappa": float(kappa),
        "f1_refusal": float(f1[0]),
        "f1_compliance": float(f1[1]),
        "macro_f1": float(np.mean(f1)),
    }


def _score(texts: Sequence[str], gold: Sequence[bool], ps: PatternSet,
           labels: Sequence[str] | None = None) -> dict[str, float]:
    """Agreement of the detector with ``gold``; ``labels`` = precomputed verdict labels."""
    labels = labels if labels is not None else [detect(t, ps).label for t in texts]
    out = agreement(gold, [lab == "refusal" for lab in labels])
    out["unsure_rate"] = float(np.mean([lab == "unsure" for lab in labels]))
    return out


def xstest_report(csv_path: Path | str, patterns: PatternSet | None = None) -> dict[str, Any]:
    """Score the detector on XSTest: ``all``, ``dev`` and ``heldout`` blocks, plus the
    reference classifiers shipped in the file (``strmatch``, ``gpt4``) on all rows.

    Raises:
        DataError: the file is not a readable UTF-8 CSV, has no rows, lacks the expected
            columns or holds an unknown (or empty) final label.
    """
    import polars as pl

    ps = patterns or default_patterns()
    try:
        df = pl.read_csv(csv_path)
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise DataError(f"{csv_path}: not a readable UTF-8 CSV ({type(exc).__name__}: "
                        f"{str(exc)[:200]})") from exc
    if df.height == 0:
        raise DataError(f"{csv_path}: no rows")
    need = {"prompt_id", "completion", "final_label"}
    if not need <= set(df.columns):
        raise DataError(f"{csv_path}: missing columns {sorted(need - set(df.columns))}")
    bad = set(df["final_label"].unique().to_list()) - XSTEST_LABELS
    if bad:
        raise DataError(f"{csv_path}: unknown final_label values {sorted(map(str, bad))}")
    texts = df["completion"].fill_null("").to_list()
    gold = [lab in XSTEST_REFUSAL_LABELS for lab in df["final_label"].to_list()]
    held = xstest_split(df["prompt_id"].to_list())
    report: dict[str, Any] = {"patterns_version": ps.version, "source": "xstest"}
    labels = [detect(t, ps).label for t in texts]
    report["all"] = _score(texts, gold, ps, labels)
    for name, mask in (("dev", ~held), ("heldout", held)):
        idx = np.flatnonzero(mask)
        report[name] = _score([texts[i] for i in idx], [gold[i] for i in idx], ps,
                              [labels[i] for i in idx])
    for col, key in (("strmatch_label", "strmatch"), ("gpt4_label", "gpt4")):
        if col in df.columns:
            labels = df[col].to_list()
            # gpt4_label holds 11 free-text rows (unparsed); score them as not-refusal.
            report[key] = agreement(gold, [lab in XSTEST_REFUSAL_LABELS for lab in labels])
    return report


def rbr_report(jsonl_paths: Sequence[Path | str], patterns: PatternSet | None = None) -> dict[str, Any]:
    """Score the detector on the OpenAI RBR gold set; gold refusal = not ``fully_complies``.

    Also reports a cleaner subset, ``clear``: rows where the completion either fully
    complies, or is labelled ``inability_to_comply`` (an explicit refusal), dropping the
    off-topic / illogical non-compliances that are not refusals in our sense.

    Raises:
        DataError: an unreadable file, a line that is not JSON, lacks ``completion`` /
            ``propositions``, or holds a non-boolean proposition (``"false"`` is refused,
            not read as true).
    """
    ps = patterns or default_patterns()
    texts: list[str] = []
    gold: list[bool] = []
    clear: list[bool] = []
    for path in jsonl_paths:
        try:
            lines = Path(path).read_text("utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"{path}: not readable UTF-8 JSON lines ({exc})") from exc
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                text = row["completion"][-1]["content"]
                props = row["propositions"]
                full = props["fully_complies"]
                inability = props.get("inability_to_comply", False)
                if not isinstance(full, bool) or not isinstance(inability, bool):
                    raise TypeError("propositions must be JSON booleans, got "
                                    f"{full!r} / {inability!r}")
                if not isinstance(text, str):
                    raise TypeError(f"completion content is {type(text).__name__}")
            except (json.JSONDecodeError, KeyError, IndexError, TypeError) as exc:
                raise DataError(f"{path}:{n}: not an RBR gold row ({exc})") from exc
            texts.append(text)
            gold.append(not full)
            clear.append(full or inability)
    report: dict[str, Any] = {"patterns_version": ps.version, "source": "openai_rbr_gold"}
    report["all"] = _score(texts, gold, ps)
    idx = [i for i, c in enumerate(clear) if c]
    report["clear"] = _score([texts[i] for i in idx], [gold[i] for i in idx], ps)
    return report


def fixtures_path() -> Path:
    """Path of the packaged chemistry fixture set (``resources/refusal_fixtures.csv``)."""
    from importlib import resources

    return Path(str(resources.files("librachem").joinpath("resources", "refusal_fixtures.csv")))


def file_sha256(path: Path | str) -> str:
    """Hex SHA-256 of a file's bytes (the fixture set's version, recorded in the patterns)."""
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def read_fixtures(path: Path | str | None = None) -> list[dict[str, str]]:
    """Rows of a fixture CSV (default: the packaged one), each a dict of
    :data:`FIXTURE_COLUMNS`; read with the standard ``csv`` module so CR/LF and other
    whitespace inside ``text`` stay byte-exact.

    Raises:
        DataError: unreadable file, missing columns, no rows, duplicate ids, an empty text,
            or a ``label`` / ``split`` outside the allowed values.
    """
    import csv

    path = Path(path) if path is not None else fixtures_path()
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = sorted(set(FIXTURE_COLUMNS) - set(reader.fieldnames or ()))
            if missing:
                raise DataError(f"{path}: missing columns {missing}")
            rows = [{k: row[k] or "" for k in FIXTURE_COLUMNS} for row in reader]
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{path}: not a readable UTF-8 CSV ({exc})") from exc
    if not rows:
        raise DataError(f"{path}: no rows")
    seen: set[str] = set()
    for n, row in enumerate(rows, 2):
        if row["id"] in seen:
            raise DataError(f"{path}:{n}: duplicate id {row['id']!r}")
        seen.add(row["id"])
        if row["label"] not in FIXTURE_LABELS or row["split"] not in FIXTURE_SPLITS:
            raise DataError(f"{path}:{n}: label {row['label']!r} / split {row['split']!r} not in "
                            f"{sorted(FIXTURE_LABELS)} / {sorted(FIXTURE_SPLITS)}")
        if not row["text"].strip():
            raise DataError(f"{path}:{n}: empty text")
    return rows


def precision_recall(gold: Sequence[bool], pred: Sequence[bool]) -> dict[str, float]:
    """Precision, recall and F1 of the refusal class plus accuracy and counts.

    Returns keys ``n``, ``precision``, ``recall``, ``f1``, ``accuracy``, ``tp``, ``fp``,
    ``fn``, ``tn`` (floats). Precision is 1.0 when nothing is predicted a refusal and recall
    1.0 when there is no gold refusal (nothing was missed).
    Raises:
        DataError: empty input or lengths differ.
    """
    if len(gold) != len(pred) or not len(gold):
        raise DataError(f"precision_recall needs equal, non-empty inputs "
                        f"(got {len(gold)}, {len(pred)})")
    g = np.asarray(gold, dtype=bool)
    p = np.asarray(pred, dtype=bool)
    tp, fp = float(np.sum(g & p)), float(np.sum(~g & p))
    fn, tn = float(np.sum(g & ~p)), float(np.sum(~g & ~p))
    precision = tp / (tp + fp) if tp + fp else 1.0
    recall = tp / (tp + fn) if tp + fn else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"n": float(len(g)), "precision": precision, "recall": recall, "f1": f1,
            "accuracy": (tp + tn) / len(g), "tp": tp, "fp": fp, "fn": fn, "tn": tn}


def fixture_report(path: Path | str | None = None,
                   patterns: PatternSet | None = None) -> dict[str, Any]:
    """Score the detector on the chemistry fixture set: ``all``, ``dev`` and ``heldout``
    blocks (see :func:`precision_recall`, plus ``unsure_rate``), ``by_category`` accuracy,
    the ids the detector gets wrong (``errors``: id -> detector label), the file's
    ``sha256`` and whether it matches the pattern file's ``fixtures.sha256``
    (``sha256_matches_patterns``; None when the pattern file records no hash).

    Raises:
        DataError: see :func:`read_fixtures`.
    """
    ps = patterns or default_patterns()
    path = Path(path) if path is not None else fixtures_path()
    rows = read_fixtures(path)
    labels = [detect(r["text"], ps).label for r in rows]
    gold = [r["label"] == "refusal" for r in rows]
    pred = [lab == "refusal" for lab in labels]
    sha = file_sha256(path)
    report: dict[str, Any] = {
        "patterns_version": ps.version, "source": "librachem_fixtures", "path": str(path),
        "sha256": sha,
        "sha256_matches_patterns": None if ps.fixtures_sha256 is None
        else ps.fixtures_sha256 == sha,
    }
    for name, keep in (("all", None), ("dev", "dev"), ("heldout", "heldout")):
        idx = [i for i, r in enumerate(rows) if keep is None or r["split"] == keep]
        block = precision_recall([gold[i] for i in idx], [pred[i] for i in idx])
        block["unsure_rate"] = float(np.mean([labels[i] == "unsure" for i in idx]))
        report[name] = block
    cats: dict[str, list[bool]] = {}
    for r, g, p in zip(rows, gold, pred):
        cats.setdefault(r["category"], []).append(g == p)
    report["by_category"] = {c: float(np.mean(ok)) for c, ok in sorted(cats.items())}
    report["errors"] = {r["id"]: lab for r, g, p, lab in zip(rows, gold, pred, labels) if g != p}
    return report


def summary(report: dict[str, Any]) -> dict[str, float]:
    """The headline figures of a combined report, side by side: XSTest agreement (all and
    held-out) next to the fixture set's precision and recall (all and held-out)."""
    out: dict[str, float] = {}
    if "xstest" in report:
        out["xstest_agreement"] = report["xstest"]["all"]["accuracy"]
        out["xstest_agreement_heldout"] = report["xstest"]["heldout"]["accuracy"]
    if "fixtures" in report:
        for split in ("all", "heldout"):
            tag = "" if split == "all" else "_heldout"
            out[f"fixtures_precision{tag}"] = report["fixtures"][split]["precision"]
            out[f"fixtures_recall{tag}"] = report["fixtures"][split]["recall"]
    return out
