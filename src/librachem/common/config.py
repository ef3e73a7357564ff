"""The params contract: ``params.yaml`` sections load into frozen, typed pydantic models.

Every section model derives from :class:`Section`, which rejects unknown keys and is frozen.
:func:`load_section` reads one section and turns any validation problem into a
:class:`~librachem.common.errors.ConfigError` whose message names the key, the value and what was
expected, before any work starts.

YAML 1.1 (PyYAML) reads ``5e-6`` as a string because its float regex needs a dot; our
loader adds the YAML 1.2 float pattern so such values load as floats.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from librachem.common.errors import ConfigError

DEFAULT_PARAMS = Path("params.yaml")


class _Loader(yaml.SafeLoader):
    """SafeLoader that also reads YAML 1.2 floats such as ``5e-6`` and ``1E3`` and refuses
    duplicate keys (PyYAML keeps the last one silently; YAML 1.2 requires unique keys)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r}", key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


# YAML 1.2 integers only: PyYAML (YAML 1.1) reads ``1:2`` as the base-60 integer 62, and
# `dvc exp run -S` rewrites params.yaml without quotes (ruamel, YAML 1.2), so an unquoted
# ratio must load as the string DVC itself sees.
_Loader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers
            if tag not in ("tag:yaml.org,2002:int", "tag:yaml.org,2002:bool")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
# YAML 1.2 booleans: only true/false (YAML 1.1 also reads yes/no/on/off, which DVC keeps as text)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:int",
    re.compile(r"^(?:[-+]?0b[0-1_]+|[-+]?0o[0-7_]+|[-+]?[0-9][0-9_]*|[-+]?0x[0-9a-fA-F_]+)$"),
    list("-+0123456789"),
)


def _construct_int(loader: _Loader, node: Any) -> int:
    """YAML 1.2 integers as ruamel.yaml (DVC's parser) reads them: ``0b`` / ``0o`` / ``0x``
    prefixes, otherwise decimal even with leading zeros (``010`` is 10, not YAML 1.1's octal
    8), underscores ignored."""
    text = loader.construct_scalar(node).replace("_", "")
    sign = -1 if text.startswith("-") else 1
    digits = text.lstrip("+-")
    base = {"0b": 2, "0o": 8, "0x": 16}.get(digits[:2].lower(), 10)
    return sign * int(digits[2:] if base != 10 else digits, base)


_Loader.add_constructor("tag:yaml.org,2002:int", _construct_int)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


class Section(BaseModel):
    """Base of every params section: unknown keys are errors; instances are immutable; a float
    param must be finite (``.inf`` / ``.nan`` are errors, e.g. ``lora.alpha: .inf`` trained an
    all-NaN adapter)."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True,
                              allow_inf_nan=False)


S = TypeVar("S", bound=BaseModel)


def read_yaml(path: Path | str) -> dict[str, Any]:
    """Read a YAML mapping with the float-aware loader.

    Raises:
        ConfigError: the file is missing, is not UTF-8, is not valid YAML (duplicate keys
            included), or is not a mapping.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read params file {path}: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path} is not UTF-8 text ({exc}); save it as UTF-8") from exc
    return parse_yaml(text, str(path))


def parse_yaml(text: str, source: str = "<text>") -> dict[str, Any]:
    """Parse YAML text into a mapping as :func:`read_yaml` does (``source`` names it in errors).

    Raises:
        ConfigError: not valid YAML (duplicate keys included), or not a mapping.
    """
    try:
        data = yaml.load(text, Loader=_Loader)  # noqa: S506 - SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source} is not valid YAML: {exc}") from exc
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(data).__name__}")
    return data


def _describe(error: dict[str, Any], section: str, raw: Any) -> str:
    loc = ".".join(str(p) for p in (section, *error["loc"]))
    value: Any = raw
    for part in error["loc"]:
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and isinstance(part, int) and part < len(value):
            value = value[part]
        else:
            value = error.get("input")
            break
    if error["type"] == "extra_forbidden":
        return f"{loc}: unknown key (value {value!r}); check the spelling against params.yaml"
    if error["type"] == "missing":
        return f"{loc}: required key is missing"
    return f"{loc} = {value!r}: {error['msg']}"


