"""Atomic Parquet shard sets with a manifest written last.

A *shard set* is one folder::

    <dir>/<split>-00000.parquet, <dir>/<split>-00001.parquet, ...
    <dir>/manifest.json          # written last; its presence means "complete"

Shards are grouped by a split name (``train``, ``test`` ...) in the file name so
``datasets.load_dataset("parquet", data_files={"train": "<dir>/train-*.parquet"})`` picks
one split straight away. The manifest lists every shard (name, split, rows, sha256), the
total row count, the schema hash and a free ``meta`` mapping (the effective config that made
the data). :func:`write_shards` first removes an old manifest (so a folder being rewritten is
never "complete"), then old shards, writes each shard atomically and the manifest last.
:func:`read_shards` refuses a folder without a valid manifest, with a shard whose checksum or
row count differs, or whose schema hash is not the one expected.

Parquet is written without statistics-dependent options that vary between runs, so the same
table gives byte-identical shards (the determinism tests rely on it).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from librachem.common.atomic import atomic_path, write_json
from librachem.common.errors import SchemaError
from librachem.common.hashing import sha256_file

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "librachem-shards/1"


def schema_hash(schema: pa.Schema) -> str:
    """A stable sha256 of a schema's field names, types and nullability (metadata ignored)."""
    desc = [(f.name, str(f.type), f.nullable) for f in schema]
    return hashlib.sha256(json.dumps(desc).encode("utf-8")).hexdigest()




def conform(table: pa.Table, schema: pa.Schema) -> pa.Table:
    """Return ``table`` with exactly ``schema`` (column order and types).

    Raises:
        SchemaError: a column is missing or extra, or a value cannot be cast.
    """
    names = set(table.column_names)
    want = set(schema.names)
    if names != want:
        raise SchemaError(
            f"table columns differ from the schema: missing {sorted(want - names)}, "
            f"extra {sorted(names - want)}"
        )
    try:
        return table.select(schema.names).cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, ValueError) as exc:
        raise SchemaError(f"table does not fit the schema: {exc}") from exc


def invalidate(out_dir: Path | str) -> None:
    """Remove a shard set's manifest (and leftover ``.tmp-*`` files of killed writers), so
    that until :func:`write_shards` finishes, readers refuse the folder: a stage calls this
    before its slow work, and a crash or kill can then not leave the previous run's shards
    looking like this run's output."""
    out = Path(out_dir)
    (out / MANIFEST).unlink(missing_ok=True)
    for tmp in out.glob(".tmp-*"):
        tmp.unlink(missing_ok=True)


