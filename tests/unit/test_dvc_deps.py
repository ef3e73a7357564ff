"""The shape of the house, checked: every ``librachem`` module a stage imports (transitively,
lazy imports inside functions included) lies under one of the stage's ``dvc.yaml`` deps, so a
code change always reruns the stages it can affect; ``src/`` never imports ``stages/``; no
module grows past about 400 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from librachem.common.config import read_yaml

ROOT = Path(__file__).resolve().parents[2]
SRC = ROOT / "src"
PKG = SRC / "librachem"
MAX_LINES = 420  # "about 400" (issue 19); the largest module today is under 380


def module_file(name: str) -> Path | None:
    """The file of module ``librachem.x.y`` (a package's ``__init__.py``), or None."""
    base = SRC.joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def imported_modules(path: Path) -> set[str]:
    """``librachem`` modules named by any import in ``path`` (top level or inside functions).
    ``from librachem.x import y`` counts ``librachem.x`` and, when ``y`` is a module,
    ``librachem.x.y``."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "librachem"}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.split(".")[0] == "librachem":
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names
                      if module_file(f"{node.module}.{a.name}") is not None}
    return found


def import_closure(script: Path) -> set[Path]:
    """Files of every ``librachem`` module reachable from ``script`` by imports, with the
    ``__init__.py`` of each package on the way (Python runs them on import)."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        for name in imported_modules(todo.pop()):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):
                path = module_file(".".join(parts[:i]))
                if path is not None and path not in seen:
                    seen.add(path)
                    todo.append(path)
    return seen


STAGES = read_yaml(ROOT / "dvc.yaml")["stages"]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_module_a_stage_imports_is_under_its_deps(stage):
    deps = [ROOT / d for d in STAGES[stage]["deps"]]
    script = ROOT / "stages" / f"{stage}.py"
    assert script in deps
    closure = import_closure(script)
    assert PKG / "common" / "config.py" in closure  # the walk itself works
    # librachem/__init__.py holds only the docstring and __version__ (asserted below).
    missing = sorted(str(p.relative_to(ROOT)) for p in closure - {PKG / "__init__.py"}
                     if not any(p == d or d in p.parents for d in deps))
    assert not missing, f"stage {stage} imports modules outside its dvc.yaml deps: {missing}"


def test_stage_deps_name_folders_not_single_modules():
    for stage, spec in STAGES.items():
        modules = [d for d in spec["deps"] if d.startswith("src/librachem/") and d.endswith(".py")]
        assert not modules, f"{stage}: list the subpackage folder, not {modules}"


def test_the_closure_walk_sees_lazy_imports(tmp_path):
    script = tmp_path / "s.py"
    script.write_text("def f():\n    from librachem.common import hazard\n")
    assert PKG / "common" / "hazard.py" in import_closure(script)


def test_root_init_holds_only_the_version():
    tree = ast.parse((PKG / "__init__.py").read_text(encoding="utf-8"))
    body = [n for n in tree.body if not (isinstance(n, ast.Expr) and isinstance(n.value, ast.Constant))]
    assert [type(n).__name__ for n in body] == ["Assign"]
    assert body[0].targets[0].id == "__version__"


def test_src_never_imports_stages():
    for path in PKG.rglob("*.py"):
        assert not any(m.split(".")[0] == "stages" for m in _all_imports(path)), path


def _all_imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_common_imports_no_stage_package():
    stage_pkgs = {"seeds", "base_model", "generate", "augment", "train", "evaluate", "commands"}
    for path in (PKG / "common").glob("*.py"):
        bad = {m for m in _all_imports(path)
               if m.startswith("librachem.") and m.split(".")[1] in stage_pkgs}
        assert not bad, f"{path.name} imports {bad}"


def test_no_module_over_about_400_lines():
    long = {str(p.relative_to(PKG)): n for p in PKG.rglob("*.py")
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long


def _resolved_deps(folder: Path, params: dict) -> dict[str, set[str]]:
    import yaml
    from dvc.repo import Repo

    (folder / "params.yaml").write_text(yaml.safe_dump(params), encoding="utf-8")
    with Repo(str(folder)) as repo:
        return {s.name: {d.def_path for d in s.deps} for s in repo.index.stages}


def test_generate_and_augment_need_models_base_only_for_a_local_backend(tmp_path):
    """Issue 15: with an API backend, generate/augment start without models/base (no
    base_model run, no hub download); the embedded default's DAG is unchanged."""
    import shutil

    from dvc.repo import Repo

    from librachem.augment.stage import AugmentParams
    from librachem.generate.stage import GenerateParams

    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    Repo.init(str(tmp_path), no_scm=True)
    params = read_yaml(ROOT / "params.yaml")
    deps = _resolved_deps(tmp_path, params)
    for stage in ("generate", "augment", "sft", "dpo", "evaluate"):
        assert "models/base" in deps[stage], stage
    for section, llm in (("generate", "generator"), ("augment", "rephraser")):
        params[section][llm]["backend"] = "openai"
        params[section][llm]["model"] = "gpt-4o-2024-08-06"
        params[section]["model_dep"] = "src/librachem/llm"
    GenerateParams.model_validate(params["generate"])
    AugmentParams.model_validate(params["augment"])
    deps = _resolved_deps(tmp_path, params)
    assert "models/base" not in deps["generate"] and "models/base" not in deps["augment"]
    assert "models/base" in deps["evaluate"] and "src/librachem/llm" in deps["generate"]


def test_a_local_backend_must_depend_on_its_model():
    from librachem.common.errors import ConfigError
    from librachem.generate.stage import GenerateParams

    section = read_yaml(ROOT / "params.yaml")["generate"]
    with pytest.raises((ValueError, ConfigError), match="generate.model_dep"):
        GenerateParams.model_validate({**section, "model_dep": "src/librachem/llm"})
