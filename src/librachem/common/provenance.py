"""Provenance shared by every stage that records what made an artefact: package versions."""

from __future__ import annotations

import platform
from importlib import metadata

#: Recorded by the training stages (with the Python version).
PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets")
#: Recorded by the data stages (generate, augment) in their shard manifests.
DATA_PACKAGES = ("librachem", "pyarrow", "transformers", "torch")


def package_versions(dists: tuple[str, ...] = DATA_PACKAGES) -> dict[str, str]:
    """Installed version of each distribution (``"absent"`` when not installed)."""
    out = {}
    for dist in dists:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "absent"
    return out


def versions() -> dict[str, str]:
    """The Python version and :data:`PACKAGES` versions (the training stages' record)."""
    return {"python": platform.python_version(), **package_versions(PACKAGES)}
