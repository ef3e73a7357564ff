"""A pretrained base model (hub id or local folder) copied into ``models/base/`` as it is stored.

No load-and-resave: the weight files (safetensors only) are downloaded or copied byte for byte,
so a bf16 model stays bf16 and the folder is the size of the source (16 GB for an 8B model, not
32 GB of fp32). Only the tokenizer files are rewritten (``model_max_length``).

Hub ids:

* the revision is resolved to a commit first (``HfApi.model_info``), then exactly that commit is
  downloaded with ``snapshot_download(local_dir=...)`` straight into the output's temporary
  sibling (no second copy in the Hugging Face cache); sub-folders (e.g. Llama's ``original/``
  consolidated checkpoint) and pickled weights are not downloaded;
* the token is read by ``huggingface_hub`` from ``HF_TOKEN`` (or the user's ``hf auth login``);
  nothing here reads, logs or writes it;
* failures name their cause (:func:`hub_error`): offline, gated (accept the licence and set
  ``HF_TOKEN``), not found, revision not found.

The provenance records the hub id, the requested revision, the commit and the SHA-256 of every
file, so two runs of the same commit are recognisably the same model.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path
from typing import Any

from librachem.common.errors import ConfigError
from librachem.common.hashing import sha256_file

log = logging.getLogger(__name__)

#: Files kept from a model repository or folder (top level only).
MODEL_FILES = ("config.json", "generation_config.json", "model.safetensors.index.json",
               "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
               "tokenizer.model", "vocab.json", "merges.txt", "added_tokens.json",
               "chat_template.jinja", "chat_template.json")
WEIGHT_PATTERN = "*.safetensors"
_COMMIT = 40  # hex digits of a git commit


def is_hub_id(pretrained: str) -> bool:
    """True when ``pretrained`` is not an existing local folder (so it names a hub repo)."""
    return not Path(pretrained).expanduser().is_dir()


def hub_error(exc: BaseException, repo_id: str, revision: str | None) -> ConfigError:
    """Translate a ``huggingface_hub`` exception into a ConfigError that names the cause."""
    from huggingface_hub.errors import (
        GatedRepoError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    where = f"base_model.pretrained = {repo_id!r}"
    if isinstance(exc, GatedRepoError):
        return ConfigError(
            f"{where} is a gated model: accept its licence on https://huggingface.co/{repo_id} "
            "with your account, then export HF_TOKEN=<a read token of that account> (never put "
            "it in params.yaml)")
    if isinstance(exc, RepositoryNotFoundError):
        token = "HF_TOKEN is set" if os.environ.get("HF_TOKEN") else "HF_TOKEN is not set"
        return ConfigError(f"{where}: no such model on the hub, or a private one you cannot "
                           f"see ({token}); check the id")
    if isinstance(exc, RevisionNotFoundError):
        return ConfigError(f"{where}: revision {revision!r} (base_model.revision) does not exist "
                           "in that repository")
    if isinstance(exc, (OfflineModeIsEnabled, LocalEntryNotFoundError)):
        return ConfigError(f"{where}: the hub cannot be reached (offline mode, or no network): "
                           f"{type(exc).__name__}: {str(exc)[:200]}. Unset HF_HUB_OFFLINE / "
                           "TRANSFORMERS_OFFLINE or point pretrained at a local folder")
    return ConfigError(f"{where}: download failed ({type(exc).__name__}: {str(exc)[:300]})")


def download_hub(repo_id: str, revision: str | None, dest: Path) -> dict[str, Any]:
    """Resolve ``revision`` to a commit and download that commit's model files into ``dest``.

    Returns:
        ``{"hub_id", "requested_revision", "commit"}``.

    Raises:
        ConfigError: the user's environment asks for offline mode, or a hub error
            (:func:`hub_error`).
    """
    from librachem.common.stagecli import lift_hub_offline_defaults, user_offline_var

    var = user_offline_var()
    if var is not None:
        raise ConfigError(f"base_model.pretrained = {repo_id!r} is a hub id but your environment "
                          f"sets {var}={os.environ[var]} (offline): unset it to download, or "
                          "point pretrained at a local folder")
    lift_hub_offline_defaults()
    from huggingface_hub import HfApi, snapshot_download

    try:
        commit = HfApi().model_info(repo_id, revision=revision).sha
        if not commit:
            raise ConfigError(f"base_model.pretrained = {repo_id!r}: the hub reported no commit "
                              f"for revision {revision!r}")
        if revision is None or len(revision) != _COMMIT:
            log.warning("base_model.revision is %r; pin the commit for a reproducible run: "
                        "base_model.revision: %s", revision, commit)
        log.info("downloading %s at %s into %s", repo_id, commit, dest)
        snapshot_download(repo_id, revision=commit, local_dir=dest,
                          allow_patterns=[*MODEL_FILES, WEIGHT_PATTERN], ignore_patterns=["*/*"])
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001 - classified by hub_error, the rest named
        raise hub_error(exc, repo_id, revision) from exc
    shutil.rmtree(dest / ".cache", ignore_errors=True)  # huggingface_hub's download metadata
    return {"hub_id": repo_id, "requested_revision": revision, "commit": commit}


def copy_local(src: Path, dest: Path) -> dict[str, Any]:
    """Copy a local model folder's files (:data:`MODEL_FILES`, ``*.safetensors``) into ``dest``.

    Raises:
        ConfigError: the folder has no safetensors weights (pickled ``.bin`` weights are not
            loaded: convert them with ``save_pretrained(..., safe_serialization=True)``).
    """
    names = [n for n in MODEL_FILES if (src / n).is_file()]
    names += sorted(p.name for p in src.glob(WEIGHT_PATTERN))
    for name in names:
        shutil.copy2(src / name, dest / name)
    return {"pretrained_folder": str(src)}


def check_folder(folder: Path, pretrained: str) -> dict[str, Any]:
    """Check a fetched folder is a complete safetensors model; describe its weights.

    Returns:
        ``{"dtype": str, "n_params": int, "files": {name: sha256}}``: the dtype as stored
        (e.g. ``bfloat16``) and the parameter count read from the safetensors headers.

    Raises:
        ConfigError: no ``config.json`` or no safetensors weights, or a shard listed in the
            index is missing.
    """
    import json

    from safetensors import safe_open

    where = f"base_model.pretrained = {pretrained!r}"
    if not (folder / "config.json").is_file():
        raise ConfigError(f"{where}: no config.json; not a Hugging Face model")
    weights = sorted(folder.glob(WEIGHT_PATTERN))
    if not weights:
        raise ConfigError(f"{where}: no *.safetensors weights (pickled .bin weights are not "
                          "loaded; convert them with save_pretrained(safe_serialization=True))")
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        shards = set(json.loads(index.read_text("utf-8"))["weight_map"].values())
        missing = sorted(shards - {w.name for w in weights})
        if missing:
            raise ConfigError(f"{where}: weight shards {missing} listed in the index are missing")
    n_params, dtypes = 0, {}
    for w in weights:
        with safe_open(str(w), framework="pt") as fh:
            for key in fh.keys():
                sl = fh.get_slice(key)
                n = 1
                for d in sl.get_shape():
                    n *= int(d)
                n_params += n
                dtypes[sl.get_dtype()] = dtypes.get(sl.get_dtype(), 0) + n
    names = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
    main = max(dtypes, key=dtypes.get)
    files = {p.name: sha256_file(p) for p in sorted(folder.iterdir()) if p.is_file()}
    return {"dtype": names.get(main, main), "n_params": n_params, "files": files}


def fetch_pretrained(pretrained: str, revision: str | None, dest: Path) -> dict[str, Any]:
    """Fetch a hub id (at ``revision``) or copy a local folder into the empty folder ``dest``.

    Returns:
        The source part of the provenance (hub id / folder, revision, commit).

    Raises:
        ConfigError: see :func:`download_hub` and :func:`copy_local`; a ``revision`` with a
            local folder.
    """
    if is_hub_id(pretrained):
        return download_hub(pretrained, revision, dest)
    if revision is not None:
        raise ConfigError(f"base_model.revision = {revision!r} applies to hub ids only; "
                          f"{pretrained!r} is a local folder")
    return copy_local(Path(pretrained).expanduser(), dest)

