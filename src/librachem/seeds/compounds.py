"""The curated compound list (``data/seeds/compounds.csv``): one validated
:class:`Compound` per row, SMILES canonicalised with RDKit
(``Chem.MolToSmiles(Chem.MolFromSmiles(s))``)."""


import csv
import io
import logging
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from librachem.common.errors import DataError

log = logging.getLogger(__name__)


CLASSES = ("legitimate", "illegitimate")
COMPOUND_COLUMNS = ("compound_id", "name", "smiles", "class", "category", "source")

_CATEGORY_RE = re.compile(r"^[a-z][a-z0-9_]*$")
_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_MAX_REPORTED_ERRORS = 20


@dataclass(frozen=True)
class Compound:
    """One validated row of ``compounds.csv`` (``smiles`` is canonical)."""

    compound_id: str
    name: str
    smiles: str
    klass: str
    category: str
    source: str


def canonical_smiles(smiles: str) -> str | None:
    """RDKit canonical SMILES of ``smiles``, or ``None`` if RDKit cannot parse it."""
    from rdkit import Chem, rdBase

    with rdBase.BlockLogs():  # parse failures are reported by us, with row and column
        mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        return None
    return Chem.MolToSmiles(mol)


def load_compounds(path: Path | str) -> list[Compound]:
    """Read and validate ``compounds.csv``.

    Rows are checked for: missing required columns, wrong field count, empty values, unknown
    ``class``, malformed ``category`` (snake_case) or ``compound_id``, SMILES that RDKit cannot
    parse or that are not canonical, and duplicates by ``compound_id``, by name (case-insensitive)
    and by canonical SMILES.

    Returns:
        Compounds in file order.

    Raises:
        DataError: naming the file, line (header = line 1), row (first data row = row 1) and
            column of every problem (up to 20, then a count).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")  # a spreadsheet's BOM is not a header
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read compounds file {path}: {exc}") from exc
    reader = csv.reader(io.StringIO(text, newline=""))
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        raise DataError(f"{path}: empty file, expected a header with columns "
                        f"{', '.join(COMPOUND_COLUMNS)}") from None
    missing = [c for c in COMPOUND_COLUMNS if c not in header]
    if missing:
        raise DataError(f"{path} line 1 (header): missing column(s) "
                        f"{', '.join(repr(c) for c in missing)}; header has {header}")
    dup_cols = [c for c, n in Counter(header).items() if n > 1]
    if dup_cols:
        raise DataError(f"{path} line 1 (header): duplicate column(s) {dup_cols}")
    extra = [c for c in header if c not in COMPOUND_COLUMNS]
    if extra:
        log.info("%s: ignoring extra column(s) %s", path, extra)
    index = {c: header.index(c) for c in COMPOUND_COLUMNS}

    errors: list[str] = []
    compounds: list[Compound] = []
    seen_id: dict[str, str] = {}
    seen_name: dict[str, str] = {}
    seen_smiles: dict[str, str] = {}
    row_no = 0
    line_no = 1
    while True:
        try:
            fields = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            raise DataError(f"{path} line {reader.line_num}: malformed CSV: {exc}") from exc
        line_no = reader.line_num
        if not fields or all(not f.strip() for f in fields):
            continue  # blank line
        row_no += 1
        where = f"{path} line {line_no} (row {row_no})"
        if len(fields) != len(header):
            errors.append(f"{where}: expected {len(header)} fields, got {len(fields)}")
            continue
        values = {c: fields[i].strip() for c, i in index.items()}
        row_errors = [f"{where}, column {c!r}: empty value" for c, v in values.items() if not v]
        if row_errors:
            errors.extend(row_errors)
            continue
        cid, name, smiles = values["compound_id"], values["name"], values["smiles"]
        if not _ID_RE.match(cid):
            errors.append(f"{where}, column 'compound_id': {cid!r} is not a plain identifier "
                          "(letters, digits, '_', '.', '-')")
        if values["class"] not in CLASSES:
            errors.append(f"{where}, column 'class': unknown class {values['class']!r}; "
                          f"expected one of {', '.join(CLASSES)}")
        if not _CATEGORY_RE.match(values["category"]):
            errors.append(f"{where}, column 'category': {values['category']!r} is not "
                          "snake_case (e.g. nerve_agent)")
        canonical = canonical_smiles(smiles)
        if canonical is None:
            errors.append(f"{where}, column 'smiles': invalid SMILES {smiles!r} "
                          "(RDKit cannot parse it)")
        elif canonical != smiles:
            errors.append(f"{where}, column 'smiles': SMILES {smiles!r} is not canonical; "
                          f"RDKit canonical form is {canonical!r}")
        for key, seen, column in ((cid, seen_id, "compound_id"),
                                  (name.casefold(), seen_name, "name"),
                                  (canonical, seen_smiles, "smiles")):
            if key is None:
                continue
            if key in seen:
                errors.append(f"{where}, column {column!r}: duplicate of {seen[key]}")
            else:
                seen[key] = f"line {line_no} ({cid}, {name})"
        compounds.append(Compound(cid, name, smiles, values["class"], values["category"],
                                  values["source"]))
    if errors:
        shown = errors[:_MAX_REPORTED_ERRORS]
        more = len(errors) - len(shown)
        tail = f"\n  ... and {more} more" if more else ""
        raise DataError(f"{len(errors)} problem(s) in {path}:\n  " + "\n  ".join(shown) + tail)
    if not compounds:
        raise DataError(f"{path}: no compound rows")
    return compounds
