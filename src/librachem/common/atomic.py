"""Atomic file writes: write a temporary file in the same folder, fsync, then ``os.replace``.

A crash or ``kill -9`` leaves either the old file or the complete new one, never a torn one.
Temporary files start with ``.tmp-`` (a folder swapped out by :func:`replace_dir`: ``.old-``)
so readers and globbing skip them; ``.gitignore`` and ``.dvcignore`` list both patterns, so
a killed run's leftovers are never committed to git or hashed into a DVC output, and
:func:`remove_leftovers` deletes them when the stage runs again.
"""

from __future__ import annotations

import json
import math
import os
import shutil
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


def _non_finite(obj: Any, path: str = "") -> str | None:
    """The key path of the first NaN or infinite float in ``obj``, or None."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return path or "<root>"
    items = (obj.items() if isinstance(obj, dict)
             else enumerate(obj) if isinstance(obj, list | tuple) else ())
    for key, value in items:
        found = _non_finite(value, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None


def write_json(target: Path | str, obj: Any) -> None:
    """Atomically write ``obj`` as pretty, key-sorted JSON (stable diffs for DVC metrics).

    Strict JSON (``allow_nan=False``): ``NaN`` / ``Infinity`` are not JSON, and DVC, jq and
    most readers either reject them or read them as text, so a metric that came out
    undefined must stop the stage instead of landing in a metrics file.

    Raises:
        DataError: ``obj`` holds a NaN or infinite float (the message names its key path);
            nothing is written.
    """
    try:
        text = json.dumps(obj, indent=2, sort_keys=True, allow_nan=False)
    except ValueError as exc:
        from librachem.common.errors import DataError

        where = _non_finite(obj)
        raise DataError(f"{target}: value at {where!r} is not a finite number ({exc}); "
                        "nothing was written") from exc
    write_bytes(target, (text + "\n").encode("utf-8"))


def replace_dir(new: Path | str, target: Path | str) -> None:
    """Move the finished folder ``new`` onto ``target`` (same parent folder).

    The old ``target`` is first renamed aside to ``.old-<name>.<pid>`` (one rename), then
    ``new`` is renamed in, then the old copy is deleted: a kill at any point leaves the old
    folder whole, the new one whole, or (between the two renames) no ``target`` at all,
    which readers refuse; never a folder that is half old, half deleted.
    """
    new, target = Path(new), Path(target)
    old = None
    if target.exists():
        old = target.parent / f".old-{target.name}.{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(target, old)
    os.replace(new, target)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def remove_leftovers(*targets: Path | str) -> int:
    """Delete what killed runs left next to each target: ``.tmp-<name>`` / ``.tmp-<name>.*``
    files or folders (:func:`atomic_path`, temporary output folders) and ``.old-<name>.*``
    folders (:func:`replace_dir`), and, for a target that is a folder, ``.tmp-*`` entries inside
    it. Call it at the start of a stage, before it writes. Returns how many were removed."""
    removed = 0
    for target in map(Path, targets):
        found = []
        if target.parent.is_dir():
            found += [*target.parent.glob(f".tmp-{target.name}"),
                      *target.parent.glob(f".tmp-{target.name}.*"),
                      *target.parent.glob(f".old-{target.name}.*")]
        if target.is_dir():
            found += list(target.glob(".tmp-*"))
        for path in found:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed += 1
    return removed
