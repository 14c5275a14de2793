"""Small helpers shared by tests in several folders.

`require_tool`: a test that needs a system tool (Chromium, libfluidsynth) skips where
it is missing on a developer's machine, but fails under CI, where scripts/setup.sh
should have installed it: a failed apt-get must not pass as a green, skipped run.

`python_in`: a fresh Python process that imports `pipeline` from a copy of the code
(tests/tiny_project.py's `copy_code`), so a test can edit that copy for real.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def under_ci() -> bool:
    """Whether this run is a CI job (CI=true, as GitHub Actions and GitLab CI set it)."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1")


def require_tool(available: bool, what: str) -> None:
    """Skip the calling test (or fixture) when `what` is missing; under CI, fail instead."""
    if available:
        return
    message = f"{what} is not installed (scripts/setup.sh installs it with apt-get)"
    if under_ci():
        pytest.fail(f"{message}; CI=true, so a missing tool is a failed setup", pytrace=False)
    pytest.skip(message)


def find_chromium() -> str | None:
    """The first Chromium-family browser on PATH, or None."""
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


def python_in(code: Path, script: str, *args: str) -> subprocess.Popen[str]:
    """Start `python -c script args` importing `pipeline` from `code` (a copied checkout):
    `code` is both the working directory and PYTHONPATH, ahead of the editable install.
    stdin, stdout and stderr are pipes (text)."""
    env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        cwd=code,
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def last_line(proc: subprocess.Popen[str], timeout: float = 240) -> str:
    """Wait for `proc`; assert it succeeded; its last line of output."""
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    return out.strip().splitlines()[-1]
