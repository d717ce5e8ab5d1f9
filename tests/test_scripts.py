"""scripts/setup runs pip only when the venv is not yet built for this pyproject.toml, this script and this
Python: run against a stand-in `.venv/bin/python` that logs what it is asked to do (pip is not reachable from a
test, and what is checked here is the script's decision, not pip)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FAKE = """#!/usr/bin/env bash
echo "$*" >> "$(dirname "$0")/../calls.log"
if [ "$1" = "-m" ]; then [ -e "$(dirname "$0")/../pip-fails" ] && exit 1; exit 0; fi
exec {real} "$@"
"""


@pytest.fixture
def checkout(tmp_path):
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "setup", tmp_path / "scripts" / "setup")
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    py = tmp_path / ".venv" / "bin" / "python"
    py.parent.mkdir(parents=True)
    py.write_text(FAKE.format(real=sys.executable))
    py.chmod(0o755)
    return tmp_path


def setup(checkout) -> tuple[int, list[str]]:
    log = checkout / ".venv" / "calls.log"
    log.unlink(missing_ok=True)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    rc = subprocess.run(["bash", str(checkout / "scripts" / "setup")], env=env, capture_output=True).returncode
    calls = log.read_text().splitlines() if log.exists() else []
    return rc, [c for c in calls if c.startswith("-m pip install")]


def test_setup_skips_pip_once_built(checkout):
    rc, pip = setup(checkout)
    assert rc == 0 and any("torch==2.13.0" in c for c in pip) and any("-e .[test]" in c for c in pip)
    assert setup(checkout) == (0, [])  # built: no pip at all
    with open(checkout / "pyproject.toml", "a") as fh:  # a dependency changed: install again
        fh.write("\n# changed\n")
    rc, pip = setup(checkout)
    assert rc == 0 and any("-e .[test]" in c for c in pip)
    assert setup(checkout) == (0, [])


def test_setup_failure_leaves_no_stamp(checkout):
    (checkout / ".venv" / "pip-fails").touch()
    rc, pip = setup(checkout)
    assert rc == 1 and pip
    assert not (checkout / ".venv" / "setup.stamp").exists()
    (checkout / ".venv" / "pip-fails").unlink()
    rc, pip = setup(checkout)  # tried again, and now it holds
    assert rc == 0 and pip
    assert setup(checkout) == (0, [])
