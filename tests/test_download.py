"""Downloads against a real HTTP server on 127.0.0.1, and the archive-extraction guard."""

from __future__ import annotations

import errno
import hashlib
import io
import os
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from httpserver import LocalServer

import pipeline.download as dl
from pipeline.core.stage_utils import Interrupted
from pipeline.download import DownloadError, UnsafeArchiveError, download, extract, part_path

FAST = {"backoff_s": 0.01, "timeout_s": 5, "progress": False}


@pytest.fixture()
def server() -> Iterator[LocalServer]:
    with LocalServer() as srv:
        yield srv


@pytest.fixture(scope="module")
def payload(fixtures_dir: Path) -> bytes:
    """~2.3 MB of real MIDI bytes: more than two download chunks of 1 MiB."""
    files = sorted((fixtures_dir / "maestro").glob("*.mid"))
    data = b"".join(p.read_bytes() for p in files)
    assert len(data) > 2 * dl.CHUNK_BYTES
    return data


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# ------------------------------------------------------------------ download


def test_download_verifies_size_md5_and_sha256(
    server: LocalServer, payload: bytes, tmp_path: Path
) -> None:
    url = server.add("/data/file.bin", payload)
    dest = tmp_path / "cache" / "file.bin"
    out = download(
        url,
        dest,
        md5=md5(payload),
        sha256=hashlib.sha256(payload).hexdigest(),
        size=len(payload),
        **FAST,
    )
    assert out == dest and dest.read_bytes() == payload
    assert leftovers(dest.parent) == ["file.bin"]  # no .part left behind
    (request,) = server.requests_for("/data/file.bin")
    assert request.range is None and request.status == 200


def test_resume_after_dropped_connection_uses_range(
    server: LocalServer, payload: bytes, tmp_path: Path
) -> None:
    url = server.add("/f.bin", payload, faults=["drop"])
    dest = download(url, tmp_path / "f.bin", md5=md5(payload), size=len(payload), **FAST)
    assert dest.read_bytes() == payload
    first, second = server.requests_for("/f.bin")
    assert first.range is None
    half = len(payload) // 2
    assert second.range == f"bytes={half}-" and second.status == 206


def test_server_answering_200_to_range_restarts_from_zero(
    server: LocalServer, payload: bytes, tmp_path: Path
) -> None:
    url = server.add("/f.bin", payload, faults=["drop", "ignore_range"])
    dest = download(url, tmp_path / "f.bin", md5=md5(payload), **FAST)
    assert dest.read_bytes() == payload  # not the first half followed by the whole file
    _, second = server.requests_for("/f.bin")
    assert second.range is not None and second.status == 200


def test_partial_file_from_an_earlier_run_is_resumed(
    server: LocalServer, payload: bytes, tmp_path: Path
) -> None:
    url = server.add("/f.bin", payload)
    dest = tmp_path / "f.bin"
    part_path(dest).write_bytes(payload[:1000])
    download(url, dest, md5=md5(payload), **FAST)
    assert dest.read_bytes() == payload
    (request,) = server.requests_for("/f.bin")
    assert request.range == "bytes=1000-" and request.status == 206


