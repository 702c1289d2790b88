"""A test dependency that is missing fails the run, naming it and how to install it: it is never skipped."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parent

HIDE = """
import sys
class Hide:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] in {hidden!r}:
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, Hide())
import pytest
sys.exit(pytest.main(['-q', '-p', 'no:cacheprovider', {test!r}]))
"""


def _run_without(*hidden: str) -> subprocess.CompletedProcess:
    code = HIDE.format(hidden=set(hidden), test=str(TESTS / "test_contrasts.py"))
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          cwd=TESTS.parent, env={**os.environ, "PYTHONPATH": str(TESTS.parent)})


def test_a_missing_dependency_fails_the_run_naming_it():
    result = _run_without("monailabel", "PySide6")
    assert result.returncode == 4, result.stdout + result.stderr  # pytest's usage error, not 0 with skips
    output = result.stdout + result.stderr
    assert "monailabel: install monailabel" in output and "PySide6.QtUiTools: install PySide6-Essentials" in output
    assert "slicer:" not in output and "passed" not in output


def test_with_every_dependency_the_run_goes_ahead():
    result = _run_without()
    assert result.returncode == 0 and "passed" in result.stdout, result.stdout + result.stderr
