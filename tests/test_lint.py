"""ruff (lint and format check) over the project's Python: ``ewc_lib``, ``tests``, ``tools`` and
``benchmarks``, with the configuration in ``pyproject.toml`` ([tool.ruff]). A failure shows
ruff's own report; ``.venv/bin/ruff check --fix`` and ``.venv/bin/ruff format`` fix most of it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PATHS = ["ewc_lib", "tests", "tools", "benchmarks"]


def _ruff() -> str:
    found = Path(sys.executable).with_name("ruff")
    if found.exists():
        return str(found)
    which = shutil.which("ruff")
    if which is None:
        pytest.fail("ruff is not installed (it is pinned in requirements.txt: run `make install`)")
    return which


@pytest.mark.parametrize(
    "command",
    [["check", "--no-cache"], ["format", "--check", "--no-cache"]],
    ids=["lint", "format"],
)
def test_ruff(command):
    result = subprocess.run([_ruff(), *command, *PATHS], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, f"ruff {' '.join(command)} failed:\n{result.stdout}\n{result.stderr}"
