"""The layers point one way: the library (medsynth_app) imports neither MONAI Label, nor the Slicer module, nor the
MONAI Label app, nor the deployment package, and computes no path into the repository (docs/deployment.md)."""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ROOT / "medsynth_app"
# top-level names the library must not import: MONAI Label, 3D Slicer and its Qt, the Slicer module's client lib,
# the MONAI Label app's package (``lib``, importable only inside the app), the deployment layer
FORBIDDEN = {"monailabel", "slicer", "qt", "ctk", "vtk", "MedSynth", "MedSynthLib", "lib", "apps", "medsynth_server",
             "fastapi"}
# at run time fastapi may come in with a dependency's own imports (mlflow); only a direct import of it is a breach
LOADED_FORBIDDEN = FORBIDDEN - {"fastapi"}
REPOSITORY_FOLDERS = ("apps", "slicer_extension", "medsynth_server")


def _modules() -> list[Path]:
    return sorted(LIBRARY.rglob("*.py"))


def _imports(tree: ast.AST) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", "")) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            found.append((node.lineno, str(node.args[0].value)))
    return found


def _parent_chain(node: ast.AST) -> int:
    """k for ``x.parent.parent...`` (k times), 0 otherwise."""
    k = 0
    while isinstance(node, ast.Attribute) and node.attr == "parent":
        k, node = k + 1, node.value
    return k


def _repository_paths(tree: ast.AST, depth: int) -> list[tuple[int, str]]:
    """Paths climbing above the library from a module ``depth`` folders below it (``parents[N]`` or ``.parent``
    chains reaching past the package's own folder), and string constants naming a folder of the repository outside
    the library."""
    found, chains = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Attribute) and node.value.attr == "parents":
            level = node.slice.value if isinstance(node.slice, ast.Constant) else depth + 1
            if level > depth:
                found.append((node.lineno, ast.unparse(node)))
        elif _parent_chain(node) and id(node) not in chains:
            chains |= {id(n) for n in ast.walk(node)}
            if _parent_chain(node) - 1 > depth:
                found.append((node.lineno, ast.unparse(node)))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and any(
                node.value == f or node.value.startswith((f"{f}/", f"{f}\\")) for f in REPOSITORY_FOLDERS):
            found.append((node.lineno, node.value))
    return found


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_library_module_imports_nothing_above_it(path):
    tree = ast.parse(path.read_text(), str(path))
    bad = [f"line {line}: {name}" for line, name in _imports(tree) if name.split(".")[0] in FORBIDDEN]
    assert not bad, f"{path.relative_to(ROOT)} imports a layer above the library: {'; '.join(bad)}"
    depth = len(path.relative_to(LIBRARY).parts) - 1
    climbs = [f"line {line}: {text}" for line, text in _repository_paths(tree, depth)]
    assert not climbs, f"{path.relative_to(ROOT)} computes a path outside the library: {'; '.join(climbs)}"


def test_the_checks_catch_what_they_look_for():
    tree = ast.parse("import monailabel.app\nfrom MedSynthLib.logic import x\nimportlib.import_module('lib.infers')\n"
                     "ROOT = Path(__file__).resolve().parents[1]\nAPP = 'apps/medsynth'\nUP = HERE.parent.parent\n"
                     "DATA = Path(__file__).parent / 'data'\n")
    assert [name for _, name in _imports(tree)] == ["monailabel.app", "MedSynthLib.logic", "lib.infers"]
    assert [text for _, text in _repository_paths(tree, 0)] == ["Path(__file__).resolve().parents[1]",
                                                                "apps/medsynth", "HERE.parent.parent"]
    assert [text for _, text in _repository_paths(tree, 1)] == ["apps/medsynth"]


def test_importing_every_library_module_loads_no_upper_layer():
    modules = sorted(".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__") for p in _modules())
    code = ("import importlib, sys\n"
            f"for name in {modules!r}:\n    importlib.import_module(name)\n"
            f"loaded = {{m.split('.')[0] for m in sys.modules}} & {LOADED_FORBIDDEN!r}\n"
            "assert not loaded, sorted(loaded)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
