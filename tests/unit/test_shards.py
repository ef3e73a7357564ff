"""Shard sets: atomic shards, manifest last, readers refuse incomplete or altered folders."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from librachem.common.errors import SchemaError
from librachem.common.shards import (
    MANIFEST,
    read_manifest,
    read_shards,
    schema_hash,
    write_shards,
)

SCHEMA = pa.schema([pa.field("row_id", pa.string(), nullable=False),
                    pa.field("n", pa.int32(), nullable=False)])


def _table(n: int, start: int = 0) -> pa.Table:
    return pa.Table.from_pylist([{"row_id": f"r{i}", "n": i} for i in range(start, start + n)],
                                schema=SCHEMA)


def test_roundtrip_splits_and_shard_size(tmp_path):
    manifest = write_shards(tmp_path, {"train": _table(5), "test": _table(2, 100)}, SCHEMA,
                            rows_per_shard=2)
    names = [s["name"] for s in manifest["shards"]]
    assert names == ["test-00000.parquet", "train-00000.parquet", "train-00001.parquet",
                     "train-00002.parquet"]
    assert manifest["splits"] == {"test": 2, "train": 5}
    assert manifest["schema_hash"] == schema_hash(SCHEMA)
    train = read_shards(tmp_path, SCHEMA, split="train")
    assert train.column("n").to_pylist() == [0, 1, 2, 3, 4]
    assert read_shards(tmp_path).num_rows == 7


def test_empty_split_still_has_a_loadable_shard(tmp_path):
    write_shards(tmp_path, {"train": _table(0)}, SCHEMA)
    assert (tmp_path / "train-00000.parquet").is_file()
    assert read_shards(tmp_path, SCHEMA, split="train").num_rows == 0


def test_reader_refuses_folder_without_manifest(tmp_path):
    write_shards(tmp_path, {"train": _table(3)}, SCHEMA)
    (tmp_path / MANIFEST).unlink()
    with pytest.raises(SchemaError, match="no manifest"):
        read_shards(tmp_path)


def test_reader_refuses_altered_or_missing_shard(tmp_path):
    write_shards(tmp_path, {"train": _table(3)}, SCHEMA)
    shard = tmp_path / "train-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:-8] + b"garbage!")
    with pytest.raises(SchemaError, match="checksum"):
        read_manifest(tmp_path)
    shard.unlink()
    with pytest.raises(SchemaError, match="missing"):
        read_shards(tmp_path)


def test_reader_refuses_other_schema(tmp_path):
    write_shards(tmp_path, {"train": _table(3)}, SCHEMA)
    other = pa.schema([pa.field("row_id", pa.string(), nullable=False)])
    with pytest.raises(SchemaError, match="schema hash"):
        read_shards(tmp_path, other)


def test_writer_rejects_table_off_schema(tmp_path):
    bad = pa.table({"row_id": ["a"]})
    with pytest.raises(SchemaError, match="missing"):
        write_shards(tmp_path, {"train": bad}, SCHEMA)
    assert not (tmp_path / MANIFEST).exists()


def test_rewrite_removes_old_shards_and_is_byte_identical(tmp_path):
    write_shards(tmp_path, {"train": _table(5)}, SCHEMA, rows_per_shard=1)
    first = write_shards(tmp_path, {"train": _table(2)}, SCHEMA, rows_per_shard=1)
    assert sorted(p.name for p in tmp_path.glob("*.parquet")) == [
        "train-00000.parquet", "train-00001.parquet"]
    again = write_shards(tmp_path, {"train": _table(2)}, SCHEMA, rows_per_shard=1)
    assert [s["sha256"] for s in first["shards"]] == [s["sha256"] for s in again["shards"]]
    assert json.loads((tmp_path / MANIFEST).read_text())["rows"] == 2


def _edit_manifest(folder, edit):
    path = folder / MANIFEST
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def _two_shards(tmp_path):
    write_shards(tmp_path / "s", {"train": _table(4), "test": _table(2, 100)}, SCHEMA,
                 rows_per_shard=2)
    return tmp_path / "s"


@pytest.mark.parametrize("edit, message", [
    (lambda m: m["shards"].pop(), "rows 6 != the sum"),
    (lambda m: m["shards"].append(dict(m["shards"][0])), "listed twice"),
    (lambda m: m["shards"][0].update(name="../outside.parquet"), "malformed manifest"),
    (lambda m: m.pop("schema_hash"), "malformed manifest"),
    (lambda m: m["splits"].update(train=3), "disagree with its shards"),
])
def test_reader_refuses_manifests_that_disagree_with_the_shards(tmp_path, edit, message):
    folder = _two_shards(tmp_path)
    _edit_manifest(folder, edit)
    with pytest.raises(SchemaError, match=message):
        read_shards(folder, SCHEMA)


def test_reader_refuses_unlisted_shard_files(tmp_path):
    folder = _two_shards(tmp_path)
    (folder / "train-00009.parquet").write_bytes((folder / "train-00000.parquet").read_bytes())
    with pytest.raises(SchemaError, match="not in the manifest"):
        read_shards(folder, SCHEMA)


def test_reader_refuses_unreadable_or_retyped_shard_even_with_matching_checksum(tmp_path):
    import pyarrow.parquet as pq

    from librachem.common.hashing import sha256_file

    folder = _two_shards(tmp_path)
    shard = folder / "test-00000.parquet"
    shard.write_bytes(shard.read_bytes()[:40])  # truncated, checksum updated to match
    _edit_manifest(folder, lambda m: m["shards"][0].update(sha256=sha256_file(shard)))
    with pytest.raises(SchemaError, match="not readable Parquet"):
        read_shards(folder, SCHEMA)

    folder = _two_shards(tmp_path / "b")
    shard = folder / "test-00000.parquet"
    table = pq.read_table(shard)
    retyped = table.set_column(0, pa.field(SCHEMA.names[0], pa.int64()),
                               pa.array(range(table.num_rows), pa.int64()))
    pq.write_table(retyped, shard)
    _edit_manifest(folder, lambda m: m["shards"][0].update(sha256=sha256_file(shard)))
    with pytest.raises(SchemaError, match="wrong column types"):
        read_shards(folder, SCHEMA)
