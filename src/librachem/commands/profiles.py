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

from librachem.common.config import parse_yaml, read_yaml, validate_all
from librachem.common.errors import ConfigError


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
    """Read ``params_path``, apply profile ``name``, write the result to ``out``.

    The file is edited as a YAML 1.2 round trip (``ruamel.yaml``, the library DVC itself uses
    to rewrite params.yaml for ``dvc exp run -S``): comments, key order and quoting of the
    untouched keys are kept; keys the profile changes take its values (a comment next to a
    changed value stays and may no longer fit it). Written atomically (a temp file renamed
    over ``out``), and re-read to check it loads to exactly the validated params.

    Returns:
        The merged, validated params mapping.

    Raises:
        ConfigError: unknown profile, merged params that do not validate, or (a bug) a written
            file that does not read back as the merged params.
    """
    import io

    from ruamel.yaml import YAML

    from librachem.common.atomic import write_bytes

    merged = apply_profile(read_yaml(params_path), name)
    rt = YAML()  # round-trip mode, YAML 1.2
    rt.preserve_quotes = True
    rt.width = 100
    rt.representer.add_representer(  # "null", as written in params.yaml (not an empty value)
        type(None), lambda rep, _: rep.represent_scalar("tag:yaml.org,2002:null", "null"))
    doc = rt.load(params_path.read_text(encoding="utf-8")) or {}
    _merge_in_place(doc, load_profile(name))
    buf = io.StringIO()
    rt.dump(doc, buf)
    text = (f"# params.yaml with the '{name}' profile applied "
            f"(src/librachem/resources/profiles/{name}.yaml).\n") + buf.getvalue()
    if parse_yaml(text, str(out)) != merged:
        raise ConfigError(f"profile {name!r}: the rewritten params file does not read back as "
                          "the merged params (please report this)")
    write_bytes(out, text.encode("utf-8"))
    return merged


def _merge_in_place(doc: Any, overlay: dict[str, Any]) -> None:
    """:func:`merge` applied to a ruamel round-trip mapping, in place (keeps its comments)."""
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(doc.get(key), dict):
            _merge_in_place(doc[key], value)
        else:
            doc[key] = value
