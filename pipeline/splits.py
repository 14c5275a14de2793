"""Reproducible train/validation/test assignment: by work, never by file.

Several files can be versions of one piece (a chorale as .krn and .mxl, an
instrumental and a vocal setting, a MIDI re-saved at another tempo). Drawing the
split per file puts such versions on both sides of the train/test line, so each
piece carries two keys and the split is drawn per connected class of them:

- its **group**, the work as the source names it (a BWV number and movement for
  the corpus, artist/title for Lakh clean_midi, the MSD track for lmd_matched);
  empty when the source knows none (lmd_full, any folder given to `etude ingest`);
- its **fingerprint** (`content_fingerprint`), a hash of the pitch content that
  survives a change of tempo, velocities, tracks and file bytes.

Pieces sharing a group or a fingerprint are joined (union-find, transitively: a
piece linking two groups merges them). Each class draws one split from a stable hash
of its smallest group key, or of its smallest fingerprint when no piece of the class
has a group; so a source's split of a work does not change when files are added to
other works. A split the manifest fixes (MAESTRO's official one) is kept, and the
pieces joined to it follow it. The classes need every piece, so ingest decides
splits after parsing the whole folder (or the whole shard: see `pipeline.ingest`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np


def stable_fraction(key: str, salt: str = "etude") -> float:
    """Map `key` to [0, 1) by SHA-1, identical on every machine and Python version."""
    digest = hashlib.sha1(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def stable_split(key: str, validation_fraction: float, test_fraction: float) -> str:
    """Assign `key` (a group key or a fingerprint) to "train", "validation" or "test"."""
    u = stable_fraction(key)
    if u < test_fraction:
        return "test"
    if u < test_fraction + validation_fraction:
        return "validation"
    return "train"


def stable_shard(key: str, n_shards: int) -> int:
    """Shard index in [0, n_shards) for sharded ingest; independent of the split hash."""
    return int(stable_fraction(key, salt="shard") * n_shards)


def content_fingerprint(pitch: np.ndarray, start: np.ndarray, is_drum: np.ndarray) -> str:
    """Hash of the pitches in onset order, each chord as its set of pitches (32 hex digits).

    Args are one piece's note columns sorted by (start, pitch), as `pipeline.midi`
    returns them. Kept: which pitches sound together, in which order. Ignored: all
    times (tempo, tempo map, ticks per quarter, durations), velocities, tracks,
    programs and channels (a pitch doubled in two tracks counts once), and drum
    notes (unpitched; used only when a file has nothing else).

    Two renditions match when their onsets are in the same order with the same
    simultaneities: a re-tempo, re-voiced velocities, a re-save, tracks merged or
    split. They do not match after a transposition, one added or removed note, a
    re-quantisation that merges or splits near-simultaneous onsets (e.g. re-saved at
    a coarser ticks-per-quarter), or a human re-performance: those need a similarity
    measure, which this exact hash is not. Onsets are compared exactly: notes on one
    tick get the same time from the tempo map, notes on different ticks keep their
    order under any tempo map.
    """
    import numpy as np

    pitched = ~np.asarray(is_drum, bool)
    if pitched.any():
        pitch, start = pitch[pitched], start[pitched]
    pitch = np.asarray(pitch, np.int64)
    start = np.asarray(start, np.float64)
    if len(pitch) > 1:  # one (onset, pitch) pair once: doublings across tracks
        keep = np.ones(len(pitch), bool)
        keep[1:] = (start[1:] != start[:-1]) | (pitch[1:] != pitch[:-1])
        pitch, start = pitch[keep], start[keep]
    chord_start = np.ones(len(pitch), bool)
    chord_start[1:] = start[1:] != start[:-1]
    # one byte per note: the pitch (0..127), +128 on the first pitch of each onset
    code = (pitch & 0x7F) | (chord_start.astype(np.int64) << 7)
    return hashlib.md5(code.astype(np.uint8).tobytes()).hexdigest()


def assign_splits(
    groups: Sequence[str],
    fingerprints: Sequence[str],
    fixed: Sequence[str],
    validation_fraction: float,
    test_fraction: float,
) -> list[str]:
    """The split of each piece, so that no group and no fingerprint spans two splits.

    Args:
        groups: each piece's group ("" = none).
        fingerprints: each piece's `content_fingerprint`.
        fixed: each piece's split as the manifest gives it ("" = draw it).
        validation_fraction, test_fraction: for the classes drawn by hash.

    A class with a fixed piece takes the fixed split of its first such piece (in the
    order given); a fixed piece always keeps its own, so a source whose official
    split puts one fingerprint on both sides is left as it is for validation to
    report. Other classes draw `stable_split` of their smallest group, else of their
    smallest fingerprint.
    """
    n = len(groups)
    if not len(fingerprints) == len(fixed) == n:
        raise ValueError("groups, fingerprints and fixed must have one entry per piece")
    parent: dict[tuple[int, str], tuple[int, str]] = {}

    def find(node: tuple[int, str]) -> tuple[int, str]:
        root = node
        while parent.setdefault(root, root) != root:
            root = parent[root]
        while parent[node] != root:  # path compression
            parent[node], node = root, parent[node]
        return root

    def union(a: tuple[int, str], b: tuple[int, str]) -> None:
        ra, rb = find(a), find(b)
        if ra != rb:
            # the smaller node becomes the root: the root is the class's smallest key,
            # groups (0, ...) before fingerprints (1, ...)
            parent[max(ra, rb)] = min(ra, rb)

    for group, fingerprint in zip(groups, fingerprints, strict=True):
        node = (1, fingerprint)
        find(node)
        if group:
            union((0, group), node)
    decided: dict[tuple[int, str], str] = {}
    for fingerprint, split in zip(fingerprints, fixed, strict=True):
        if split:
            decided.setdefault(find((1, fingerprint)), split)
    out = []
    for fingerprint, split in zip(fingerprints, fixed, strict=True):
        if split:
            out.append(split)
            continue
        root = find((1, fingerprint))
        if root not in decided:
            decided[root] = stable_split(root[1], validation_fraction, test_fraction)
        out.append(decided[root])
    return out
