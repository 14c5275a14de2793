"""The Lakh source against a local HTTP server serving tar.gz archives in the real layouts."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import tarfile
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

import pytest
from fixture_stores import shipped
from httpserver import LocalServer
from rawfolder import read_manifest, rendition

import pipeline.sources
from pipeline.core.params import ParamsError, default_params, from_mapping
from pipeline.core.stores import read_store
from pipeline.download import UnsafeArchiveError
from pipeline.ingest import IngestParams, ingest_dir
from pipeline.sources import MANIFEST_COLUMNS
from pipeline.sources.lakh import KNOWN, URLS, Params, fetch, group_of, matched_groups

INGEST = dataclasses.replace(default_params("ingest", IngestParams), workers=1)

ARTISTS = {
    "Aicha": "Khaled",
    "All_The_Small_Things": "blink-182",
    "Funkytown": "Lipps Inc.",
    "Girls_Just_Want_to_Have_Fun": "Cyndi Lauper",
    "I_Gotta_Feeling": "The Black Eyed Peas",
    "In_Too_Deep": "Sum 41",
    "Les_Yeux_Revolvers": "Marc Lavoine",
    "Mr._Blue_Sky": "Electric Light Orchestra",
    "Shut_Up": "Simple Plan",
    "What_a_Fool_Believes": "The Doobie Brothers",
}

Archive = tuple[bytes, dict[str, bytes]]  # (tar.gz bytes, member name -> MIDI bytes)


@pytest.fixture()
def server() -> Iterator[LocalServer]:
    with LocalServer() as srv:
        yield srv


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def tar_gz(members: dict[str, bytes], folders: Iterable[str] = ()) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=1) as tf:
        for folder in folders:
            info = tarfile.TarInfo(folder)
            info.type = tarfile.DIRTYPE
            tf.addfile(info)
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


@pytest.fixture(scope="module")
def lmd_full(midi_files: list[Path]) -> Archive:
    """All 60 fixture files as `lmd_full/<first hex char>/<md5>.mid`."""
    members = {}
    for path in midi_files:
        data = path.read_bytes()
        digest = md5(data)
        members[f"lmd_full/{digest[0]}/{digest}.mid"] = data
    folders = ["lmd_full"] + sorted({n.rsplit("/", 1)[0] for n in members})
    return tar_gz(members, folders), members


@pytest.fixture(scope="module")
def clean_midi(fixtures_dir: Path) -> Archive:
    """The Lakh pop fixtures as `clean_midi/<Artist>/<Title>.mid`, one song twice (as Lakh has)."""
    members = {}
    for stem, artist in ARTISTS.items():
        data = (fixtures_dir / "lakh" / f"miditok_{stem}.mid").read_bytes()
        members[f"clean_midi/{artist}/{stem.replace('_', ' ')}.mid"] = data
    members["clean_midi/Sum 41/In Too Deep.1.mid"] = members["clean_midi/Sum 41/In Too Deep.mid"]
    return tar_gz(members), members


def params_for(url: str, data: bytes, tmp_path: Path, **overrides: object) -> Params:
    raw = {
        "url": url,
        "md5": md5(data),
        "size_bytes": len(data),
        "cache_dir": str(tmp_path / "cache"),
    }
    raw.update(overrides)
    return from_mapping({**shipped("lakh"), **raw}, Params, "lakh")


def test_lmd_full_is_deterministic_and_left_to_the_fingerprint(
    server: LocalServer, lmd_full: Archive, tmp_path: Path
) -> None:
    data, members = lmd_full
    url = server.add("/craffel/lmd/lmd_full.tar.gz", data)
    params = params_for(url, data, tmp_path)
    fetch(params, tmp_path / "a")
    fetch(params, tmp_path / "b")
    columns, rows = read_manifest(tmp_path / "a")
    assert columns == list(MANIFEST_COLUMNS)
    assert rows == read_manifest(tmp_path / "b")[1]
    assert sorted(r["path"] for r in rows) == sorted(members)
    for row in rows:
        content = (tmp_path / "a" / row["path"]).read_bytes()
        assert content == members[row["path"]]
        assert Path(row["path"]).stem == md5(content)
        assert row["split"] == row["group"] == row["composer"] == row["title"] == ""
    assert len(server.requests_for("/craffel/lmd/lmd_full.tar.gz")) == 1  # second run: cache


def test_subset_is_reproducible_and_nested(
    server: LocalServer, lmd_full: Archive, tmp_path: Path
) -> None:
    data, members = lmd_full
    url = server.add("/lmd_full.tar.gz", data)
    manifests = []
    for n, name in [(20, "a"), (20, "b"), (30, "c")]:
        fetch(params_for(url, data, tmp_path, max_files=n), tmp_path / name)
        manifests.append(read_manifest(tmp_path / name)[1])
    first, again, bigger = manifests
    assert first == again and len(first) == 20 and len(bigger) == 30
    assert {r["path"] for r in first} < {r["path"] for r in bigger}
    on_disk = sorted(
        p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a").rglob("*.mid")
    )
    assert on_disk == sorted(r["path"] for r in first)


def test_lmd_full_renditions_share_a_split_after_ingest(
    server: LocalServer, midi_files: list[Path], tmp_path: Path
) -> None:
    members = {}
    for path in midi_files[:12]:
        for data in (path.read_bytes(), rendition(path.read_bytes())):
            members[f"lmd_full/{md5(data)[0]}/{md5(data)}.mid"] = data
    data = tar_gz(members)
    url = server.add("/lmd_full.tar.gz", data)
    fetch(params_for(url, data, tmp_path), tmp_path / "raw")
    ingest_dir(tmp_path / "raw", tmp_path / "interim", source="lakh", params=INGEST, progress=False)
    pieces = read_store(tmp_path / "interim" / "pieces.parquet", "pieces")
    assert len(pieces) == 24 and pieces["fingerprint"].nunique() == 12
    assert (pieces.groupby("fingerprint")["split"].nunique() == 1).all()
    assert (pieces["group"] == pieces["fingerprint"]).all()


def test_clean_midi_titles_groups_and_duplicates(
    server: LocalServer, clean_midi: Archive, tmp_path: Path
) -> None:
    data, members = clean_midi
    # the song again under Lakh's duplicate numbering (and odd spacing), re-saved at
    # another tempo: other bytes, so it is kept, in the song's group
    song = members["clean_midi/Sum 41/In Too Deep.mid"]
    other = rendition(song)
    members = {**members, "clean_midi/Sum 41/In Too  Deep.2.mid": other}
    data = tar_gz(members)
    url = server.add("/clean_midi.tar.gz", data)
    fetch(params_for(url, data, tmp_path, variant="clean_midi"), tmp_path / "out")
    _, rows = read_manifest(tmp_path / "out")
    assert len(rows) == len(ARTISTS) + 1  # the byte-identical "In Too Deep.1.mid" is dropped
    titles = {r["title"] for r in rows}
    assert "Electric Light Orchestra/Mr. Blue Sky" in titles and "Sum 41/In Too Deep" in titles
    groups = Counter(r["group"] for r in rows)
    assert groups["sum 41/in too deep"] == 2 and len(groups) == len(ARTISTS)
    assert all(r["split"] == r["composer"] == "" for r in rows)
    assert not (tmp_path / "out" / "clean_midi" / "Sum 41" / "In Too Deep.1.mid").exists()
    ingest_dir(tmp_path / "out", tmp_path / "interim", source="lakh", params=INGEST, progress=False)
    pieces = read_store(tmp_path / "interim" / "pieces.parquet", "pieces")
    assert (pieces.groupby("group")["split"].nunique() == 1).all()
    assert set(pieces[pieces["group"] == "sum 41/in too deep"]["path"]) == {
        "clean_midi/Sum 41/In Too Deep.mid",
        "clean_midi/Sum 41/In Too  Deep.2.mid",
    }


def test_clean_midi_group_names() -> None:
    assert group_of("clean_midi", "clean_midi/ABBA/Dancing Queen.1.mid") == "abba/dancing queen"
    assert group_of("clean_midi", "clean_midi/ABBA/dancing  queen.mid") == "abba/dancing queen"
    assert group_of("clean_midi", "clean_midi/R.E.M./Losing My Religion.mid") == (
        "r.e.m./losing my religion"
    )
    assert group_of("lmd_full", "lmd_full/0/" + "0" * 32 + ".mid") == ""


def test_lmd_matched_lists_one_file_once(
    server: LocalServer, midi_files: list[Path], tmp_path: Path
) -> None:
    data_a, data_b = midi_files[0].read_bytes(), midi_files[1].read_bytes()
    a, b = md5(data_a), md5(data_b)
    members = {
        f"lmd_matched/A/A/A/TRAAAGR128F425B14B/{a}.mid": data_a,
        f"lmd_matched/B/B/B/TRBBBXX128F425B14B/{a}.mid": data_a,  # same MIDI matched to a 2nd track
        f"lmd_matched/C/C/C/TRCCCYY128F425B14B/{b}.mid": data_b,
    }
    data = tar_gz(members)
    url = server.add("/lmd_matched.tar.gz", data)
    fetch(params_for(url, data, tmp_path, variant="lmd_matched"), tmp_path / "out")
    _, rows = read_manifest(tmp_path / "out")
    assert sorted(Path(r["path"]).stem for r in rows) == sorted([a, b])
    assert {Path(r["path"]).stem: r["group"] for r in rows} == {
        a: "TRAAAGR128F425B14B",
        b: "TRCCCYY128F425B14B",
    }


def test_lmd_matched_groups_by_track_through_shared_files(
    server: LocalServer, midi_files: list[Path], tmp_path: Path
) -> None:
    """Tracks that share a MIDI are one work: B's other file goes where A's does."""
    data_a, data_b, data_c = (midi_files[i].read_bytes() for i in (0, 1, 2))
    a, b, c = md5(data_a), md5(data_b), md5(data_c)
    tr_a, tr_b, tr_c = "TRAAAGR128F425B14B", "TRBBBXX128F425B14B", "TRCCCYY128F425B14B"
    members = {
        f"lmd_matched/A/A/A/{tr_a}/{a}.mid": data_a,
        f"lmd_matched/B/B/B/{tr_b}/{a}.mid": data_a,
        f"lmd_matched/B/B/B/{tr_b}/{b}.mid": data_b,
        f"lmd_matched/C/C/C/{tr_c}/{c}.mid": data_c,
    }
    assert matched_groups(list(members)) == {a: tr_a, b: tr_a, c: tr_c}
    data = tar_gz(members)
    url = server.add("/lmd_matched.tar.gz", data)
    fetch(params_for(url, data, tmp_path, variant="lmd_matched"), tmp_path / "out")
    _, rows = read_manifest(tmp_path / "out")
    assert {Path(r["path"]).stem: r["group"] for r in rows} == {a: tr_a, b: tr_a, c: tr_c}
    ingest_dir(tmp_path / "out", tmp_path / "interim", source="lakh", params=INGEST, progress=False)
    pieces = read_store(tmp_path / "interim" / "pieces.parquet", "pieces").set_index("md5")
    assert pieces.loc[a, "split"] == pieces.loc[b, "split"]
    assert pieces.loc[b, "group"] == tr_a


def test_unsafe_archive_leaves_nothing(
    server: LocalServer, midi_files: list[Path], tmp_path: Path
) -> None:
    data = tar_gz(
        {"lmd_full/0/ok.mid": midi_files[0].read_bytes(), "lmd_full/../../evil.mid": b"x"}
    )
    url = server.add("/lmd_full.tar.gz", data)
    with pytest.raises(UnsafeArchiveError, match="evil.mid"):
        fetch(params_for(url, data, tmp_path), tmp_path / "raw" / "lakh")
    assert list((tmp_path / "raw").iterdir()) == []
    assert not (tmp_path / "evil.mid").exists()


def test_params_published_checksums_validation_and_registry() -> None:
    shipped = dataclasses.asdict(default_params("lakh", Params))
    official = from_mapping(shipped, Params, "lakh")
    assert (
        official.resolved_url
        == URLS["lmd_full"]
        == "http://hog.ee.columbia.edu/craffel/lmd/lmd_full.tar.gz"
    )
    assert official.checks() == KNOWN[URLS["lmd_full"]]
    clean = from_mapping({**shipped, "variant": "clean_midi"}, Params, "lakh")
    assert clean.checks() == (None, None)
    mirror_url = "http://mirror.example/lmd_full.tar.gz"
    mirror = from_mapping({**shipped, "url": mirror_url}, Params, "lakh")
    assert mirror.checks() == (None, None)  # a published digest belongs to its URL only
    with pytest.raises(ParamsError, match="variant"):
        from_mapping({**shipped, "variant": "lmd_aligned"}, Params, "lakh")
    with pytest.raises(ParamsError, match="max_files"):
        from_mapping({**shipped, "max_files": -3}, Params, "lakh")
    with pytest.raises(ParamsError, match="test_fraction"):  # ingest's now: an unknown key
        from_mapping({**shipped, "test_fraction": 0.1}, Params, "lakh")
    source = pipeline.sources.get("lakh")
    assert source.params_cls is Params and source.fetch is fetch
