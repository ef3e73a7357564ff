"""Folder swaps and leftovers of killed runs (src/librachem/common/atomic.py)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from librachem.common.atomic import remove_leftovers, replace_dir


def _folder(path, text):
    path.mkdir()
    (path / "weights.bin").write_text(text)
    (path / "config.json").write_text(text)
    return path


def test_replace_dir_swaps_whole_folders(tmp_path):
    target = _folder(tmp_path / "base", "old")
    replace_dir(_folder(tmp_path / ".tmp-base.x", "new"), target)
    assert {p.name: p.read_text() for p in target.iterdir()} == {"weights.bin": "new",
                                                                  "config.json": "new"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base"]
    replace_dir(_folder(tmp_path / ".tmp-base.y", "first"), tmp_path / "absent")
    assert (tmp_path / "absent" / "weights.bin").read_text() == "first"


@pytest.mark.parametrize("kill_before", ["rename-in", "delete-old"])
def test_a_kill_inside_replace_dir_never_leaves_a_half_deleted_folder(tmp_path, kill_before):
    """SIGKILL at the two points between the three steps (rename aside, rename in, delete
    the old copy): the target is whole (old or new) or absent, never partial."""
    target = _folder(tmp_path / "base", "old")
    _folder(tmp_path / ".tmp-base.x", "new")
    hook = {"rename-in": "os.replace", "delete-old": "shutil.rmtree"}[kill_before]
    code = f"""
import os, shutil, signal
from librachem.common import atomic
calls = []
real = {hook}
def killer(*a, **k):
    calls.append(a)
    if len(calls) == 2:  # the second os.replace / the final shutil.rmtree
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*a, **k)
atomic.{hook.split('.')[0]}.{hook.split('.')[1]} = killer
atomic.replace_dir({str(tmp_path / '.tmp-base.x')!r}, {str(target)!r})
"""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True)
    assert proc.returncode == -9, proc.stderr.decode()
    if target.exists():
        texts = {p.read_text() for p in target.iterdir()}
        assert len(texts) == 1 and len(list(target.iterdir())) == 2
    assert remove_leftovers(target) >= 1
    assert sorted(p.name for p in tmp_path.iterdir()) in (["base"], [])


def test_remove_leftovers_keeps_other_files(tmp_path):
    out = tmp_path / "eval"
    out.mkdir()
    (out / "responses.parquet").write_text("x")
    (out / ".tmp-responses.parquet.abc").write_text("torn")
    (tmp_path / ".tmp-eval.json.k2").write_text("torn")
    (tmp_path / "eval.json").write_text("{}")
    (tmp_path / ".tmp-other.json.k").write_text("someone else's")
    (tmp_path / ".tmp-eval_details.json.k").write_text("another target's, same prefix")
    assert remove_leftovers(out, tmp_path / "eval.json") == 2
    assert sorted(p.name for p in out.iterdir()) == ["responses.parquet"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".tmp-eval_details.json.k", ".tmp-other.json.k", "eval", "eval.json"]


def test_write_json_refuses_nan_and_names_the_key(tmp_path):
    import json
    import math

    from librachem.common.atomic import write_json
    from librachem.common.errors import DataError

    target = tmp_path / "metrics.json"
    with pytest.raises(DataError, match=r"dpo\.safety"):
        write_json(target, {"dpo": {"safety": math.nan, "n": 3}})
    with pytest.raises(DataError, match=r"curve\.1"):
        write_json(target, {"curve": [1.0, math.inf]})
    assert not target.exists() and list(tmp_path.iterdir()) == []
    write_json(target, {"dpo": {"safety": 0.5}})
    assert json.loads(target.read_text()) == {"dpo": {"safety": 0.5}}
