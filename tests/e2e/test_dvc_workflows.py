"""DVC workflows on the small profile (issue: end to end).

One temporary project (a copy of this repository's tracked and unignored files, the small
profile of tests/e2e/small_profile.yaml merged into params.yaml, a tiny random model as the
base) runs the whole pipeline once; the tests then check what users rely on:

- a second ``dvc repro`` does nothing;
- a params change reruns exactly the stages that read it (and what follows);
- ``dvc exp run -S`` works and ``dvc exp show`` shows safety, utility and overall;
- ``dvc metrics diff`` between two committed runs shows the change;
- sharing: push to a local directory remote and to an S3-compatible server (moto on
  127.0.0.1), a second clone pulls and is up to date with no LLM call and no training;
- the LLM call cache is shared the same way, and a replay-only rebuild from it gives
  identical shards.

The tests run in file order and share the project (module-scoped fixture).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from librachem.commands.profiles import merge
from librachem.common.config import read_yaml

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
PROFILE = Path(__file__).with_name("small_profile.yaml")
STAGES = ["seeds", "base_model", "generate", "augment", "sft", "dpo", "evaluate", "report"]


def run(args: list[str], cwd: Path, check: bool = True, env: dict | None = None) -> str:
    """Run a command in ``cwd`` with the test venv first on PATH; return stdout+stderr."""
    full_env = {**os.environ, "PATH": f"{VENV_BIN}{os.pathsep}{os.environ['PATH']}",
                "DVC_NO_ANALYTICS": "1", "HF_HUB_OFFLINE": "1",
                # the small profile's fake LLM scripts live in the project's tests/ package;
                # the project's own src first (not whichever checkout the venv installed)
                "PYTHONPATH": f"{cwd / 'src'}{os.pathsep}{cwd}", **(env or {})}
    proc = subprocess.run(args, cwd=cwd, env=full_env, capture_output=True, text=True,
                          timeout=900)
    out = proc.stdout + proc.stderr
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{out[-6000:]}")
    return out


def dvc(*args: str, cwd: Path, check: bool = True, env: dict | None = None) -> str:
    return run([str(VENV_BIN / "dvc"), *args], cwd, check=check, env=env)


def ran_stages(output: str) -> set[str]:
    """Stage names DVC actually ran (not skipped, not restored from the run-cache)."""
    return set(re.findall(r"Running stage '([^']+)'", output))


def set_param(project: Path, dotted: str, value) -> None:
    params = read_yaml(project / "params.yaml")
    node = params
    *parents, leaf = dotted.split(".")
    for part in parents:
        node = node[part]
    node[leaf] = value
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def git_commit(project: Path, message: str) -> None:
    run(["git", "add", "-A"], project)
    run(["git", "commit", "-q", "-m", message], project)


def copy_repo(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if rel == "dvc.lock" or rel.startswith("metrics/") or not src.is_file():
            continue
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src, dest / rel)


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    from tests.tiny_model import save_tiny_base

    root = tmp_path_factory.mktemp("e2e")
    proj = root / "project"
    proj.mkdir()
    copy_repo(proj)
    # untied embeddings: a tied random model answers only newlines (empty answers stop evaluate)
    tiny = save_tiny_base(root / "tiny-base", tie_word_embeddings=False)
    params = merge(read_yaml(proj / "params.yaml"), read_yaml(PROFILE))
    params["base_model"]["pretrained"] = str(tiny)
    (proj / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    run(["git", "init", "-q", "-b", "main"], proj)
    dvc("remote", "modify", "local", "url", str(root / "remote"), cwd=proj)
    git_commit(proj, "small profile")  # DVCLive needs a repository with a commit
    out = dvc("repro", cwd=proj)
    assert ran_stages(out) == set(STAGES), out[-4000:]
    git_commit(proj, "first run")
    return proj


def test_second_repro_does_nothing(project: Path) -> None:
    out = dvc("repro", cwd=project)
    assert ran_stages(out) == set(), out
    assert "Data and pipelines are up to date" in out
    assert "up to date" in dvc("status", cwd=project)


def test_metrics_cover_every_model(project: Path) -> None:
    metrics = json.loads((project / "metrics/eval.json").read_text())
    for model in ("base", "sft", "dpo"):
        for key in ("safety", "utility", "overall", "overall_macro"):
            assert 0.0 <= metrics[model][key] <= 1.0, (model, key)


def test_beta_change_reruns_only_dpo_and_evaluate(project: Path) -> None:
    set_param(project, "dpo.beta", 0.25)
    out = dvc("repro", cwd=project)
    assert ran_stages(out) == {"dpo", "evaluate", "report"}, out[-3000:]
    git_commit(project, "beta 0.25")


def test_metrics_diff_between_two_commits(project: Path) -> None:
    out = dvc("metrics", "diff", "HEAD~1", "HEAD", "--json", cwd=project)
    diff = json.loads(out[out.index("{"):])
    # The DPO loss gradient scales with beta, so the logged grad_norm of the beta-0.25 run
    # differs from the beta-0.2 one (timings differ too, but only by chance: not asserted;
    # the rewards are 0 at the first logged step of this 2-step run, policy == reference).
    assert diff, "dvc metrics diff reported no change between two different runs"
    assert "grad_norm" in diff.get("metrics/dpo/metrics.json", {}), diff


def test_augment_change_reruns_augment_and_what_follows(project: Path) -> None:
    set_param(project, "augment.seed", 8)
    out = dvc("repro", cwd=project)
    assert ran_stages(out) == {"augment", "sft", "dpo", "evaluate", "report"}, out[-3000:]
    git_commit(project, "augment seed 8")


def test_evaluate_change_reruns_only_evaluate(project: Path) -> None:
    set_param(project, "evaluate.bootstrap.seed", 1)
    out = dvc("repro", cwd=project)
    assert ran_stages(out) == {"evaluate", "report"}, out[-3000:]
    git_commit(project, "bootstrap seed 1")


def test_exp_run_and_show(project: Path) -> None:
    out = dvc("exp", "run", "-S", "dpo.beta=0.3", cwd=project)
    assert ran_stages(out) == {"dpo", "evaluate", "report"}, out[-3000:]
    show = dvc("exp", "show", "--json", cwd=project)
    text = show[show.index("["):]
    data = json.loads(text)
    flat = json.dumps(data)
    for key in ("safety", "utility", "overall"):
        assert f'"{key}"' in flat, key
    assert '"beta": 0.3' in flat
    narrow = dvc("exp", "show", "--only-changed", "--csv", cwd=project).splitlines()[0]
    full = dvc("exp", "show", "--csv", cwd=project).splitlines()[0]
    assert "dpo.beta" in narrow and len(narrow.split(",")) < len(full.split(","))
    shown = dvc("metrics", "show", "metrics/eval.json", "--json", cwd=project)
    assert '"overall_macro"' in shown and '"by_category"' not in shown  # headline only
    # `dvc exp run -S` leaves the changed params in the workspace; restore the committed run.
    run(["git", "checkout", "--", "."], project)  # params, dvc.lock, git-tracked metrics
    dvc("checkout", "--force", cwd=project)
    assert ran_stages(dvc("repro", cwd=project)) == set()


def _clone(project: Path, dest: Path) -> Path:
    run(["git", "clone", "-q", str(project), str(dest)], project.parent)
    return dest


def test_share_through_local_remote(project: Path, tmp_path: Path) -> None:
    dvc("push", cwd=project)
    clone = _clone(project, tmp_path / "clone")
    dvc("pull", cwd=clone)
    assert "up to date" in dvc("status", cwd=clone)
    out = dvc("repro", cwd=clone)
    # Nothing reruns: no LLM call and no training happen in the second clone.
    assert ran_stages(out) == set(), out[-3000:]
    assert (clone / "models/dpo").is_dir()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def s3_server():
    port = _free_port()
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1"}
    proc = subprocess.Popen([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        import boto3

        deadline = time.monotonic() + 30
        while True:
            try:
                boto3.client("s3", endpoint_url=url, region_name="us-east-1",
                             aws_access_key_id="testing", aws_secret_access_key="testing"
                             ).create_bucket(Bucket="librachem-e2e")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        yield url, env
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_share_through_s3_remote(project: Path, tmp_path: Path, s3_server) -> None:
    url, env = s3_server
    aws = {k: env[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY",
                               "AWS_DEFAULT_REGION")}
    dvc("remote", "add", "s3r", "s3://librachem-e2e/store", cwd=project)
    dvc("remote", "modify", "s3r", "endpointurl", url, cwd=project)
    git_commit(project, "s3 remote")
    dvc("push", "-r", "s3r", cwd=project, env=aws)
    clone = _clone(project, tmp_path / "clone-s3")
    dvc("pull", "-r", "s3r", cwd=clone, env=aws)
    out = dvc("repro", cwd=clone)
    assert ran_stages(out) == set(), out[-3000:]


def test_llm_cache_shared_and_replayed(project: Path, tmp_path: Path) -> None:
    cache = project / ".llm-cache"
    assert any(cache.rglob("*")), "the pipeline wrote no LLM call-cache entries"
    dvc("add", ".llm-cache", cwd=project)
    git_commit(project, "track the LLM call cache")
    dvc("push", cwd=project)
    clone = _clone(project, tmp_path / "clone-cache")
    dvc("pull", cwd=clone)
    before = (clone / "data/triplets/manifest.json").read_bytes()
    # Rebuild generate from the pulled cache alone: any miss would fail the stage.
    out = dvc("repro", "-f", "-s", "generate", cwd=clone, env={"LIBRACHEM_REPLAY_ONLY": "1"})
    assert ran_stages(out) == {"generate"}, out[-3000:]
    assert (clone / "data/triplets/manifest.json").read_bytes() == before
    shards = sorted((clone / "data/triplets").glob("*.parquet"))
    originals = sorted((project / "data/triplets").glob("*.parquet"))
    assert [p.read_bytes() for p in shards] == [p.read_bytes() for p in originals]