def write_shards(
    out_dir: Path | str,
    tables: Mapping[str, pa.Table],
    schema: pa.Schema,
    *,
    rows_per_shard: int = 1000,
    meta: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``tables`` (split name -> table) as shards under ``out_dir``; manifest last.

    Args:
        out_dir: the shard-set folder (created; previous shards and manifest removed).
        tables: one table per split name; each is conformed to ``schema``. An empty table
            still gets one (empty) shard so every split named is loadable.
        schema: the explicit pyarrow schema of every shard.
        rows_per_shard: maximum rows in one shard file (>= 1).
        meta: JSON-serialisable mapping stored in the manifest (effective config ...).

    Returns:
        The manifest mapping that was written.

    Raises:
        SchemaError: a table does not fit ``schema``.
    """
    if rows_per_shard < 1:
        raise ValueError(f"rows_per_shard must be >= 1, got {rows_per_shard}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    # Invalidate first: a crash from here on leaves a folder readers refuse.
    invalidate(out)
    for old in out.glob("*.parquet"):
        old.unlink()
    shards: list[dict[str, Any]] = []
    for split in sorted(tables):
        table = conform(tables[split], schema)
        starts = range(0, max(table.num_rows, 1), rows_per_shard)
        for index, start in enumerate(starts):
            part = table.slice(start, rows_per_shard)
            name = f"{split}-{index:05d}.parquet"
            with atomic_path(out / name) as tmp:
                pq.write_table(part, tmp, compression="zstd", write_statistics=False)
            shards.append({"name": name, "split": split, "rows": part.num_rows,
                           "sha256": sha256_file(out / name)})
    manifest = {
        "format": FORMAT,
        "schema_hash": schema_hash(schema),
        "columns": schema.names,
        "rows": sum(s["rows"] for s in shards),
        "splits": {split: sum(s["rows"] for s in shards if s["split"] == split)
                   for split in sorted(tables)},
        "shards": shards,
        "meta": dict(meta or {}),
    }
    write_json(out / MANIFEST, manifest)
    log.info("wrote %d rows in %d shards to %s", manifest["rows"], len(shards), out)
    return manifest


class _ShardEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9_][A-Za-z0-9_.-]*\.parquet$")  # a file in the folder
    split: str
    rows: int = Field(ge=0)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class _Manifest(BaseModel):
    """The manifest's shape (validated with pydantic before any shard is opened)."""

    model_config = ConfigDict(extra="allow")
    format: Literal["librachem-shards/1"]
    schema_hash: str
    columns: list[str]
    rows: int = Field(ge=0)
    splits: dict[str, int]
    shards: list[_ShardEntry]
    meta: dict[str, Any] = {}


def read_manifest(in_dir: Path | str) -> dict[str, Any]:
    """Load and check the manifest of a shard set: its shape, that shard names are unique
    plain file names, that the ``rows`` / ``splits`` totals equal the sums over the shards,
    that every ``*.parquet`` file in the folder is listed, and each shard's checksum.

    Raises:
        SchemaError: no manifest, unreadable or malformed manifest, totals that disagree,
            a missing, unlisted or altered shard.
    """
    folder = Path(in_dir)
    path = folder / MANIFEST
    if not path.is_file():
        raise SchemaError(f"{folder}: no {MANIFEST}; the shard set is incomplete or not one")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise SchemaError(f"{path}: unreadable manifest: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SchemaError(f"{path}: not a {FORMAT} manifest")
    try:
        checked = _Manifest.model_validate(manifest)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise SchemaError(f"{path}: malformed manifest ({problems})") from None
    names = [s.name for s in checked.shards]
    if len(set(names)) != len(names):
        raise SchemaError(f"{path}: a shard is listed twice")
    if checked.rows != sum(s.rows for s in checked.shards):
        raise SchemaError(f"{path}: rows {checked.rows} != the sum over its shards "
                          f"{sum(s.rows for s in checked.shards)}; the shard set is incomplete")
    per_split = {k: sum(s.rows for s in checked.shards if s.split == k)
                 for k in {s.split for s in checked.shards} | set(checked.splits)}
    if per_split != checked.splits:
        raise SchemaError(f"{path}: splits {checked.splits} disagree with its shards {per_split}")
    unlisted = sorted(p.name for p in folder.glob("*.parquet") if p.name not in set(names))
    if unlisted:
        raise SchemaError(f"{folder}: shard files not in the manifest: {unlisted}; the folder "
                          "mixes two runs (rerun the stage)")
    for shard in checked.shards:
        shard_path = folder / shard.name
        if not shard_path.is_file():
            raise SchemaError(f"{folder}: shard {shard.name} listed in the manifest is missing")
        if sha256_file(shard_path) != shard.sha256:
            raise SchemaError(f"{folder}: shard {shard.name} differs from its manifest checksum")
    return manifest


def read_shards(
    in_dir: Path | str,
    schema: pa.Schema | None = None,
    *,
    split: str | None = None,
) -> pa.Table:
    """Read a shard set into one table (shards in manifest order).

    Args:
        in_dir: the shard-set folder.
        schema: when given, the manifest's schema hash must equal ``schema_hash(schema)``
            and the table is returned with exactly that schema.
        split: read only the shards of this split (``None`` = all).

    Raises:
        SchemaError: no valid manifest, a shard missing or altered, a row count or schema
            mismatch, or an unknown split.
    """
    folder = Path(in_dir)
    manifest = read_manifest(folder)
    if schema is not None and manifest["schema_hash"] != schema_hash(schema):
        raise SchemaError(
            f"{folder}: schema hash {manifest['schema_hash'][:12]} differs from the expected "
            f"{schema_hash(schema)[:12]}; regenerate the data with this code version"
        )
    shards = manifest["shards"]
    if split is not None:
        if split not in manifest.get("splits", {}):
            raise SchemaError(f"{folder}: no split {split!r} (has {sorted(manifest['splits'])})")
        shards = [s for s in shards if s["split"] == split]
    tables = []
    for shard in shards:
        try:
            table = pq.read_table(folder / shard["name"])
        except (OSError, pa.ArrowException) as exc:
            raise SchemaError(f"{folder}: shard {shard['name']} is not readable Parquet "
                              f"({exc})") from exc
        if table.num_rows != shard["rows"]:
            raise SchemaError(f"{folder}: shard {shard['name']} has {table.num_rows} rows, "
                              f"manifest says {shard['rows']}")
        if schema is not None:
            got = {f.name: f.type for f in table.schema}
            wrong = [f"{f.name}: {got[f.name]} (expected {f.type})" for f in schema
                     if f.name in got and got[f.name] != f.type]
            if wrong:
                raise SchemaError(f"{folder}: shard {shard['name']} has wrong column types: "
                                  f"{wrong}")
        tables.append(table if schema is None else conform(table, schema))
    if not tables:
        if schema is None:
            raise SchemaError(f"{folder}: the manifest lists no shards")
        return schema.empty_table()
    return pa.concat_tables(tables)
