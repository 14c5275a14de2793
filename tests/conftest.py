"""Shared fixtures: the real MIDI files committed in tests/fixtures/midi (see SOURCES.txt)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixture_stores import FIXTURES

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
