"""Layers point one way: the packages never import the scripts (train, test, sweep), utils/ (the ground floor)
imports none of the packages above it, and logger/ nothing of the trainer or the models."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

PACKAGES = ("base", "model", "data_loader", "trainer", "logger", "utils")
SCRIPTS = {"train", "test", "sweep"}
#: package -> the top-level modules its files must not import
FORBIDDEN = {package: SCRIPTS for package in PACKAGES}
FORBIDDEN["utils"] = SCRIPTS | {"base", "trainer", "model", "data_loader", "logger"}
FORBIDDEN["logger"] = SCRIPTS | {"trainer", "model"}


def imported_modules(source: str) -> set[str]:
    """The top-level names of every module a file imports (anywhere in it, relative imports left out)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def layer_violations(root: Path) -> list[str]:
    """`path imports module` for every forbidden import under the packages of `root`."""
    found = []
    for package, forbidden in FORBIDDEN.items():
        for path in sorted((root / package).rglob("*.py")):
            for module in sorted(imported_modules(path.read_text()) & forbidden):
                found.append(f"{path.relative_to(root)} imports {module}")
    return found


def test_no_package_imports_a_script_or_a_layer_above_it():
    assert layer_violations(ROOT) == []


@pytest.mark.parametrize("line, package", [("import test as test_script", "trainer/sweep"),
                                           ("from model import ARCHITECTURES", "utils"),
                                           ("from trainer.trainer import Trainer", "logger"),
                                           ("import trainer.jobs", "utils")])
def test_a_forbidden_import_is_found(tmp_path, line, package):
    for name in PACKAGES:
        (tmp_path / name).mkdir()
    (tmp_path / package).mkdir(parents=True, exist_ok=True)
    (tmp_path / package / "bad.py").write_text(f"def f():\n    {line}\n")
    assert layer_violations(tmp_path) == [f"{package}/bad.py imports {line.split()[1].split('.')[0]}"]
