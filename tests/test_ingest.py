from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
from rawfolder import make_renditions
from typer.testing import CliRunner

from pipeline import ingest as ingest_mod
from pipeline import ingest_pool as pool_mod
from pipeline.cli import app
from pipeline.core.params import default_params
from pipeline.core.stores import read_store
from pipeline.ingest import IngestError, IngestParams, ingest_dir
from pipeline.splits import stable_split

DEFAULT_PARAMS = default_params("ingest", IngestParams)

SUBSET = ["other", "lakh"]  # 24 real files: POP909, GiantMIDI, Lakh multitrack, ...


@pytest.fixture()
def corpus_dir(tmp_path: Path, fixtures_dir: Path) -> Path:
    """A folder of real fixtures plus junk: empty, random bytes, truncated."""
    root = tmp_path / "in"
    for sub in SUBSET:
        shutil.copytree(fixtures_dir / sub, root / sub)
    junk = root / "junk"
    junk.mkdir()
    (junk / "empty.mid").write_bytes(b"")
    (junk / "random.mid").write_bytes(os.urandom(2048))
    good = (fixtures_dir / "other" / "prettymidi_example.mid").read_bytes()
    (junk / "truncated.mid").write_bytes(good[:30])
    (junk / "notes.txt").write_text("not midi: ignored, not a reject")
    return root


def lenient(**changes):
    return dataclasses.replace(DEFAULT_PARAMS, **{"max_reject_rate": 1.0, "workers": 2, **changes})


def test_every_file_is_a_piece_or_a_reject(corpus_dir, tmp_path):
    out = tmp_path / "out"
    summary = ingest_dir(corpus_dir, out, source="test", params=lenient(), progress=False)
    pieces = read_store(out / "pieces.parquet", "pieces")
    rejects = read_store(out / "rejects.parquet", "rejects")
    notes = read_store(out / "notes.parquet", "notes")
    midi = sorted(p.relative_to(corpus_dir).as_posix() for p in corpus_dir.rglob("*.mid*"))
    assert sorted([*pieces["path"], *rejects["path"]]) == midi
    assert set(rejects["path"]) == {"junk/empty.mid", "junk/random.mid", "junk/truncated.mid"}
    assert rejects.set_index("path").loc["junk/empty.mid", "reason"] == "empty file"
    assert all(r for r in rejects["reason"])
    assert summary.pieces == len(pieces) == 24 and summary.rejects == 3
    assert len(notes) == pieces["n_notes"].sum() == summary.notes
    assert (notes["end"] > notes["start"]).all()
    assert set(notes["piece_id"]) == set(pieces["piece_id"])
    per_piece = notes.groupby("piece_id")["end"].max()
    assert (per_piece.loc[pieces["piece_id"]].to_numpy() == pieces["duration"].to_numpy()).all()
    assert set(pieces["split"]) <= {"train", "validation", "test"}
    assert (pieces["style"] == "test").all()  # no composer known -> the source name
    pedals = read_store(out / "pedals.parquet", "pedals")
    assert (pedals["end"] > pedals["start"]).all()


def test_reject_rate_fails_and_keeps_previous_output(corpus_dir, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "previous.txt").write_text("keep me")
    strict = dataclasses.replace(DEFAULT_PARAMS, max_reject_rate=0.05, workers=1)
    with pytest.raises(IngestError, match=r"3 of 27 files rejected .* ingest.max_reject_rate"):
        ingest_dir(corpus_dir, out, source="test", params=strict, progress=False)
    assert (out / "previous.txt").read_text() == "keep me"
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_interrupted_ingest_leaves_nothing_half_written(corpus_dir, tmp_path, monkeypatch):
    out = tmp_path / "out"
    ingest_dir(corpus_dir, out, source="test", params=lenient(workers=1), progress=False)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    calls = {"n": 0}
    real = pool_mod._parse_one

    def dies_midway(path: str):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real(path)

    monkeypatch.setattr(pool_mod, "_parse_one", dies_midway)
    with pytest.raises(KeyboardInterrupt):
        ingest_dir(corpus_dir, out, source="test", params=lenient(workers=1), progress=False)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name or ".old" in p.name]


