"""Atomic file writes: write a temporary file in the same folder, fsync, then ``os.replace``.

A crash or ``kill -9`` leaves either the old file or the complete new one, never a torn one.
Temporary files start with ``.tmp-`` so readers and globbing skip them.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


@contextmanager
def atomic_path(target: Path | str) -> Iterator[Path]:
    """Yield a temporary path next to ``target``; on clean exit move it onto ``target``.

    The caller writes the temporary path however it likes (pyarrow, torch, ...). On an
    exception the temporary file is removed and ``target`` is untouched.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{target.name}.", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, 0o644)  # mkstemp creates 0600; outputs are ordinary shared files
        os.replace(tmp_path, target)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_bytes(target: Path | str, data: bytes) -> None:
    """Atomically write ``data`` to ``target``."""
    with atomic_path(target) as tmp:
        tmp.write_bytes(data)


def write_json(target: Path | str, obj: Any) -> None:
    """Atomically write ``obj`` as pretty, key-sorted JSON (stable diffs for DVC metrics)."""
    write_bytes(target, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode("utf-8"))
