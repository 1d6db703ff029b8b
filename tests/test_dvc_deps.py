"""dvc.yaml lists, for every stage, exactly the project modules its command imports (directly or
through other project modules), so that a code change re-runs the stages it affects and no other.
Read statically from the sources (ast), with no import executed."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
STAGES = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def module_file(name: str) -> Path | None:
    """The file of project module ``name`` (pipeline.x.y), or None for another package."""
    if name != "pipeline" and not name.startswith("pipeline."):
        return None
    path = ROOT.joinpath(*name.split("."))
    if path.is_dir():
        return path / "__init__.py"
    return path.with_suffix(".py")


def imported_files(path: Path) -> set[Path]:
    """Project files ``path`` imports at module level or inside functions."""
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            # `from pipeline import distributed`: a submodule, if there is one of that name
            names.update(f"{node.module}.{alias.name}" for alias in node.names)
    files = set()
    for name in names:
        file = module_file(name)
        if file is not None and file.exists():
            files.add(file)
        parts = name.split(".")
        for i in range(2, len(parts)):  # importing pipeline.a.b runs pipeline/a/__init__.py
            init = ROOT.joinpath(*parts[:i], "__init__.py")
            if init.exists():
                files.add(init)
    return files


def closure(path: Path) -> set[Path]:
    seen, todo = set(), [path]
    while todo:
        file = todo.pop()
        if file in seen:
            continue
        seen.add(file)
        todo.extend(imported_files(file))
    return seen


def listed(deps: list[str]) -> set[str]:
    """The project code paths among a stage's deps (files, or folders such as pipeline/datasets)."""
    return {d for d in deps if d.startswith("pipeline/")}


def covering(file: Path) -> str:
    """The dep that covers ``file``: its folder for the packages listed as folders, else itself."""
    relative = file.relative_to(ROOT).as_posix()
    if relative.startswith("pipeline/datasets/"):
        return "pipeline/datasets"
    return relative


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_stage_lists_exactly_the_modules_it_imports(stage):
    spec = STAGES[stage]
    # `python -m pipeline.stages.x`, or `python -m pipeline.launch pipeline.stages.x`
    modules = re.findall(r"(?<![\w/.])(pipeline\.(?:launch|stages\.\w+))\b", spec["cmd"])
    assert modules and modules[-1].startswith("pipeline.stages."), spec["cmd"]
    used = {covering(f) for module in modules for f in closure(module_file(module))
            if f.name != "__init__.py" or f.parent.name == "datasets"}
    assert listed(spec["deps"]) == used, (
        f"{stage}: missing {sorted(used - listed(spec['deps']))}, "
        f"not imported {sorted(listed(spec['deps']) - used)}")
