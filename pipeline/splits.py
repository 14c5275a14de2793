"""Reproducible train/validation/test assignment by a stable hash."""

from __future__ import annotations

import hashlib


def stable_fraction(key: str, salt: str = "etude") -> float:
    """Map `key` to [0, 1) by SHA-1, identical on every machine and Python version."""
    digest = hashlib.sha1(f"{salt}:{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def stable_split(key: str, validation_fraction: float, test_fraction: float) -> str:
    """Assign `key` (e.g. a file's MD5) to "train", "validation" or "test"."""
    u = stable_fraction(key)
    if u < test_fraction:
        return "test"
    if u < test_fraction + validation_fraction:
        return "validation"
    return "train"


def stable_shard(key: str, n_shards: int) -> int:
    """Shard index in [0, n_shards) for sharded ingest; independent of the split hash."""
    return int(stable_fraction(key, salt="shard") * n_shards)
