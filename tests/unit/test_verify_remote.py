"""`librachem verify-remote` on a tiny DVC project (one stage writing a folder and a file)
against a local directory remote and an S3-compatible moto server (issue 18 point 7)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from librachem.cli import main

VENV_BIN = Path(sys.executable).parent
DVC_YAML = """\
stages:
  make:
    cmd: python make.py
    deps: [make.py]
    outs: [data/shards, data/model.bin]
"""
MAKE = """\
from pathlib import Path
Path("data/shards").mkdir(parents=True, exist_ok=True)
for i in range(3):
    Path(f"data/shards/part-{i}.txt").write_text(f"shard {i}\\n" * 50)
Path("data/model.bin").write_bytes(bytes(range(256)) * 8)
"""


def sh(args: list[str], cwd: Path, env: dict | None = None) -> str:
    full = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
            "DVC_NO_ANALYTICS": "1", **(env or {})}
    proc = subprocess.run(args, cwd=cwd, env=full, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"{args}: {proc.stdout}{proc.stderr}"
    return proc.stdout + proc.stderr


@pytest.fixture
def project(tmp_path: Path) -> Path:
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / "dvc.yaml").write_text(DVC_YAML)
    (proj / "make.py").write_text(MAKE)
    sh(["git", "init", "-q"], proj)
    sh(["git", "config", "user.email", "t@example.com"], proj)
    sh(["git", "config", "user.name", "t"], proj)
    sh([str(VENV_BIN / "dvc"), "init", "-q"], proj)
    sh([str(VENV_BIN / "dvc"), "repro", "-q"], proj)
    return proj


def _shard_oid(proj: Path, name: str) -> str:
    from dvc.repo import Repo
    from dvc_data.hashfile.tree import Tree

    with Repo(str(proj)) as repo:
        out = next(o for s in repo.index.stages for o in s.outs if str(o) == "data/shards")
        tree = Tree.load(repo.cache.local, out.hash_info)
        return next(e.value for key, _, e in tree if key == (name,)), out.hash_info.value


def _verify(proj: Path, *args: str, env: dict | None = None):
    old = Path.cwd()
    os.chdir(proj)
    try:
        return CliRunner(env=env).invoke(main, ["verify-remote", *args])
    finally:
        os.chdir(old)


def _obj(store: Path, oid: str) -> Path:
    return store / "files" / "md5" / oid[:2] / oid[2:]


def test_local_remote_missing_objects_are_named_and_repaired(project: Path, tmp_path: Path):
    store = tmp_path / "remote"
    dvc = str(VENV_BIN / "dvc")
    sh([dvc, "remote", "add", "-d", "local", str(store)], project)
    sh([dvc, "push", "-q"], project)
    assert _verify(project).exit_code == 0
    part1, dir_oid = _shard_oid(project, "part-1.txt")
    _obj(store, part1).unlink()                       # a lost object inside a directory
    # DVC itself trusts the .dir manifest and its remote index: "in sync"
    assert "Cache and remote 'local' are in sync" in sh([dvc, "status", "-c"], project)

    result = _verify(project, "--check-only")
    assert result.exit_code == 1
    assert "MISSING data/shards: 1 of 4 objects (data/shards/part-1.txt)" in result.output
    assert "not repaired (--check-only)" in result.output and not _obj(store, part1).exists()

    result = _verify(project)
    assert result.exit_code == 0, result.output
    assert "data/shards/part-1.txt" in result.output and "repaired from the local cache" in \
        result.output
    assert _obj(store, part1).read_text() == "shard 1\n" * 50
    assert _verify(project).output.rstrip().endswith(
        "0 missing, 0 repaired, 0 outputs still incomplete")

    # the manifest itself lost, and an object the local cache no longer has either
    _obj(store, dir_oid).unlink()
    _obj(store, part1).unlink()
    (project / ".dvc" / "cache" / "files" / "md5" / part1[:2] / part1[2:]).unlink()
    result = _verify(project)
    assert result.exit_code == 1
    assert "MISSING data/shards: 2 of 4 objects" in result.output
    assert "data/shards (directory manifest)" in result.output
    assert "1 repaired, 1 NOT in the local cache" in result.output
    assert "objects of data/shards are missing and not in the local cache" in result.output
    assert _obj(store, dir_oid).is_file()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3_server():
    port = _free_port()
    aws = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    proc = subprocess.Popen([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, **aws})
    url = f"http://127.0.0.1:{port}"
    try:
        import boto3

        client = boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                              aws_access_key_id="testing", aws_secret_access_key="testing")
        deadline = time.monotonic() + 30
        while True:
            try:
                client.create_bucket(Bucket="verify-remote")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        yield url, aws, client
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.slow
def test_s3_remote_missing_object_is_named_and_repaired(project: Path, s3_server, monkeypatch):
    url, aws, client = s3_server
    for key, value in aws.items():
        monkeypatch.setenv(key, value)
    dvc = str(VENV_BIN / "dvc")
    sh([dvc, "remote", "add", "s3r", "s3://verify-remote/store"], project)
    sh([dvc, "remote", "modify", "s3r", "endpointurl", url], project)
    sh([dvc, "push", "-q", "-r", "s3r"], project, env=aws)
    part2, _ = _shard_oid(project, "part-2.txt")
    key = f"store/files/md5/{part2[:2]}/{part2[2:]}"
    client.delete_object(Bucket="verify-remote", Key=key)
    assert "in sync" in sh([dvc, "status", "-c", "-r", "s3r"], project, env=aws)

    result = _verify(project, "-r", "s3r", "--check-only", env=aws)
    assert result.exit_code == 1 and "data/shards/part-2.txt" in result.output
    result = _verify(project, "-r", "s3r", env=aws)
    assert result.exit_code == 0, result.output
    assert "repaired from the local cache" in result.output
    body = client.get_object(Bucket="verify-remote", Key=key)["Body"].read()
    assert body == b"shard 2\n" * 50
    # checked again: complete
    assert _verify(project, "-r", "s3r", env=aws).output.rstrip().endswith(
        "0 missing, 0 repaired, 0 outputs still incomplete")
