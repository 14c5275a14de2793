"""Shared fixtures: the real MIDI files committed in tests/fixtures/midi (see SOURCES.txt),
and the tiny project's `dvc repro` (tests/tiny_project.py), paid once per session."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixture_stores import FIXTURES
from tiny_project import Run, tiny_repro

MIDI_FILES = sorted(p for p in FIXTURES.rglob("*") if p.suffix.lower() in (".mid", ".midi"))


@pytest.fixture(scope="session")
def fixtures_dir() -> Path:
    if not FIXTURES.is_dir():
        pytest.fail(f"{FIXTURES} is missing: the repository is incomplete")
    return FIXTURES


@pytest.fixture(scope="session")
def midi_files(fixtures_dir: Path) -> list[Path]:
    assert len(MIDI_FILES) == 60, f"expected the 60 fixture files, found {len(MIDI_FILES)}"
    return MIDI_FILES


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    """The tiny project after a traced `dvc repro` (~2 min on 2 cores): tests/test_dag.py
    checks its deps, tests/test_remote.py pushes and pulls it. Tests copy it before
    changing anything but a file they restore."""
    return tiny_repro(tmp_path_factory.mktemp("dag"))
