"""Resumable, checksummed HTTP downloads and safe archive extraction.

Data sets are large (Lakh: 1.7 GB) and servers drop connections, so a download
writes to `<dest>.part`, resumes it with an HTTP Range request after a failure
(also across runs), retries connection errors and 5xx answers with exponential
backoff, verifies size and digests while streaming, and only then renames the
file into place. Archives are checked member by member before anything is
written: a member that would land outside the target (absolute path, `..`, a
link pointing out) refuses the whole archive, and extraction goes to a temporary
sibling renamed into place, so a refused or failed archive leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import http.client
import logging
import os
import posixpath
import re
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

from pipeline.core.io import atomic_dir
from pipeline.core.stage_utils import Interrupted

log = logging.getLogger(__name__)

CHUNK_BYTES = 1 << 20
MAX_BACKOFF_S = 60.0
USER_AGENT = "etude/0.1 (python-urllib)"
_RETRY_STATUS = frozenset({408, 425, 429})  # plus every 5xx


class DownloadError(RuntimeError):
    """A download or extraction failed; the message is one line and names the input."""


class UnsafeArchiveError(DownloadError):
    """An archive member would be written outside the extraction target."""


class _Retryable(Exception):
    """A transient failure (dropped connection, 5xx): try again, resuming."""


# ---------------------------------------------------------------- download


def part_path(dest: Path) -> Path:
    """The partial-download sibling of `dest` (`x.tar.gz` -> `x.tar.gz.part`)."""
    return dest.with_suffix(dest.suffix + ".part")


def download(
    url: str,
    dest: str | os.PathLike[str],
    *,
    md5: str | None = None,
    sha256: str | None = None,
    size: int | None = None,
    retries: int = 5,
    backoff_s: float = 1.0,
    timeout_s: float = 60,
    progress: bool = True,
    keep_partial: bool = True,
) -> Path:
    """Download `url` to `dest`, resuming, retrying and verifying.

    If `dest` already exists and matches the given size/digests (or none are
    given) it is returned without a request, so a cache folder survives reruns.
    A `.part` left by an interrupted run is resumed. A wrong size or digest, a
    4xx answer, or a full disk fails at once; a wrong file and a disk-full partial
    are deleted, while a partial left by exhausted retries or Ctrl-C is kept for
    resuming (unless `keep_partial` is false).

    Args:
        url: http(s) URL.
        dest: final file path; its parent is created.
        md5: expected hex MD5 of the whole file, or None.
        sha256: expected hex SHA-256 of the whole file, or None.
        size: expected size in bytes, or None.
        retries: attempts allowed after the first one; reset whenever an attempt
            made progress, so a long download survives many drops.
        backoff_s: first wait between attempts; doubles each time (capped at 60 s).
        timeout_s: socket timeout per connect/read, not for the whole download.
        progress: show a tqdm bar (only when stderr is a terminal).
        keep_partial: keep the `.part` of a download that gave up or was interrupted,
            for the next run to resume; false where `dest`'s folder is a temporary
            that the caller removes on failure, so no message promises a resume.

    Returns:
        `dest` as a Path.

    Raises:
        DownloadError: with a one-line message naming the URL or file.
    """
    dest = Path(dest)
    expected = {k: v.lower() for k, v in (("md5", md5), ("sha256", sha256)) if v}
    if _already_present(dest, expected, size):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(dest)
    state = _HashState(tuple(expected))
    attempt = functools.partial(
        _attempt, url, part, state, size=size, timeout_s=timeout_s, progress=progress
    )
    _with_retries(attempt, url, part, retries, backoff_s, keep_partial)
    received = _check_received(url, part, state, expected, size)
    os.replace(part, dest)
    log.info("%s: downloaded %d bytes to %s", url, received, dest)
    return dest


def _already_present(dest: Path, expected: dict[str, str], size: int | None) -> bool:
    """Whether `dest` exists and matches; a wrong one is deleted (to download again)."""
    if not dest.exists():
        return False
    problem = _verify_file(dest, expected, size)
    if problem is None:
        log.info("%s: already present and verified, not downloading", dest)
        return True
    log.warning("%s: existing file is wrong (%s); downloading again", dest, problem)
    dest.unlink()
    return False


def _with_retries(
    attempt: Callable[[], None],
    url: str,
    part: Path,
    retries: int,
    backoff_s: float,
    keep_partial: bool,
) -> None:
    """Run `attempt` until it completes, backing off after each transient failure.

    The count of failures in a row restarts whenever an attempt grew the partial file.
    """
    failures = 0
    while True:
        before = part.stat().st_size if part.exists() else 0
        try:
            attempt()
            return
        except KeyboardInterrupt:
            raise _interrupted(part, keep_partial) from None
        except _Retryable as exc:
            after = part.stat().st_size if part.exists() else 0
            failures = 1 if after > before else failures + 1
            if failures > retries:
                if not keep_partial:
                    part.unlink(missing_ok=True)
                kept = f" (partial file kept at {part} for resuming)" if keep_partial else ""
                raise DownloadError(
                    f"{url}: giving up after {retries + 1} failed attempts in a row: {exc}{kept}"
                ) from None
            wait = min(backoff_s * 2 ** (failures - 1), MAX_BACKOFF_S)
            log.warning("%s: %s; retrying in %.1f s (%d/%d)", url, exc, wait, failures, retries)
            time.sleep(wait)


def _check_received(
    url: str, part: Path, state: _HashState, expected: dict[str, str], size: int | None
) -> int:
    """The size of the complete `part`; a wrong size or digest deletes it and fails."""
    received = part.stat().st_size
    if size is not None and received != size:
        part.unlink()
        raise DownloadError(f"{url}: size mismatch: expected {size} bytes, got {received}")
    for name, want in expected.items():
        got = state.hexdigest(name)
        if got != want:
            part.unlink()
            raise DownloadError(f"{url}: {name.upper()} mismatch: expected {want}, got {got}")
    return received


def _interrupted(part: Path, keep_partial: bool) -> Interrupted:
    """Ctrl-C mid-download: the partial file stays for the next run to resume (or goes)."""
    held = part.stat().st_size if part.exists() else 0
    if held and not keep_partial:
        part.unlink()
        return Interrupted("the partial download was discarded; a rerun starts it over")
    if held:
        return Interrupted(f"kept the partial download {part} ({held:,} bytes); a rerun resumes it")
    return Interrupted("nothing was downloaded yet; a rerun starts the download over")


class _HashState:
    """Digests of the first `length` bytes of the .part file, kept across attempts."""

    def __init__(self, names: tuple[str, ...]) -> None:
        self.names = names
        self.reset()

    def reset(self) -> None:
        self.hashers = {name: hashlib.new(name) for name in self.names}
        self.length = 0

    def update(self, chunk: bytes) -> None:
        for hasher in self.hashers.values():
            hasher.update(chunk)
        self.length += len(chunk)

    def sync(self, part: Path, offset: int) -> None:
        """Make the digests cover exactly `part[:offset]` (re-reading it if needed)."""
        if self.length == offset:
            return
        self.reset()
        if not self.names or offset == 0:
            self.length = offset
            return
        with part.open("rb") as fh:
            for chunk in iter(lambda: fh.read(CHUNK_BYTES), b""):
                self.update(chunk)

    def hexdigest(self, name: str) -> str:
        return self.hashers[name].hexdigest()


def _attempt(
    url: str, part: Path, state: _HashState, *, size: int | None, timeout_s: float, progress: bool
) -> None:
    """One HTTP request continuing `part`; raises _Retryable on transient failure."""
    offset = part.stat().st_size if part.exists() else 0
    if size is not None and offset > size:
        log.warning("%s: partial file is longer than expected; starting again", part)
        part.unlink()
        offset = 0
    state.sync(part, offset)
    if size is not None and offset == size and offset > 0:
        return  # complete already (an earlier run stopped before the rename)
    headers = {"User-Agent": USER_AGENT}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            _receive(url, response, part, state, offset, size, progress)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            total = _range_total(exc.headers.get("Content-Range"))
            if total == offset and (size is None or size == offset):
                return  # the part already holds the whole file
            part.unlink()
            state.reset()
            raise _Retryable(f"HTTP 416 for bytes {offset}- (partial file discarded)") from None
        if exc.code >= 500 or exc.code in _RETRY_STATUS:
            raise _Retryable(f"HTTP {exc.code} {exc.reason}") from None
        raise DownloadError(f"{url}: HTTP {exc.code} {exc.reason}") from None
    except urllib.error.URLError as exc:
        raise _Retryable(f"connection failed: {exc.reason}") from None
    except (OSError, http.client.HTTPException) as exc:  # resets, timeouts, bad status lines
        raise _Retryable(f"{type(exc).__name__}: {exc}") from None


def _receive(
    url: str,
    response: Any,
    part: Path,
    state: _HashState,
    offset: int,
    size: int | None,
    progress: bool,
) -> None:
    """Stream the response body onto `part`, checking the ranges the server says it sends."""
    status = response.status
    if status == 206:
        start, end, total = _parse_content_range(response.headers.get("Content-Range"))
        if start != offset:
            part.unlink(missing_ok=True)
            state.reset()
            raise _Retryable(f"server resumed at byte {start}, asked for {offset}; restarting")
        expected_end = end + 1
    elif status == 200:
        if offset:
            log.warning("%s: server ignored the Range request; restarting from byte 0", url)
            offset = 0
            state.reset()
        length = response.headers.get("Content-Length")
        total = int(length) if length and length.isdigit() else None
        expected_end = total
    else:
        raise _Retryable(f"unexpected HTTP status {status}")
    if size is not None and total is not None and total != size:
        part.unlink(missing_ok=True)
        raise DownloadError(f"{url}: server reports {total} bytes, expected {size}")

    from tqdm import tqdm

    received = offset
    with (
        _open_part(url, part, "ab" if offset else "wb") as fh,
        tqdm(
            total=total or size,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=part.name.removesuffix(".part"),
            disable=not (progress and sys.stderr.isatty()),
        ) as bar,
    ):
        while True:
            chunk = response.read1(CHUNK_BYTES)  # what has arrived: a timeout loses nothing
            if not chunk:
                break
            _write_or_fail(url, part, fh, chunk)
            state.update(chunk)
            received += len(chunk)
            bar.update(len(chunk))
        _flush_or_fail(url, part, fh)
    if expected_end is not None and received < expected_end:
        raise _Retryable(f"connection closed at byte {received} of {expected_end}")


def _open_part(url: str, part: Path, mode: str) -> IO[bytes]:
    try:
        return part.open(mode)
    except OSError as exc:
        raise _local_error(url, part, exc) from None


def _write_chunk(fh: IO[bytes], chunk: bytes) -> None:
    """Write one chunk (a seam: tests replace it to simulate a full disk)."""
    fh.write(chunk)


def _write_or_fail(url: str, part: Path, fh: IO[bytes], chunk: bytes) -> None:
    try:
        _write_chunk(fh, chunk)
    except OSError as exc:
        with contextlib.suppress(OSError):  # closing flushes again, which may fail the same way
            fh.close()
        raise _local_error(url, part, exc) from None


def _flush_or_fail(url: str, part: Path, fh: IO[bytes]) -> None:
    try:
        fh.flush()
        os.fsync(fh.fileno())
    except OSError as exc:
        with contextlib.suppress(OSError):
            fh.close()
        raise _local_error(url, part, exc) from None


def _local_error(url: str, part: Path, exc: OSError) -> DownloadError:
    """A local file error is not transient: remove the partial file and say why."""
    with contextlib.suppress(OSError):
        part.unlink(missing_ok=True)
    if exc.errno == errno.ENOSPC:
        return DownloadError(
            f"{part}: no space left on device while downloading {url}; partial file removed"
        )
    return DownloadError(f"{part}: cannot write download of {url}: {exc.strerror or exc}")


def _parse_content_range(value: str | None) -> tuple[int, int, int | None]:
    """`bytes START-END/TOTAL` -> (start, end, total or None)."""
    match = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value or "")
    if not match:
        raise _Retryable(f"206 answer with a bad Content-Range {value!r}")
    total = None if match.group(3) == "*" else int(match.group(3))
    return int(match.group(1)), int(match.group(2)), total


def _range_total(value: str | None) -> int | None:
    match = re.fullmatch(r"\s*bytes\s+\*/(\d+)\s*", value or "")
    return int(match.group(1)) if match else None


def _verify_file(path: Path, expected: dict[str, str], size: int | None) -> str | None:
    """None if `path` has the expected size and digests, else what is wrong."""
    actual_size = path.stat().st_size
    if size is not None and actual_size != size:
        return f"{actual_size} bytes, expected {size}"
    if not expected:
        return None
    hashers = {name: hashlib.new(name) for name in expected}
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK_BYTES), b""):
            for hasher in hashers.values():
                hasher.update(chunk)
    for name, want in expected.items():
        got = hashers[name].hexdigest()
        if got != want:
            return f"{name.upper()} {got}, expected {want}"
    return None


# ---------------------------------------------------------------- extraction

Chooser = Callable[[list[str]], Iterable[str]]


def extract(
    archive: str | os.PathLike[str],
    target: str | os.PathLike[str],
    *,
    choose: Chooser | None = None,
) -> list[Path]:
    """Extract a .zip, .tar, .tar.gz/.tgz (or .tar.bz2/.tar.xz) into `target`, atomically.

    Every member is checked before anything is written; extraction goes to a
    temporary sibling of `target` that replaces it only on success.

    Args:
        archive: the archive file.
        target: the folder to create (replaced if it exists).
        choose: optional filter: given the (normalised, sorted) names of all
            regular files in the archive, returns the names to extract.

    Returns:
        The extracted regular files under `target`, sorted.

    Raises:
        UnsafeArchiveError: a member would escape `target` (names the member).
        DownloadError: the archive is unreadable or of an unknown type.
    """
    target = Path(target)
    with atomic_dir(target) as tmp:
        files = extract_into(archive, tmp, choose=choose)
    return [target / f.relative_to(tmp) for f in files]


def extract_into(
    archive: str | os.PathLike[str],
    directory: str | os.PathLike[str],
    *,
    choose: Chooser | None = None,
) -> list[Path]:
    """Like `extract`, into an existing `directory` whose atomicity the caller owns."""
    archive, directory = Path(archive), Path(directory)
    name = archive.name.lower()
    try:
        if name.endswith(".zip"):
            return _extract_zip(archive, directory, choose)
        if name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")):
            return _extract_tar(archive, directory, choose)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError) as exc:
        if isinstance(exc, tarfile.FilterError):
            raise UnsafeArchiveError(f"{archive}: refused: {exc}") from None
        raise DownloadError(f"{archive}: not a readable archive: {exc}") from None
    raise DownloadError(f"{archive}: unknown archive type (expected .zip, .tar, .tar.gz or .tgz)")


def safe_member_name(archive: Path, name: str) -> str:
    """Normalised relative POSIX name of a member, or UnsafeArchiveError naming it.

    Backslashes count as separators here so that `..\\x` is refused too.
    """
    posix = name.replace("\\", "/")
    if not posix or posix.startswith("/") or re.match(r"^[A-Za-z]:", posix) or "\x00" in posix:
        raise UnsafeArchiveError(f"{archive}: refused: member {name!r} has an absolute path")
    norm = posixpath.normpath(posix)
    if norm == ".." or norm.startswith("../"):
        raise UnsafeArchiveError(f"{archive}: refused: member {name!r} escapes the target folder")
    return norm


def _chosen(names: list[str], choose: Chooser | None, archive: Path) -> set[str]:
    if choose is None:
        return set(names)
    chosen = set(choose(sorted(names)))
    unknown = sorted(chosen - set(names))
    if unknown:
        raise DownloadError(f"{archive}: no member {unknown[0]!r} in the archive")
    return chosen


def _extract_zip(archive: Path, directory: Path, choose: Chooser | None) -> list[Path]:
    with zipfile.ZipFile(archive) as zf:
        members = [(info, safe_member_name(archive, info.filename)) for info in zf.infolist()]
        files = {norm: info for info, norm in members if not info.is_dir() and norm != "."}
        chosen = _chosen(list(files), choose, archive)
        out = []
        for norm in sorted(chosen):
            dest = directory / norm
            dest.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(files[norm]) as src, dest.open("wb") as fh:
                shutil.copyfileobj(src, fh, CHUNK_BYTES)
            out.append(dest)
    return out


def _extract_tar(archive: Path, directory: Path, choose: Chooser | None) -> list[Path]:
    with tarfile.open(archive, "r:*") as tf:
        members = [(m, safe_member_name(archive, m.name)) for m in tf.getmembers()]
        links = {norm for m, norm in members if m.issym() or m.islnk()}
        for member, norm in members:
            _check_tar_member(archive, member, norm, links)
        files = [norm for m, norm in members if m.isfile() and norm != "."]
        chosen = _chosen(files, choose, archive)
        # without a chooser, folders and (checked) links come along too
        selected = [
            m for m, norm in members if norm in chosen or (choose is None and not m.isfile())
        ]
        # the "data" filter re-checks every path against the real file system (defence in depth)
        tf.extractall(directory, members=selected, filter="data")
    return [directory / norm for norm in sorted(chosen)]


def _check_tar_member(archive: Path, member: tarfile.TarInfo, norm: str, links: set[str]) -> None:
    """Refuse special files, links pointing outside, and writes through links."""
    if member.ischr() or member.isblk() or member.isfifo():
        raise UnsafeArchiveError(f"{archive}: refused: member {member.name!r} is a device or FIFO")
    parts = norm.split("/")
    for i in range(1, len(parts)):
        if "/".join(parts[:i]) in links:
            raise UnsafeArchiveError(
                f"{archive}: refused: member {member.name!r} is written through a link"
            )
    if member.issym() or member.islnk():
        link = member.linkname.replace("\\", "/")
        kind = "symlink" if member.issym() else "hardlink"
        if link.startswith("/") or re.match(r"^[A-Za-z]:", link):
            raise UnsafeArchiveError(
                f"{archive}: refused: {kind} {member.name!r} "
                f"points to absolute path {member.linkname!r}"
            )
        base = posixpath.dirname(norm) if member.issym() else ""
        resolved = posixpath.normpath(posixpath.join(base, link))
        if resolved == ".." or resolved.startswith("../"):
            raise UnsafeArchiveError(
                f"{archive}: refused: {kind} {member.name!r} "
                f"points outside the target ({member.linkname!r})"
            )
