"""The architecture, checked: layers import downward only (import-linter's contract in
pyproject.toml), no private name crosses a module boundary, no source file passes 600 lines."""
from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src" / "catapult"


def _lint_imports() -> str | None:
    exe = Path(sys.executable).with_name("lint-imports")
    return str(exe) if exe.exists() else shutil.which("lint-imports")


def test_layers_import_downward_only():
    exe = _lint_imports()
    if exe is None:
        pytest.skip("import-linter is not installed (pip install -e '.[test]')")
    proc = subprocess.run([exe, "--config", str(ROOT / "pyproject.toml")], cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]


def private_imports(source: str) -> list[str]:
    """``from catapult.x import _name`` and ``<imported catapult module>._name`` in ``source``."""
    tree = ast.parse(source)
    modules: set[str] = set()  # local names bound to catapult modules
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("catapult"):
            for alias in node.names:
                if alias.name.startswith("_") and not alias.name.startswith("__"):
                    found.append(f"line {node.lineno}: from {node.module} import {alias.name}")
                modules.add(alias.asname or alias.name)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("catapult"):
                    modules.add(alias.asname or alias.name.split(".")[0])
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            found.append(f"line {node.lineno}: {node.value.id}.{node.attr}")
    return found


def test_the_private_name_check_finds_both_forms():
    src = "from catapult.engine import _x\nfrom catapult import engine as e\ne._y()\nimport catapult\ncatapult.__version__\n"
    assert private_imports(src) == ["line 1: from catapult.engine import _x", "line 3: e._y"]


def test_no_private_name_is_imported_across_modules():
    paths = sorted(SRC.rglob("*.py"))
    assert len(paths) > 100   # a scan of no files finds nothing (the package holds 164 modules)
    problems = [f"{path.relative_to(ROOT)} {hit}" for path in paths for hit in private_imports(path.read_text())]
    assert problems == []


def test_no_source_file_passes_600_lines():
    lines = {str(p.relative_to(ROOT)): len(p.read_text().splitlines()) for p in SRC.rglob("*.py")}
    assert len(lines) > 100 and max(lines.values()) > 300   # the scan read the package's modules
    long = {name: n for name, n in lines.items() if n > 600}
    assert long == {}