def test_shards_concatenate_to_the_unsharded_result(corpus_dir, tmp_path):
    full = tmp_path / "full"
    ingest_dir(corpus_dir, full, source="s", params=lenient(), progress=False)
    for kind, key in (("pieces", ["piece_id"]), ("rejects", ["path"]), ("notes", None)):
        parts = []
        for i in range(3):
            shard_dir = tmp_path / f"shard{i}"
            if not shard_dir.exists():
                ingest_dir(
                    corpus_dir,
                    shard_dir,
                    source="s",
                    params=lenient(),
                    shard=(i, 3),
                    progress=False,
                )
            parts.append(read_store(shard_dir / f"{kind}.parquet", kind))
        merged = pd.concat(parts, ignore_index=True)
        whole = read_store(full / f"{kind}.parquet", kind)
        order = key or ["piece_id", "start", "pitch", "track", "end"]
        pd.testing.assert_frame_equal(
            merged.sort_values(order, ignore_index=True),
            whole.sort_values(order, ignore_index=True),
        )
    sizes = [len(read_store(tmp_path / f"shard{i}" / "pieces.parquet", "pieces")) for i in range(3)]
    assert all(sizes), f"a shard is empty: {sizes}"


def test_manifest_sets_split_and_composer(tmp_path, fixtures_dir):
    root = tmp_path / "in"
    shutil.copytree(fixtures_dir / "maestro", root)
    names = sorted(p.name for p in root.glob("*.mid"))
    lines = ["path,split,composer,title"] + [
        f"{n},{'test' if i % 2 else 'train'},Composer {i},Title {i}" for i, n in enumerate(names)
    ]
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    ingest_dir(root, tmp_path / "out", source="maestro", params=lenient(), progress=False)
    pieces = read_store(tmp_path / "out" / "pieces.parquet", "pieces").set_index("path")
    assert pieces.loc[names[1], "split"] == "test" and pieces.loc[names[0], "split"] == "train"
    assert pieces.loc[names[3], "composer"] == "Composer 3"
    assert pieces.loc[names[3], "style"] == "Composer 3"
    assert pieces.loc[names[3], "title"] == "Title 3"


def test_two_renditions_of_a_piece_share_its_split(tmp_path, fixtures_dir):
    """24 real files, each also at another tempo, velocities and bytes, no manifest."""
    pairs = make_renditions(tmp_path / "in", fixtures_dir)
    assert len(pairs) == 24
    ingest_dir(tmp_path / "in", tmp_path / "out", source="mine", params=lenient(), progress=False)
    pieces = read_store(tmp_path / "out" / "pieces.parquet", "pieces").set_index("path")
    assert len(pieces) == 48
    for b, a in pairs.items():
        assert pieces.loc[b, "md5"] != pieces.loc[a, "md5"]
        assert pieces.loc[b, "fingerprint"] == pieces.loc[a, "fingerprint"], b
        assert pieces.loc[b, "group"] == pieces.loc[a, "group"] == pieces.loc[a, "fingerprint"]
        assert pieces.loc[b, "split"] == pieces.loc[a, "split"], b
    assert set(pieces["split"]) == {"train", "validation", "test"}
    # drawn per file (the old way), these pairs would have been split apart
    fractions = (DEFAULT_PARAMS.validation_fraction, DEFAULT_PARAMS.test_fraction)
    by_file = {p: stable_split(pieces.loc[p, "md5"], *fractions) for p in pieces.index}
    assert any(by_file[a] != by_file[b] for b, a in pairs.items())


def test_manifest_groups_share_a_split_and_lead_fingerprint_twins(tmp_path, fixtures_dir):
    root = tmp_path / "in"
    names = sorted(p.name for p in (fixtures_dir / "other").iterdir() if "POP909" in p.name)
    shutil.copytree(fixtures_dir / "other", root)
    twin = (root / names[0]).read_bytes()
    (root / "twin.mid").write_bytes(twin)  # same notes as names[0], no group of its own
    lines = ["path,split,composer,title,group,style"] + [
        f"{n},,,,opus-{i % 2},pop" for i, n in enumerate(names)
    ]
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    ingest_dir(root, tmp_path / "out", source="x", params=lenient(), progress=False)
    pieces = read_store(tmp_path / "out" / "pieces.parquet", "pieces").set_index("path")
    fractions = (DEFAULT_PARAMS.validation_fraction, DEFAULT_PARAMS.test_fraction)
    for i, name in enumerate(names):
        assert pieces.loc[name, "group"] == f"opus-{i % 2}"
        assert pieces.loc[name, "split"] == stable_split(f"opus-{i % 2}", *fractions)
        assert pieces.loc[name, "style"] == "pop"
    assert pieces.loc["twin.mid", "group"] == pieces.loc["twin.mid", "fingerprint"]
    assert pieces.loc["twin.mid", "split"] == pieces.loc[names[0], "split"]
    assert pieces.loc["twin.mid", "style"] == "x"


