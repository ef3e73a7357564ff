"""``librachem verify-remote``: check every object of the pipeline's outputs against a DVC
remote, name the missing outputs by path, and repair them from the local cache.

Why DVC's own commands do not catch it (dvc 3.67, dvc-data): ``dvc status -c`` and
``dvc push`` keep an index of the remote and, when a directory's ``.dir`` manifest exists
there, assume every file it lists exists too (``dvc_data.hashfile.status
._indexed_dir_hashes``: "If .dir hash exists in the ODB, assume directory contents also
exists"). After an interrupted push or a lost object, ``dvc status -c`` says in sync, a new
``dvc push`` uploads nothing, and a teammate's ``dvc pull`` fails with a bare hash that names
no output (issue 18).

What this does:

1. every cached output of every stage (``dvc.lock``) and ``.dvc`` file, through DVC's own
   index (``Repo.index.stages``; outputs with ``cache: false`` are not pushed and skipped);
2. its objects: the file's hash, or a directory's ``.dir`` manifest and every file it lists
   (the manifest read from the local cache, else from the remote);
3. one existence query per object straight against the remote's object store
   (``HashFileDB.oids_exist``), never the remote index;
4. for each missing object that the local cache holds (and whose content still matches its
   hash), an upload of exactly that object (``HashFileDB.add``); then the remote index is
   cleared so later ``dvc status -c`` / ``dvc push`` query the remote again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from librachem.common.errors import DataError

log = logging.getLogger(__name__)

MANIFEST = "(directory manifest)"


@dataclass
class OutputReport:
    """One output: its path, how many objects it has, and the missing ones."""

    path: str
    objects: int = 0
    missing: list[tuple[str, str]] = field(default_factory=list)    # (file, hash)
    repaired: list[tuple[str, str]] = field(default_factory=list)
    unrepairable: list[tuple[str, str]] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"path": self.path, "objects": self.objects,
                "missing": [f for f, _ in self.missing],
                "repaired": [f for f, _ in self.repaired],
                "unrepairable": [f for f, _ in self.unrepairable]}


@dataclass
class RemoteReport:
    """The result of :func:`verify_remote`."""

    remote: str
    outputs: list[OutputReport]

    @property
    def still_missing(self) -> list[OutputReport]:
        """Outputs with objects missing on the remote after any repair."""
        return [o for o in self.outputs
                if len(o.missing) > len(o.repaired)]

    def as_dict(self) -> dict[str, Any]:
        return {"remote": self.remote, "outputs_checked": len(self.outputs),
                "objects_checked": sum(o.objects for o in self.outputs),
                "objects_missing": sum(len(o.missing) for o in self.outputs),
                "objects_repaired": sum(len(o.repaired) for o in self.outputs),
                "objects_unrepairable": sum(len(o.unrepairable) for o in self.outputs),
                "outputs": [o.as_dict() for o in self.outputs if o.missing]}


def _objects(out: Any, cache: Any, odb: Any) -> list[tuple[str, str]]:
    """(file inside the output or the output itself, hash) of every object of ``out``."""
    from dvc_data.hashfile.tree import Tree

    hi = out.hash_info
    if not hi.isdir:
        return [(str(out), hi.value)]
    objs = [(f"{out} {MANIFEST}", hi.value)]
    for source in (cache, odb):
        try:
            tree = Tree.load(source, hi)
        except (FileNotFoundError, OSError, ValueError):
            continue
        return objs + [("/".join((str(out), *key)), entry.value) for key, _, entry in tree]
    # no manifest anywhere: its files cannot be listed; the manifest is reported missing
    return objs


def verify_remote(repo_root: Path | str = ".", remote: str | None = None, *,
                  repair: bool = True, jobs: int | None = None) -> RemoteReport:
    """Check (and repair) every cached output's objects on a DVC remote.

    Args:
        repo_root: the DVC project (the folder holding ``dvc.yaml``).
        remote: the remote name; default: the project's default remote.
        repair: upload missing objects that the local cache holds (else only report).
        jobs: parallel existence queries / uploads (DVC's default when None).

    Returns:
        A :class:`RemoteReport`; ``still_missing`` lists the outputs that remain incomplete.

    Raises:
        DataError: not a DVC project, no remote configured, or the remote cannot be read
            (the message carries DVC's reason).
    """
    from dvc.exceptions import DvcException
    from dvc.repo import Repo
    from dvc_data.hashfile.db import get_index

    try:
        repo = Repo(str(repo_root))
    except DvcException as exc:
        raise DataError(f"{repo_root}: not a DVC project ({exc})") from exc
    with repo:
        try:
            name = remote or repo.config["core"].get("remote")
            odbs = {h: repo.cloud.get_remote_odb(name, "verify-remote", hash_name=h)
                    for h in ("md5", "md5-dos2unix")}
        except DvcException as exc:
            raise DataError(f"verify-remote: {exc}") from exc
        caches = {"md5": repo.cache.local, "md5-dos2unix": repo.cache.legacy}
        reports: list[OutputReport] = []
        wanted: dict[str, list[tuple[OutputReport, str, str]]] = {}
        for stage in repo.index.stages:
            for out in stage.outs:
                if not out.use_cache or not out.hash_info or not out.hash_info.value:
                    continue
                kind = "md5-dos2unix" if out.hash_info.name == "md5-dos2unix" else "md5"
                report = OutputReport(str(out))
                objs = _objects(out, caches[kind], odbs[kind])
                report.objects = len(objs)
                reports.append(report)
                for item, oid in objs:
                    wanted.setdefault(kind, []).append((report, item, oid))
        for kind, items in wanted.items():
            odb, cache = odbs[kind], caches[kind]
            try:
                present = set(odb.oids_exist({oid for _, _, oid in items}, jobs=jobs))
            except Exception as exc:  # noqa: BLE001 - fsspec/botocore errors of any kind
                raise DataError(f"verify-remote: cannot list remote {name!r} ({exc})") from exc
            for report, item, oid in items:
                if oid not in present:
                    report.missing.append((item, oid))
            if repair:
                _repair(odb, cache, [(r, i, o) for r, i, o in items if o not in present], jobs)
                if any(o not in present for _, _, o in items):
                    get_index(odb).clear()  # the remote index said "present": forget it
    return RemoteReport(str(name), reports)


def _repair(odb: Any, cache: Any, missing: list[tuple[OutputReport, str, str]],
            jobs: int | None) -> None:
    """Upload each missing object the local cache holds intact (one batch), check that it
    arrived, and record per output what was repaired and what could not be."""
    intact = []
    for oid in dict.fromkeys(o for _, _, o in missing):
        try:
            cache.check(oid, check_hash=True)       # never spread a corrupt object
        except Exception:  # noqa: BLE001 - FileNotFoundError, ObjectFormatError
            continue
        intact.append(oid)
    if intact:
        odb.add([cache.oid_to_path(o) for o in intact], cache.fs, intact, check_exists=False,
                jobs=jobs, verify=False)
    arrived = set(odb.list_oids_exists(intact, jobs=jobs)) if intact else set()
    for report, item, oid in missing:
        (report.repaired if oid in arrived else report.unrepairable).append((item, oid))
    log.info("verify-remote: %d objects uploaded, %d missing from the local cache too",
             len(arrived), len({o for _, _, o in missing}) - len(arrived))


def render(report: RemoteReport, *, repair: bool) -> list[str]:
    """Human-readable lines: one per incomplete output (path, missing files), a summary."""
    d = report.as_dict()
    lines = []
    for o in report.outputs:
        if not o.missing:
            continue
        shown = ", ".join(f for f, _ in o.missing[:5]) + (
            f" and {len(o.missing) - 5} more" if len(o.missing) > 5 else "")
        state = ("repaired from the local cache" if len(o.repaired) == len(o.missing) else
                 f"{len(o.repaired)} repaired, {len(o.unrepairable)} NOT in the local cache"
                 if repair else "not repaired (--check-only)")
        lines.append(f"MISSING {o.path}: {len(o.missing)} of {o.objects} objects ({shown}); "
                     f"{state}")
    lines.append(f"remote {report.remote}: {d['outputs_checked']} outputs, "
                 f"{d['objects_checked']} objects checked, {d['objects_missing']} missing, "
                 f"{d['objects_repaired']} repaired, "
                 f"{len(report.still_missing)} outputs still incomplete")
    return lines
