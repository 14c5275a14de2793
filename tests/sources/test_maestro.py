"""The MAESTRO source against a local HTTP server serving a zip in the real layout."""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import io
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from httpserver import LocalServer
from rawfolder import read_manifest

import pipeline.sources
from pipeline.core.params import ParamsError, default_params, from_mapping
from pipeline.download import DownloadError
from pipeline.sources import MANIFEST_COLUMNS
from pipeline.sources.maestro import Params, fetch
from pipeline.splits import stable_fraction

COMPOSERS = ["Frédéric Chopin", "Johann Sebastian Bach", "Franz Liszt", "Claude Debussy"]
SPLIT_CYCLE = ["train", "train", "validation", "test"]
# (zip bytes, CSV rows, midi_filename -> MIDI bytes)
Maestro = tuple[bytes, list[dict[str, str]], dict[str, bytes]]


@pytest.fixture()
def server() -> Iterator[LocalServer]:
    with LocalServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def maestro(fixtures_dir: Path) -> Maestro:
    """A MAESTRO-style zip: maestro-v3.0.0/<year>/<name>.midi + maestro-v3.0.0.csv.

    Returns (zip bytes, CSV rows, midi_filename -> MIDI bytes).
    """
    files = sorted((fixtures_dir / "maestro").glob("*.mid"))[:12]
    rows, contents = [], {}
    for i, path in enumerate(files):
        year = "2004" if i < 8 else "2006"
        midi_filename = f"{year}/{path.stem}.midi"
        contents[midi_filename] = path.read_bytes()
        rows.append(
            {
                "canonical_composer": COMPOSERS[i % len(COMPOSERS)],
                "canonical_title": f'Piece No. {i}, "quoted", in C',
                "split": SPLIT_CYCLE[i % len(SPLIT_CYCLE)],
                "year": year,
                "midi_filename": midi_filename,
                "audio_filename": midi_filename.replace(".midi", ".wav"),  # not in the MIDI zip
                "duration": f"{100 + i}.5",
            }
        )
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("maestro-v3.0.0/", b"")
        for name, data in contents.items():
            zf.writestr(f"maestro-v3.0.0/{name}", data)
        zf.writestr("maestro-v3.0.0/maestro-v3.0.0.csv", text.getvalue())
    return buffer.getvalue(), rows, contents


def params_for(url: str, data: bytes, tmp_path: Path, **overrides: object) -> Params:
    raw = {
        "url": url,
        "md5": hashlib.md5(data).hexdigest(),
        "sha256": None,
        "size_bytes": len(data),
        "max_files": 0,
        "cache_dir": str(tmp_path / "cache"),
    }
    raw.update(overrides)
    return from_mapping(raw, Params, "maestro")


def test_fetch_writes_every_file_and_the_official_metadata(
    server: LocalServer, maestro: Maestro, tmp_path: Path
) -> None:
    data, rows, contents = maestro
    url = server.add("/maestro/v3.0.0/maestro-v3.0.0-midi.zip", data)
    out = tmp_path / "raw" / "maestro"
    fetch(params_for(url, data, tmp_path), out)

    columns, manifest = read_manifest(out)
    assert columns == list(MANIFEST_COLUMNS)
    assert columns == ["path", "split", "composer", "title", "group", "style"]
    by_path = {r["path"]: r for r in manifest}
    expected = {f"maestro-v3.0.0/{r['midi_filename']}": r for r in rows}
    assert set(by_path) == set(expected)
    for path, row in by_path.items():
        source = expected[path]
        assert (row["split"], row["composer"], row["title"]) == (
            source["split"],
            source["canonical_composer"],
            source["canonical_title"],
        )
        assert row["group"] == row["style"] == ""  # official split kept; no work key
        assert (out / path).read_bytes() == contents[source["midi_filename"]]
    on_disk = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert on_disk == sorted([*expected, "manifest.csv"])  # no CSV, no stray files for ingest
    assert (tmp_path / "cache" / "maestro-v3.0.0-midi.zip").read_bytes() == data


def test_subset_is_reproducible_nested_and_keeps_official_splits(
    server: LocalServer, maestro: Maestro, tmp_path: Path
) -> None:
    data, rows, _ = maestro
    url = server.add("/m.zip", data)
    split_of = {f"maestro-v3.0.0/{r['midi_filename']}": r["split"] for r in rows}
    manifests = []
    for n, name in [(5, "a"), (5, "b"), (8, "c")]:
        fetch(params_for(url, data, tmp_path, max_files=n), tmp_path / name)
        manifests.append(read_manifest(tmp_path / name)[1])
    first, again, bigger = manifests
    assert first == again and len(first) == 5 and len(bigger) == 8
    assert {r["path"] for r in first} < {r["path"] for r in bigger}
    assert all(r["split"] == split_of[r["path"]] for r in bigger)
    ranked = sorted(rows, key=lambda r: stable_fraction(r["midi_filename"], salt="subset"))
    assert sorted(r["path"] for r in first) == sorted(
        f"maestro-v3.0.0/{r['midi_filename']}" for r in ranked[:5]
    )
    files = [p for p in (tmp_path / "a").rglob("*.midi")]
    assert len(files) == 5
    assert len(server.requests_for("/m.zip")) == 1  # later runs used the cached zip


def test_dropped_download_is_resumed_with_range(
    server: LocalServer, maestro: Maestro, tmp_path: Path
) -> None:
    data, rows, _ = maestro
    url = server.add("/m.zip", data, faults=["drop"])
    fetch(params_for(url, data, tmp_path), tmp_path / "out")
    assert len(read_manifest(tmp_path / "out")[1]) == len(rows)
    assert [r.range is not None for r in server.requests_for("/m.zip")] == [False, True]


def test_wrong_checksum_writes_nothing(
    server: LocalServer, maestro: Maestro, tmp_path: Path
) -> None:
    data, _, _ = maestro
    url = server.add("/m.zip", data)
    wrong = "0" * 32
    with pytest.raises(DownloadError, match=wrong):
        fetch(params_for(url, data, tmp_path, md5=wrong), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert list((tmp_path / "cache").iterdir()) == []


def test_zip_without_the_csv_is_rejected(server: LocalServer, tmp_path: Path) -> None:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        zf.writestr("maestro-v3.0.0/2004/a.midi", b"MThd")
    data = buffer.getvalue()
    url = server.add("/m.zip", data)
    with pytest.raises(DownloadError, match="not a MAESTRO archive"):
        fetch(params_for(url, data, tmp_path), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_params_defaults_validation_and_registry() -> None:
    """Defaults live in params.yaml only: a missing key is an error, not a silent default."""
    params = default_params("maestro", Params)
    assert params.url.endswith("/maestro/v3.0.0/maestro-v3.0.0-midi.zip")
    assert params.max_files == 0 and params.cache_dir == "data/cache"
    assert params.sha256 is not None and params.size_bytes == 58416533
    shipped = dataclasses.asdict(params)
    with pytest.raises(ParamsError, match="missing key 'maestro.url'"):
        from_mapping({k: v for k, v in shipped.items() if k != "url"}, Params, "maestro")
    with pytest.raises(ParamsError, match="max_files"):
        from_mapping({**shipped, "max_files": -1}, Params, "maestro")
    with pytest.raises(ParamsError, match="md5"):
        from_mapping({**shipped, "md5": "xyz"}, Params, "maestro")
    with pytest.raises(ParamsError, match="maestro.unknown"):
        from_mapping({**shipped, "unknown": 1}, Params, "maestro")
    source = pipeline.sources.get("maestro")
    assert source.params_cls is Params and source.fetch is fetch