def test_bad_manifest_split_names_the_file(tmp_path, fixtures_dir):
    root = tmp_path / "in"
    root.mkdir()
    shutil.copy(fixtures_dir / "other" / "symusic_1.midi", root / "a.midi")
    (root / "manifest.csv").write_text("path,split\na.midi,holdout\n")
    with pytest.raises(IngestError, match="a.midi: unknown split 'holdout'"):
        ingest_dir(root, tmp_path / "out", source="x", params=lenient(), progress=False)


def test_hostile_limits_reject_with_reason(tmp_path, fixtures_dir):
    root = tmp_path / "in"
    root.mkdir()
    shutil.copy(fixtures_dir / "maestro" / "miditok_Maestro_1.mid", root / "long.mid")
    shutil.copy(fixtures_dir / "other" / "symusic_1.midi", root / "short.midi")
    ingest_dir(root, tmp_path / "out", source="x", params=lenient(max_notes=1000), progress=False)
    rejects = read_store(tmp_path / "out" / "rejects.parquet", "rejects")
    assert rejects["path"].tolist() == ["long.mid"]
    assert "ingest.max_notes" in rejects["reason"].iloc[0]


runner = CliRunner()


def test_cli_ingest_writes_the_store(tmp_path, fixtures_dir):
    out = tmp_path / "out"
    result = runner.invoke(
        app, ["ingest", str(fixtures_dir / "other"), "--out", str(out), "--source", "other"]
    )
    assert result.exit_code == 0, result.output
    assert "12 pieces, 0 rejected" in result.output
    assert read_store(out / "pieces.parquet", "pieces")["source"].unique().tolist() == ["other"]


def test_cli_ingest_bad_params_one_line(tmp_path, fixtures_dir):
    params = tmp_path / "params.yaml"
    params.write_text(
        "ingest: {workers: -1, max_reject_rate: 0.1, max_notes: 10, max_duration_s: 1.0,"
        " file_timeout_s: 0, validation_fraction: 0.1, test_fraction: 0.1}\n"
    )
    result = runner.invoke(
        app,
        [
            "ingest",
            str(fixtures_dir / "other"),
            "--out",
            str(tmp_path / "o"),
            "--params",
            str(params),
        ],
    )
    assert result.exit_code == 1
    assert "workers must be >= 0" in result.output
    assert "Traceback" not in result.output