def validate_section(model: type[S], section: str, raw: Any) -> S:
    """Validate ``raw`` (the mapping under ``section``) into ``model``.

    Raises:
        ConfigError: naming every offending key, its value and the expectation.
    """
    if raw is None:
        raise ConfigError(f"{section}: the section is empty (null); give its keys, or `{section}: "
                          "{}` to take every default")
    if not isinstance(raw, dict):
        raise ConfigError(f"{section}: expected a mapping, got {raw!r}")
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(e, section, raw) for e in exc.errors()]
        raise ConfigError("invalid params:\n  " + "\n  ".join(lines)) from None


#: Sections read by :func:`load_section` in this process: (resolved path, section) -> the
#: parsed mapping as read. :func:`check_params_unchanged` compares them with the file again.
_SECTIONS_READ: dict[tuple[str, str], Any] = {}


def load_section(model: type[S], section: str, path: Path | str = DEFAULT_PARAMS) -> S:
    """Load and validate one section of a params file, and record what was read (for
    :func:`check_params_unchanged` at the end of the stage).

    Raises:
        ConfigError: file unreadable, section missing, or invalid values.
    """
    data = read_yaml(path)
    if section not in data:
        raise ConfigError(f"{path}: section {section!r} is missing")
    _SECTIONS_READ[(str(Path(path).resolve()), section)] = copy.deepcopy(data[section])
    return validate_section(model, section, data[section])


def forget_sections_read() -> None:
    """Start a new run: forget the sections :func:`load_section` recorded."""
    _SECTIONS_READ.clear()


def _changed_keys(old: Any, new: Any, prefix: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            out += _changed_keys(old.get(key), new.get(key), f"{prefix}.{key}")
        return out
    return [] if old == new else [prefix]


def check_params_unchanged() -> None:
    """Fail when a params section read by :func:`load_section` in this run differs now.

    ``dvc repro`` hashes ``params.yaml`` when the stage ends, so an edit made while a stage
    ran would be recorded in ``dvc.lock`` against outputs made with the old values, and
    ``dvc status`` would then call them up to date (issue 18). Values are compared as parsed,
    so a rewrite that keeps them (comments, quoting, key order) passes.

    Raises:
        ConfigError: "params changed during the run, rerun", naming the file and the keys.
    """
    changed: list[str] = []
    for (path, section), before in _SECTIONS_READ.items():
        try:
            now = read_yaml(path).get(section)
        except ConfigError as exc:
            changed.append(f"{path}: unreadable now ({exc})")
            continue
        keys = _changed_keys(before, now, section)
        if keys:
            changed.append(f"{path}: {', '.join(keys[:10])}"
                           + (f" and {len(keys) - 10} more" if len(keys) > 10 else ""))
    if changed:
        raise ConfigError("params changed during the run, rerun: the stage used the values it "
                          "read at start, but DVC would record the new ones in dvc.lock ("
                          + "; ".join(changed) + "). Run the stage again (`dvc repro`).")


# Every params.yaml section and the model that validates it (stage name = section name).
SECTIONS: dict[str, str] = {
    "seeds": "librachem.seeds.stage:SeedsParams",
    "base_model": "librachem.base_model.stage:BaseModelParams",
    "generate": "librachem.generate.stage:GenerateParams",
    "augment": "librachem.augment.stage:AugmentParams",
    "sft": "librachem.train.sft:SftParams",
    "dpo": "librachem.train.dpo:DpoParams",
    "evaluate": "librachem.evaluate.params:EvaluateParams",
    "report": "librachem.report.params:ReportParams",
}


def section_model(section: str) -> type[BaseModel]:
    """The pydantic model of ``section`` (imported lazily: some pull in heavy modules)."""
    import importlib

    if section not in SECTIONS:
        raise ConfigError(f"unknown params section {section!r}; expected one of {sorted(SECTIONS)}")
    module, name = SECTIONS[section].split(":")
    return getattr(importlib.import_module(module), name)


def validate_all(data: dict[str, Any]) -> dict[str, BaseModel]:
    """Validate every section of a whole params mapping.

    Raises:
        ConfigError: an unknown or missing section, or any invalid value (all listed).
    """
    unknown = sorted(set(data) - set(SECTIONS))
    missing = sorted(set(SECTIONS) - set(data))
    problems = [f"{s}: unknown section" for s in unknown] + [f"{s}: section is missing"
                                                             for s in missing]
    out: dict[str, BaseModel] = {}
    for section in SECTIONS:
        if section in data:
            try:
                out[section] = validate_section(section_model(section), section, data[section])
            except ConfigError as exc:
                problems.append(str(exc))
    if problems:
        raise ConfigError("\n".join(problems))
    return out
