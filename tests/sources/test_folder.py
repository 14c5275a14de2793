"""The `folder` source: any folder of MIDI files, fetched then ingested like the others."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from fixture_stores import shipped
from rawfolder import make_renditions, read_manifest

import pipeline.sources
from pipeline.core.params import ParamsError, default_params, from_mapping
from pipeline.core.stores import read_store
from pipeline.ingest import IngestParams, ingest_dir
from pipeline.sources import MANIFEST_COLUMNS
from pipeline.sources.folder import Params, fetch

INGEST = dataclasses.replace(default_params("ingest", IngestParams), workers=2)


def params(path: Path | str, **changes: object) -> Params:
    return from_mapping({**shipped("folder"), "path": str(path), **changes}, Params, "folder")


def test_fetch_then_ingest_keeps_each_pair_of_renditions_in_one_split(
    tmp_path: Path, fixtures_dir: Path
) -> None:
    pairs = make_renditions(tmp_path / "mine", fixtures_dir)
    (tmp_path / "mine" / "notes.txt").write_text("not MIDI: not copied")
    raw = tmp_path / "raw" / "folder"
    fetch(params(tmp_path / "mine"), raw)
    columns, rows = read_manifest(raw)
    assert columns == list(MANIFEST_COLUMNS)
    assert sorted(r["path"] for r in rows) == sorted([*pairs, *pairs.values()])
    for row in rows:  # relative paths and bytes kept; style = the top sub-folder
        assert (raw / row["path"]).read_bytes() == (tmp_path / "mine" / row["path"]).read_bytes()
        assert row["split"] == row["group"] == "" and row["style"] == row["path"].split("/")[0]
    assert not (raw / "notes.txt").exists()
    summary = ingest_dir(raw, tmp_path / "interim", source="folder", params=INGEST, progress=False)
    assert summary.pieces == 48 and summary.rejects == 0
    pieces = read_store(tmp_path / "interim" / "pieces.parquet", "pieces").set_index("path")
    for b, a in pairs.items():
        assert pieces.loc[a, "split"] == pieces.loc[b, "split"], b
        assert pieces.loc[a, "group"] == pieces.loc[b, "group"], b
    assert set(pieces["style"]) == {"a", "b"}
    assert set(pieces["split"]) == {"train", "validation", "test"}


def test_fixed_style_and_reproducible_subset(tmp_path: Path, fixtures_dir: Path) -> None:
    make_renditions(tmp_path / "mine", fixtures_dir)
    fetch(params(tmp_path / "mine", style="my band", max_files=10), tmp_path / "x")
    fetch(params(tmp_path / "mine", style="my band", max_files=10), tmp_path / "y")
    _, rows = read_manifest(tmp_path / "x")
    assert len(rows) == 10 and rows == read_manifest(tmp_path / "y")[1]
    assert {r["style"] for r in rows} == {"my band"}
    assert {r["path"].split("/")[0] for r in rows} == {"a", "b"}  # a subset, not a prefix


def test_missing_or_empty_folder_is_a_one_line_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match=rf"folder.path={tmp_path / 'nope'}: folder not found"):
        fetch(params(tmp_path / "nope"), tmp_path / "out")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "readme.txt").write_text("no MIDI here")
    with pytest.raises(ParamsError, match=rf"folder.path={tmp_path / 'empty'}: no MIDI files"):
        fetch(params(tmp_path / "empty"), tmp_path / "out")
    with pytest.raises(ParamsError, match="folder.path is empty"):
        fetch(params(""), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ParamsError, match="max_files"):
        params(tmp_path, max_files=-1)


def test_registered_with_its_params_section() -> None:
    source = pipeline.sources.get("folder")
    assert source.params_cls is Params and source.fetch is fetch
    assert "folder" in pipeline.sources.names()
    assert default_params("folder", Params).path == ""
