"""Path constants shared by the stages; dvc.yaml names the same paths.

Project paths are relative: DVC runs every stage in the project's root, and a person
runs `etude` there too, so `params.yaml`, `data/`, `models/` and `reports/` are those
of the project in the working directory, not of wherever the package is installed.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent
ROOT = PACKAGE.parent  # the source checkout (benchmarks and tests write under it)
PARAMS_FILE = Path("params.yaml")
DEFAULT_PARAMS_FILE = PACKAGE / "params.yaml"  # the repository's params.yaml, shipped
DATA = Path("data")
RAW = DATA / "raw"
INTERIM = DATA / "interim"
PROCESSED = DATA / "processed"
MODELS = Path("models")
REPORTS = Path("reports")

SPLITS = ("train", "validation", "test")
