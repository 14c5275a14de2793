"""Parser stand-ins that kill their own process, imported by ingest's pool workers.

They live in an importable module (tests/ is on sys.path, which forkserver workers
inherit) because a pool pickles functions by qualified name.
"""

from __future__ import annotations

import os
import signal
import time

from pipeline import ingest_pool


def crash_on_marker(paths: list[str]) -> list[object]:
    """Parse like ingest, but die (SIGKILL, as the OOM killer would) on files named CRASH*."""
    if any(os.path.basename(p).startswith("CRASH") for p in paths):
        os.kill(os.getpid(), signal.SIGKILL)
    return ingest_pool._parse_chunk(paths)


def always_crash(paths: list[str]) -> list[object]:
    """A parser process that dies on every file (e.g. a broken install)."""
    os.kill(os.getpid(), signal.SIGKILL)
    return []


def hang_on_marker(paths: list[str]) -> object:
    """Parse like ingest, but hang where SIGALRM cannot interrupt (as a stuck C++ parser
    would: the signal is blocked) on files named HANG*."""
    if any(os.path.basename(p).startswith("HANG") for p in paths):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(3600)
    return ingest_pool._parse_chunk(paths)
