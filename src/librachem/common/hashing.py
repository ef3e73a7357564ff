"""Content hashes of files (shard checksums, model revisions, adapter provenance) and
random generators seeded from content (stable across runs and platforms)."""

from __future__ import annotations

import hashlib
import random
from pathlib import Path


def sha256_file(path: Path | str) -> str:
    """Hex SHA-256 of a file, read in 1 MiB chunks (constant memory)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def derived_rng(*parts: object) -> random.Random:
    """A ``random.Random`` seeded from the sha256 of ``parts`` (stable across runs/platforms)."""
    digest = hashlib.sha256("\x1f".join(map(str, parts)).encode("utf-8")).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))