def test_cli_ingest_missing_folder(tmp_path):
    result = runner.invoke(app, ["ingest", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 1
    assert "input folder not found" in result.output


def test_walk_order_is_the_sorted_relative_paths(tmp_path):
    """The streamed walk must give the order a full sort would (outputs are ordered by it)."""
    names = [
        "a-c.mid",
        "a/b.mid",
        "a/z/y.MID",
        "a.b/c.midi",
        "B.mid",
        "b/a.kar",
        "ab.mid",
        "a/0.txt",
    ]
    for name in names:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "loop").symlink_to(tmp_path, target_is_directory=True)  # not followed
    expected = sorted(n for n in names if not n.endswith(".txt"))
    assert list(ingest_mod.iter_midi_files(tmp_path)) == expected
    assert ingest_mod.find_midi_files(tmp_path) == [tmp_path / n for n in expected]


def test_notes_read_back_with_plain_string_ids(corpus_dir, tmp_path):
    """piece_id is stored dictionary-encoded; readers must still see plain strings."""
    out = tmp_path / "out"
    ingest_dir(corpus_dir, out, source="t", params=lenient(), progress=False)
    notes = read_store(out / "notes.parquet", "notes")
    assert not isinstance(notes["piece_id"].dtype, pd.CategoricalDtype)
    assert pd.api.types.is_string_dtype(notes["piece_id"])


def test_a_worker_that_dies_costs_only_its_file(corpus_dir, tmp_path, monkeypatch):
    """A parser segfault / OOM kill must neither hang the pool nor abort the ingest."""
    from crashers import crash_on_marker

    good = tmp_path / "good"
    ingest_dir(corpus_dir, good, source="t", params=lenient(), progress=False)
    shutil.copy(corpus_dir / "other" / "symusic_1.midi", corpus_dir / "other" / "CRASH.mid")
    monkeypatch.setattr(pool_mod, "_parse_chunk", crash_on_marker)
    out = tmp_path / "out"
    summary = ingest_dir(corpus_dir, out, source="t", params=lenient(), progress=False)
    rejects = read_store(out / "rejects.parquet", "rejects").set_index("path")
    assert rejects.loc["other/CRASH.mid", "reason"] == pool_mod.CRASHED
    assert summary.rejects == 4 and summary.pieces == 24
    for kind in ("notes", "pieces", "pedals"):
        pd.testing.assert_frame_equal(
            read_store(out / f"{kind}.parquet", kind), read_store(good / f"{kind}.parquet", kind)
        )


def test_a_pool_broken_between_two_submits_costs_no_file(corpus_dir, tmp_path, monkeypatch):
    """A worker can die while chunks are still being handed out; the pool then refuses
    the next submit. That refusal must be recovered like a crash seen while waiting
    (CI hit it: BrokenProcessPool escaped from submit and aborted the ingest)."""
    from concurrent.futures.process import BrokenProcessPool

    good = tmp_path / "good"
    ingest_dir(corpus_dir, good, source="t", params=lenient(), progress=False)
    real_pool = pool_mod._pool
    made = []

    class BreaksAfterTwoSubmits:
        """The first pool: takes two chunks, then answers as a broken pool does."""

        def __init__(self, pool):
            self.pool, self.submits = pool, 0

        def submit(self, fn, *args):
            self.submits += 1
            if self.submits > 2:
                raise BrokenProcessPool("a child process terminated abruptly")
            return self.pool.submit(fn, *args)

        def shutdown(self, **kwargs):
            self.pool.shutdown(**kwargs)

    def pool(workers, limits, timeout_s):
        made.append(workers)
        made_pool = real_pool(workers, limits, timeout_s)
        return BreaksAfterTwoSubmits(made_pool) if len(made) == 1 else made_pool

    monkeypatch.setattr(pool_mod, "_pool", pool)
    out = tmp_path / "out"
    summary = ingest_dir(corpus_dir, out, source="t", params=lenient(), progress=False)
    assert made[:2] == [2, 1]  # the broken pool, then the one-file-at-a-time retry
    assert summary.rejects == 3 and summary.pieces == 24
    for kind in ("notes", "pieces", "pedals", "rejects"):
        pd.testing.assert_frame_equal(
            read_store(out / f"{kind}.parquet", kind), read_store(good / f"{kind}.parquet", kind)
        )


def test_workers_that_always_die_stop_the_ingest_with_a_message(corpus_dir, tmp_path, monkeypatch):
    from crashers import always_crash

    out = tmp_path / "out"
    out.mkdir()
    (out / "previous.txt").write_text("keep me")
    monkeypatch.setattr(pool_mod, "_parse_chunk", always_crash)
    with pytest.raises(IngestError, match="parser processes died on 5 files in a row"):
        ingest_dir(corpus_dir, out, source="t", params=lenient(), progress=False)
    assert (out / "previous.txt").read_text() == "keep me"


def test_a_parser_stuck_beyond_sigalrm_is_killed_and_its_file_rejected(
    corpus_dir, tmp_path, monkeypatch
):
    """SIGALRM cannot interrupt C++; the parent must notice the overrun and kill the worker."""
    import threading

    from crashers import hang_on_marker

    shutil.copy(corpus_dir / "other" / "symusic_1.midi", corpus_dir / "other" / "HANG.mid")
    monkeypatch.setattr(pool_mod, "_parse_chunk", hang_on_marker)
    monkeypatch.setattr(pool_mod, "HANG_SLACK_S", 2.0)
    out = tmp_path / "out"
    done: dict[str, object] = {}

    def run() -> None:  # in a thread, so that a regression fails here instead of hanging
        done["summary"] = ingest_dir(
            corpus_dir, out, source="t", params=lenient(file_timeout_s=1), progress=False
        )

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), "ingest hung on a parser stuck in C++"
    assert done["summary"].pieces == 24
    rejects = read_store(out / "rejects.parquet", "rejects").set_index("path")
    assert rejects.loc["other/HANG.mid", "reason"].startswith(pool_mod.HUNG)
    assert "ingest.file_timeout_s" in rejects.loc["other/HANG.mid", "reason"]
