"""Resolving a ``model`` value to something loadable, and its revision (cache-key part).

* The alias ``smollm2-135m-instruct`` resolves to the folder the stage passes in
  (``models/base/``, written by the ``base_model`` stage).
* An existing local folder is used as is.
* Anything else is treated as a Hugging Face hub id (loads offline only when already in the
  local HF cache).

The revision of a folder is read from its provenance file ``librachem_model.json`` (written
by the ``base_model`` stage: the GGUF sha256); a folder without one is identified by the
SHA-256 of its config and weight files. A hub id uses ``LLMParams.revision`` (or ``""``).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from librachem.common.errors import ConfigError
from librachem.llm.config import DEFAULT_MODEL_ALIAS, LLMParams

#: Provenance file inside a converted model folder: {"revision": ..., "source": ..., ...}.
PROVENANCE_FILE = "librachem_model.json"


@dataclass(frozen=True)
class ResolvedModel:
    """``location``: folder path or hub id to pass to ``from_pretrained``; ``revision``."""

    location: str
    revision: str


def folder_revision(folder: Path) -> str:
    """Revision of a local model folder (provenance file, else a hash of its files).

    Raises:
        ConfigError: the folder is missing, holds no model files, or its provenance file is
            unreadable.
    """
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such model folder")
    prov = folder / PROVENANCE_FILE
    if prov.is_file():
        try:
            rev = json.loads(prov.read_text(encoding="utf-8"))["revision"]
        except (ValueError, KeyError, TypeError) as exc:  # bad JSON, no key, not an object
            raise ConfigError(f"{prov} is unreadable ({type(exc).__name__}: {exc}); rerun "
                              "`dvc repro base_model`") from exc
        return str(rev)
    digest = hashlib.sha256()
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and (p.suffix in {".safetensors", ".bin"} or p.name == "config.json"))
    if not files:
        raise ConfigError(f"{folder} holds no config.json or weights; not a model folder")
    for p in files:
        digest.update(p.name.encode())
        with open(p, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def resolve_model(model: str, *, revision: str | None, local_model_dir: Path | None) -> ResolvedModel:
    """Map a params ``model`` value to a loadable location and its revision.

    Raises:
        ConfigError: the default alias is used but no existing ``local_model_dir`` was given.
    """
    if model == DEFAULT_MODEL_ALIAS:
        if local_model_dir is None or not Path(local_model_dir).is_dir():
            raise ConfigError(
                f"model alias {DEFAULT_MODEL_ALIAS!r} needs the converted model folder "
                f"(got {local_model_dir!s}); run `.venv/bin/dvc repro base_model` and pass "
                "its output (models/base) to the stage")
        folder = Path(local_model_dir)
        return ResolvedModel(str(folder), revision or folder_revision(folder))
    path = Path(model)
    if path.is_dir():
        return ResolvedModel(str(path), revision or folder_revision(path))
    return ResolvedModel(model, revision or "")


#: The folder the ``base_model`` stage writes (the alias resolves to it in the pipeline).
BASE_MODEL_DIR = "models/base"


def check_model_dep(params: LLMParams, model_dep: str, section: str) -> None:
    """Check a stage's ``model_dep`` (the local model folder its ``dvc.yaml`` entry depends on,
    ``${<section>.model_dep}``) against its LLM block: the local backend with the alias needs
    ``models/base`` (the default); a local folder model needs that folder. With a backend that
    needs no local model (``openai``, ``fake``) set it to a path the stage depends on anyway
    (``src/librachem/llm``), so ``dvc repro`` starts the stage without running (or
    downloading) ``base_model``: DVC templating cannot drop a dep by a condition, and a
    repeated dep is allowed.

    Raises:
        ValueError: (inside a pydantic validator) the dependency would not cover the model.
    """
    if params.backend != "local":
        return
    needed = BASE_MODEL_DIR if params.model == DEFAULT_MODEL_ALIAS else params.model
    if Path(needed).is_dir() or params.model == DEFAULT_MODEL_ALIAS:
        if Path(model_dep) != Path(needed):
            raise ValueError(f"{section}.model_dep = {model_dep!r}, but the local backend reads "
                             f"{needed!r}: set {section}.model_dep: {needed} (dvc.yaml makes "
                             "the stage depend on it)")
