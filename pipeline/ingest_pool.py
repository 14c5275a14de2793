"""MIDI files parsed in worker processes, where a crash or a hang costs one file.

`parse_all` yields each batch of jobs with its `Chunk` (one outcome per file: the
piece's summary, or a one-line reject reason, plus the good pieces' notes and pedals
as concatenated numpy columns), in job order. Used by `pipeline.ingest`, which streams
the chunks to Parquet; below it, so it also holds the stage's error, `IngestError`.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import multiprocessing as mp
import os
import signal
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np
import pyarrow as pa

from pipeline.core.stores import NOTES, PEDALS
from pipeline.midi import MidiError, ParseLimits, PieceArrays, parse_midi_arrays
from pipeline.splits import content_fingerprint

log = logging.getLogger("pipeline.ingest")  # the stage's logger, as before the split


class IngestError(RuntimeError):
    """Ingest cannot produce a trustworthy store (e.g. too many rejects)."""


class _HasPath(Protocol):
    @property
    def path(self) -> str: ...  # absolute


_J = TypeVar("_J", bound=_HasPath)  # a job (`pipeline.ingest._Job`), handed back with its chunk


# --- worker side -----------------------------------------------------------------


@dataclass(frozen=True)
class PieceSummary:
    """What the parent needs to know of one good file besides its rows."""

    md5: str
    fingerprint: str
    n_notes: int
    n_pedals: int
    duration: float
    n_tracks: int
    ticks_per_quarter: int


@dataclass(frozen=True)
class Chunk:
    """A worker's answer for a list of files: one outcome per file (a piece or a reject
    reason) and the good pieces' notes and pedals as single concatenated column blocks,
    so the parent handles a few arrays per chunk instead of seven per file."""

    outcomes: list[PieceSummary | str]
    notes: dict[str, np.ndarray]
    pedals: dict[str, np.ndarray]


_LIMITS: ParseLimits | None = None
_TIMEOUT_S = 0


class _Timeout(Exception):
    pass


def _configure(limits: ParseLimits, timeout_s: int) -> None:
    global _LIMITS, _TIMEOUT_S
    _LIMITS, _TIMEOUT_S = limits, timeout_s


def _init_worker(limits: ParseLimits, timeout_s: int) -> None:
    _configure(limits, timeout_s)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C


def _alarm(signum: int, frame: Any) -> None:
    raise _Timeout


def _parse_one(path: str) -> tuple[PieceSummary, PieceArrays] | str:
    """Parse one file; return its columns or a one-line reject reason."""
    assert _LIMITS is not None
    use_alarm = _TIMEOUT_S > 0 and hasattr(signal, "SIGALRM")
    if use_alarm:
        signal.signal(signal.SIGALRM, _alarm)
        signal.alarm(_TIMEOUT_S)
    try:
        try:
            with open(path, "rb") as fh:
                data = fh.read()
        except OSError as exc:
            return f"unreadable: {exc.strerror}"
        if not data:
            return "empty file"
        md5 = hashlib.md5(data).hexdigest()
        parsed = parse_midi_arrays(data, _LIMITS)
    except MidiError as exc:
        return str(exc)
    except _Timeout:
        return f"timeout: parsing took longer than {_TIMEOUT_S} s (ingest.file_timeout_s)"
    except MemoryError:
        return "too large: out of memory while parsing"
    except Exception as exc:  # a parser bug must not stop the whole ingest
        return f"parser error: {type(exc).__name__}: {str(exc)[:200]}"
    finally:
        if use_alarm:
            signal.alarm(0)
    notes = parsed.notes
    piece = PieceSummary(
        md5=md5,
        fingerprint=content_fingerprint(notes["pitch"], notes["start"], notes["is_drum"]),
        n_notes=len(parsed.notes["pitch"]),
        n_pedals=len(parsed.pedals["start"]),
        duration=float(parsed.notes["end"].max()),
        n_tracks=parsed.n_tracks,
        ticks_per_quarter=parsed.ticks_per_quarter,
    )
    return piece, parsed


def _parse_chunk(paths: list[str]) -> Chunk:
    outcomes: list[PieceSummary | str] = []
    notes: list[dict[str, np.ndarray]] = []
    pedals: list[dict[str, np.ndarray]] = []
    for path in paths:
        result = _parse_one(path)
        if isinstance(result, str):
            outcomes.append(result)
            continue
        piece, arrays = result
        outcomes.append(piece)
        notes.append(arrays.notes)
        pedals.append(arrays.pedals)
    return Chunk(outcomes, _concat(notes, NOTES), _concat(pedals, PEDALS))


def _concat(parts: list[dict[str, np.ndarray]], schema: pa.Schema) -> dict[str, np.ndarray]:
    names = [name for name in schema.names if name != "piece_id"]
    if not parts:
        return {name: np.empty(0, schema.field(name).type.to_pandas_dtype()) for name in names}
    if len(parts) == 1:
        return parts[0]
    return {name: np.concatenate([p[name] for p in parts]) for name in names}


# --- the pool --------------------------------------------------------------------

CRASHED = "parser crashed: its process died (segfault or out of memory) on this file"
HUNG = "timeout: the parser hung and was killed"
MAX_CONSECUTIVE_CRASHES = 5
HANG_SLACK_S = 10.0  # beyond file_timeout_s before a chunk counts as hung (pool start-up)


def parse_all(
    jobs: Iterator[_J], total: int, source: str, limits: ParseLimits, workers: int, timeout_s: int
) -> Iterator[tuple[list[_J], Chunk]]:
    """Yield (jobs, chunk) in job order, from a process pool when it pays off.

    At most a few chunks per worker are in flight, so a slow writer makes the workers
    wait instead of piling results up in memory. A worker that dies (a parser
    segfault, the OOM killer) breaks the pool, and one stuck where SIGALRM cannot
    reach it (inside symusic's C++) is noticed when its chunk overruns
    `file_timeout_s` + HANG_SLACK_S and killed; either way the files the pool may
    have held are re-parsed one at a time in a fresh process, and the one that kills
    or hangs it again is rejected, so a single hostile file can neither hang nor
    abort the ingest.

    Args:
        workers: processes in the pool (``ingest.workers``; 0 = one per core).
        timeout_s: per file parse time (``ingest.file_timeout_s``; 0 = no limit).
    """
    workers = workers or os.cpu_count() or 1
    if workers == 1 or total < 8:
        yield from _parse_in_process(jobs, limits, timeout_s)
        return
    chunk = max(1, min(32, total // (workers * 8)))
    chunks = _batched(jobs, chunk)
    budget = _hang_budget(timeout_s)
    pending: deque[tuple[list[_J], Future[Chunk]]] = deque()
    pool = _pool(workers, limits, timeout_s)
    refused = False  # the pool broke before a submit: stop feeding it until replaced
    try:
        while True:
            while len(pending) < 4 * workers and not refused:
                batch = next(chunks, None)
                if batch is None:
                    break
                future = _submit(pool, batch)
                pending.append((batch, future))
                refused = future.done() and future.exception() is not None
            if not pending:
                return
            batch, future = pending.popleft()
            try:
                chunk_result = future.result(timeout=budget)
            except (BrokenProcessPool, TimeoutError) as exc:
                lost = [(batch, future), *pending]
                pending.clear()
                _stop(pool)
                what = "died" if isinstance(exc, BrokenProcessPool) else "hung and was killed"
                log.warning(
                    "ingest %s: a parser process %s; retrying its files one by one", source, what
                )
                yield from _isolate(lost, limits, timeout_s)
                pool = _pool(workers, limits, timeout_s)
                refused = False
                continue
            yield batch, chunk_result
    finally:
        _stop(pool)


def _parse_in_process(
    jobs: Iterator[_J], limits: ParseLimits, timeout_s: int
) -> Iterator[tuple[list[_J], Chunk]]:
    in_main = threading.current_thread() is threading.main_thread()
    _configure(limits, timeout_s if in_main else 0)  # SIGALRM only works in the main thread
    old = signal.getsignal(signal.SIGALRM) if in_main and hasattr(signal, "SIGALRM") else None
    try:
        for batch in _batched(jobs, 32):
            yield batch, _parse_chunk([job.path for job in batch])
    finally:
        if old is not None:
            signal.signal(signal.SIGALRM, old)


def _isolate(
    lost: list[tuple[list[_J], Future[Chunk]]], limits: ParseLimits, timeout_s: int
) -> Iterator[tuple[list[_J], Chunk]]:
    """Outcomes of the chunks a broken pool held: finished ones as they are, the rest
    re-parsed file by file in a one-process pool that is replaced after each crash
    or hang."""
    pool = _pool(1, limits, timeout_s)
    budget = _hang_budget(timeout_s)
    crashes = 0
    try:
        for batch, future in lost:
            if future.done() and not future.cancelled() and future.exception() is None:
                yield batch, future.result()
                continue
            for job in batch:
                try:
                    outcome = pool.submit(_parse_chunk, [job.path]).result(timeout=budget)
                    crashes = 0
                except TimeoutError:
                    _stop(pool)
                    pool = _pool(1, limits, timeout_s)
                    reason = f"{HUNG}: more than {timeout_s} s (ingest.file_timeout_s)"
                    outcome = _rejected(reason)
                except BrokenProcessPool:
                    crashes += 1
                    if crashes >= MAX_CONSECUTIVE_CRASHES:
                        raise IngestError(
                            f"parser processes died on {crashes} files in a row (last: "
                            f"{job.path}); is the machine out of memory?"
                        ) from None
                    _stop(pool)
                    pool = _pool(1, limits, timeout_s)
                    outcome = _rejected(CRASHED)
                yield [job], outcome
    finally:
        _stop(pool)


def _submit(pool: ProcessPoolExecutor, batch: list[_J]) -> Future[Chunk]:
    """Submit a chunk; a pool a worker already broke refuses new work at once, so
    that refusal becomes the chunk's failed future and is recovered like a crash
    noticed while waiting (the race CI hit: the crash landed between two submits)."""
    try:
        return pool.submit(_parse_chunk, [job.path for job in batch])
    except BrokenProcessPool as exc:
        failed: Future[Chunk] = Future()
        failed.set_exception(exc)
        return failed


def _hang_budget(timeout_s: int) -> float | None:
    """How long to wait on a chunk (or an isolated file) before calling it hung."""
    return timeout_s + HANG_SLACK_S if timeout_s else None


def _rejected(reason: str) -> Chunk:
    """The chunk answer for one file that a dead or hung parser could not parse."""
    return Chunk([reason], _concat([], NOTES), _concat([], PEDALS))


def _pool(workers: int, limits: ParseLimits, timeout_s: int) -> ProcessPoolExecutor:
    ctx = mp.get_context("forkserver" if hasattr(os, "fork") else "spawn")
    return ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_init_worker, initargs=(limits, timeout_s)
    )


def _stop(pool: ProcessPoolExecutor) -> None:
    """Shut a pool down without waiting on files still being parsed (Ctrl-C, errors)."""
    procs = dict(getattr(pool, "_processes", None) or {})  # private, hence the getattr
    pool.shutdown(wait=False, cancel_futures=True)
    for proc in procs.values():
        if proc.is_alive():
            proc.terminate()
    for proc in procs.values():
        proc.join(timeout=5)
        if proc.is_alive():
            proc.kill()
            proc.join(timeout=5)


def _batched(items: Iterator[_J], size: int) -> Iterator[list[_J]]:
    while batch := list(itertools.islice(items, size)):
        yield batch
