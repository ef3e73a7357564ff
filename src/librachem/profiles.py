"""Params profiles: versioned overlays that switch scale by configuration, never by code.

A profile (``src/librachem/resources/profiles/<name>.yaml``) holds only the keys it changes.
:func:`apply_profile` merges it over a params mapping (nested mappings merge, everything else
is replaced) and validates the result with every section model, so a profile that does not
fit the code fails before any work. ``librachem profile NAME`` writes the merged params.yaml.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from librachem.config import read_yaml, validate_all
from librachem.errors import ConfigError


def available_profiles() -> list[str]:
    """Names of the packaged profiles."""
    folder = resources.files("librachem") / "resources" / "profiles"
    return sorted(p.name[:-5] for p in folder.iterdir() if p.name.endswith(".yaml"))


def load_profile(name: str) -> dict[str, Any]:
    """The overlay mapping of profile ``name``.

    Raises:
        ConfigError: no such profile.
    """
    if name not in available_profiles():
        raise ConfigError(f"unknown profile {name!r}; available: {available_profiles()}")
    path = resources.files("librachem") / "resources" / "profiles" / f"{name}.yaml"
    with resources.as_file(path) as file:
        return read_yaml(file)


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """Deep-merge ``overlay`` into a copy of ``base`` (mappings merge, other values replace)."""
    out = dict(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def apply_profile(params: dict[str, Any], name: str) -> dict[str, Any]:
    """Merge profile ``name`` over ``params`` and validate every section.

    Raises:
        ConfigError: unknown profile, or the merged params do not validate.
    """
    merged = merge(params, load_profile(name))
    validate_all(merged)
    return merged


def write_profile(params_path: Path, name: str, out: Path) -> dict[str, Any]:
    """Read ``params_path``, apply profile ``name``, write the result to ``out``."""
    merged = apply_profile(read_yaml(params_path), name)
    header = (f"# params.yaml with the '{name}' profile applied "
              f"(src/librachem/resources/profiles/{name}.yaml).\n")
    from librachem.atomic import write_bytes

    # written atomically (a temp file renamed over ``out``); the comments of the original
    # params file are not kept (PyYAML drops them): keep your copy under git.
    write_bytes(out, (header + yaml.safe_dump(merged, sort_keys=False)).encode("utf-8"))
    return merged