def test_ctrl_c_mid_download_keeps_the_part_and_says_so(
    server: LocalServer, payload: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C after the first chunk: the .part stays, the message names it and its size
    (true: a rerun resumes it with a Range request, as the test above shows)."""
    url = server.add("/f.bin", payload)
    dest = tmp_path / "f.bin"
    real_write = dl._write_chunk
    chunks = []

    def write_then_interrupt(fh, chunk: bytes) -> None:  # noqa: ANN001
        real_write(fh, chunk)
        chunks.append(len(chunk))
        if len(chunks) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(dl, "_write_chunk", write_then_interrupt)
    with pytest.raises(Interrupted) as info:
        download(url, dest, md5=md5(payload), **FAST)
    part = part_path(dest)
    held = part.stat().st_size
    assert held == chunks[0] > 0 and not dest.exists()
    assert (
        str(info.value) == f"kept the partial download {part} ({held:,} bytes); a rerun resumes it"
    )
    monkeypatch.setattr(dl, "_write_chunk", real_write)
    download(url, dest, md5=md5(payload), **FAST)
    assert dest.read_bytes() == payload
    assert server.requests_for("/f.bin")[-1].range == f"bytes={held}-"


def test_retries_503_then_succeeds(server: LocalServer, payload: bytes, tmp_path: Path) -> None:
    url = server.add("/f.bin", payload, faults=["503", "503"])
    dest = download(url, tmp_path / "f.bin", md5=md5(payload), **FAST)
    assert dest.read_bytes() == payload
    assert [r.status for r in server.requests_for("/f.bin")] == [503, 503, 200]


def test_404_fails_at_once_without_retrying(server: LocalServer, tmp_path: Path) -> None:
    url = server.base_url + "/missing.zip"
    with pytest.raises(DownloadError, match="404") as info:
        download(url, tmp_path / "missing.zip", retries=5, **FAST)
    assert url in str(info.value)
    assert len(server.requests_for("/missing.zip")) == 1
    assert leftovers(tmp_path) == []


def test_wrong_checksum_deletes_everything_and_names_both_digests(
    server: LocalServer, payload: bytes, tmp_path: Path
) -> None:
    url = server.add("/f.bin", payload)
    wrong = md5(b"something else")
    with pytest.raises(DownloadError) as info:
        download(url, tmp_path / "f.bin", md5=wrong, **FAST)
    message = str(info.value)
    assert url in message and wrong in message and md5(payload) in message
    assert "\n" not in message
    assert leftovers(tmp_path) == []


def test_size_mismatch_reported_by_server_fails(
    server: LocalServer, payload: bytes, tmp_path: Path
) -> None:
    url = server.add("/f.bin", payload)
    with pytest.raises(DownloadError, match=f"expected {len(payload) + 1}"):
        download(url, tmp_path / "f.bin", size=len(payload) + 1, **FAST)
    assert leftovers(tmp_path) == []


def test_disk_full_removes_partial_file(
    server: LocalServer, payload: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = server.add("/f.bin", payload)
    writes: list[int] = []

    def write_then_fill_disk(fh: io.BufferedWriter, chunk: bytes) -> None:
        if writes:  # the first chunk lands, so a partial file really exists
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        writes.append(len(chunk))
        fh.write(chunk)
        fh.flush()

    monkeypatch.setattr(dl, "_write_chunk", write_then_fill_disk)
    with pytest.raises(DownloadError, match="no space left on device") as info:
        download(url, tmp_path / "f.bin", retries=3, **FAST)
    assert writes and "\n" not in str(info.value)
    assert leftovers(tmp_path) == []
    assert len(server.requests_for("/f.bin")) == 1  # a full disk is not retried


def test_slow_server_within_the_timeout_succeeds_in_one_request(
    server: LocalServer, payload: bytes, tmp_path: Path
) -> None:
    data = payload[: 64 * 1024]
    url = server.add("/slow.bin", data, slow_s=0.005)
    dest = download(url, tmp_path / "slow.bin", md5=md5(data), **FAST)
    assert dest.read_bytes() == data
    assert len(server.requests_for("/slow.bin")) == 1


def test_stalled_server_times_out_and_resumes(
    server: LocalServer, payload: bytes, tmp_path: Path
) -> None:
    url = server.add("/f.bin", payload, faults=["stall"], stall_s=2.0)
    dest = download(
        url, tmp_path / "f.bin", md5=md5(payload), backoff_s=0.01, timeout_s=0.3, progress=False
    )
    assert dest.read_bytes() == payload
    _, second = server.requests_for("/f.bin")
    assert second.range == f"bytes={len(payload) // 2}-"


def test_exhausted_retries_keep_the_part_for_the_next_run(
    server: LocalServer, payload: bytes, tmp_path: Path
) -> None:
    url = server.add("/f.bin", payload, faults=["drop", "503", "503"])
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError, match="giving up"):
        download(url, dest, md5=md5(payload), retries=1, **FAST)
    assert not dest.exists()
    assert part_path(dest).read_bytes() == payload[: len(payload) // 2]
    download(url, dest, md5=md5(payload), **FAST)  # the queue of faults is now empty
    assert dest.read_bytes() == payload
    assert server.requests_for("/f.bin")[-1].range == f"bytes={len(payload) // 2}-"


def test_without_keep_partial_nothing_is_left_or_promised(
    server: LocalServer, payload: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`keep_partial=False` (a destination in a temporary folder): giving up or Ctrl-C
    removes the .part, and neither message promises a resume."""
    url = server.add("/f.bin", payload, faults=["drop", "503", "503"])
    dest = tmp_path / "f.bin"
    with pytest.raises(DownloadError) as info:
        download(url, dest, md5=md5(payload), retries=1, keep_partial=False, **FAST)
    assert str(info.value).startswith(f"{url}: giving up after 2 failed attempts in a row: ")
    assert "kept" not in str(info.value) and "resuming" not in str(info.value)
    assert not part_path(dest).exists() and not dest.exists()

    url = server.add("/g.bin", payload)
    real_write = dl._write_chunk

    def write_then_interrupt(fh, chunk: bytes) -> None:  # noqa: ANN001
        real_write(fh, chunk)
        raise KeyboardInterrupt

    monkeypatch.setattr(dl, "_write_chunk", write_then_interrupt)
    with pytest.raises(Interrupted) as stopped:
        download(url, tmp_path / "g.bin", md5=md5(payload), keep_partial=False, **FAST)
    assert str(stopped.value) == "the partial download was discarded; a rerun starts it over"
    assert not part_path(tmp_path / "g.bin").exists()


def test_verified_file_is_not_fetched_again_but_a_corrupt_one_is(
    server: LocalServer, payload: bytes, tmp_path: Path
) -> None:
    url = server.add("/f.bin", payload)
    dest = tmp_path / "f.bin"
    download(url, dest, md5=md5(payload), **FAST)
    download(url, dest, md5=md5(payload), **FAST)
    assert len(server.requests_for("/f.bin")) == 1
    dest.write_bytes(b"corrupt")
    download(url, dest, md5=md5(payload), **FAST)
    assert dest.read_bytes() == payload
    assert len(server.requests_for("/f.bin")) == 2


# ------------------------------------------------------------------ extraction


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in members.items():
            zf.writestr(zipfile.ZipInfo(name), data)
    return path


def make_tar(path: Path, members: list[tuple[str, bytes | None, str | None, bytes]]) -> Path:
    """members: (name, file data or None, link kind "sym"/"hard" or None, link target)."""
    with tarfile.open(path, "w:gz") as tf:
        for name, data, kind, target in members:
            info = tarfile.TarInfo(name)
            if kind is None:
                assert data is not None
                info.size = len(data)
                tf.addfile(info, io.BytesIO(data))
            else:
                info.type = tarfile.SYMTYPE if kind == "sym" else tarfile.LNKTYPE
                info.linkname = target.decode()
                tf.addfile(info)
    return path


def test_extract_zip_and_tar_give_identical_files(midi_files: list[Path], tmp_path: Path) -> None:
    members = {f"set/{i % 3}/{p.name}": p.read_bytes() for i, p in enumerate(midi_files[:6])}
    archive_zip = make_zip(tmp_path / "a.zip", members)
    archive_tar = make_tar(tmp_path / "a.tar.gz", [(n, d, None, b"") for n, d in members.items()])
    for archive in (archive_zip, archive_tar):
        target = tmp_path / f"out_{archive.name}"
        files = extract(archive, target)
        assert [f.relative_to(target).as_posix() for f in files] == sorted(members)
        assert all(f.read_bytes() == members[f.relative_to(target).as_posix()] for f in files)
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_extract_with_chooser_writes_only_the_chosen(tmp_path: Path) -> None:
    archive = make_tar(
        tmp_path / "a.tgz", [(f"d/{i}.mid", bytes([i]), None, b"") for i in range(5)]
    )
    files = extract(archive, tmp_path / "out", choose=lambda names: names[:2])
    assert [f.name for f in files] == ["0.mid", "1.mid"]
    assert sorted(p.name for p in (tmp_path / "out" / "d").iterdir()) == ["0.mid", "1.mid"]


def test_internal_symlink_is_allowed(tmp_path: Path) -> None:
    archive = make_tar(
        tmp_path / "a.tar.gz",
        [("d/real.mid", b"MThd", None, b""), ("d/link.mid", None, "sym", b"real.mid")],
    )
    files = extract(archive, tmp_path / "out")
    assert [f.name for f in files] == ["real.mid"]
    assert (tmp_path / "out" / "d" / "link.mid").read_bytes() == b"MThd"


def assert_refused(archive: Path, member: str, tmp_path: Path) -> None:
    target = tmp_path / "out"
    (target / "keep").mkdir(parents=True)
    (target / "keep" / "old.mid").write_bytes(b"previous output")
    before = leftovers(tmp_path)
    with pytest.raises(UnsafeArchiveError) as info:
        extract(archive, target)
    assert repr(member) in str(info.value), str(info.value)
    assert leftovers(tmp_path) == before  # no temp dir, nothing written beside the target
    assert [p.relative_to(target).as_posix() for p in target.rglob("*")] == ["keep", "keep/old.mid"]
    assert not (tmp_path / "evil.mid").exists()


def test_zip_member_with_dotdot_is_refused(tmp_path: Path) -> None:
    archive = make_zip(tmp_path / "a.zip", {"ok/a.mid": b"MThd", "../evil.mid": b"x"})
    assert_refused(archive, "../evil.mid", tmp_path)


def test_zip_member_with_absolute_path_is_refused(tmp_path: Path) -> None:
    absolute = str(tmp_path / "abs" / "evil.mid")
    archive = make_zip(tmp_path / "a.zip", {"ok/a.mid": b"MThd", absolute: b"x"})
    assert_refused(archive, absolute, tmp_path)
    assert not Path(absolute).exists()


def test_tar_member_escaping_via_dotdot_is_refused(tmp_path: Path) -> None:
    archive = make_tar(
        tmp_path / "a.tar.gz",
        [("ok/a.mid", b"MThd", None, b""), ("ok/../../evil.mid", b"x", None, b"")],
    )
    assert_refused(archive, "ok/../../evil.mid", tmp_path)


@pytest.mark.parametrize(
    ("kind", "link"),
    [
        ("sym", b"/etc/passwd"),
        ("sym", b"../.."),
        ("hard", b"../evil.mid"),
        ("hard", b"/etc/passwd"),
    ],
)
def test_tar_link_pointing_outside_is_refused(kind: str, link: bytes, tmp_path: Path) -> None:
    archive = make_tar(
        tmp_path / "a.tar.gz", [("ok/a.mid", b"MThd", None, b""), ("ok/link", None, kind, link)]
    )
    assert_refused(archive, "ok/link", tmp_path)


def test_tar_write_through_a_link_chain_is_refused(tmp_path: Path) -> None:
    # each link alone stays inside the target ("b" -> ".", "a" -> "b/.."), but on disk
    # "a" resolves to the target's parent, so "a/evil.mid" would land outside
    archive = make_tar(
        tmp_path / "a.tar.gz",
        [("b", None, "sym", b"."), ("a", None, "sym", b"b/.."), ("a/evil.mid", b"x", None, b"")],
    )
    assert_refused(archive, "a/evil.mid", tmp_path)


def test_unreadable_or_unknown_archive_is_a_download_error(tmp_path: Path) -> None:
    bad_zip = tmp_path / "bad.zip"
    bad_zip.write_bytes(b"not a zip at all")
    with pytest.raises(DownloadError, match="bad.zip"):
        extract(bad_zip, tmp_path / "out")
    odd = tmp_path / "data.rar"
    odd.write_bytes(b"x")
    with pytest.raises(DownloadError, match="unknown archive type"):
        extract(odd, tmp_path / "out")
    assert not (tmp_path / "out").exists()
