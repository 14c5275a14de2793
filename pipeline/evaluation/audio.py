"""Clip audio as Ogg Vorbis: about a sixth of 16-bit WAV's size, and reproducible.

evaluate renders each clip (30 s at 22.05 kHz: 1.3 MB as 16-bit PCM WAV) and writes it
compressed with libsndfile (the `soundfile` wheel bundles it, Vorbis included);
the report plays these files and copies them for its blind pairs. libsndfile gives
each Ogg stream a random serial number, so the same audio would encode to different
bytes on every run and DVC would see a changed output; `fix_serial` sets the serial to
a fixed value and recomputes the page checksums, so the same clip always gives the same
file. Every browser the report targets plays Vorbis.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np

VORBIS_QUALITY = 0.4  # soundfile's compression_level (0 = best quality, 1 = smallest)
OGG_SERIAL = 0x45747564  # "Etud": any fixed value; one logical stream per file
SUFFIX = ".ogg"
_BIT_REVERSED = bytes(int(f"{b:08b}"[::-1], 2) for b in range(256))


def ogg_crc(data: bytes) -> int:
    """The Ogg page checksum: CRC-32, polynomial 0x04C11DB7, not reflected, init 0.

    zlib computes the reflected form of the same polynomial, so the bits of each byte
    and of the result are reversed around it (and zlib's pre/post inversion undone).
    """
    raw = zlib.crc32(data.translate(_BIT_REVERSED), 0xFFFFFFFF) ^ 0xFFFFFFFF
    return int(f"{raw:032b}"[::-1], 2)


def fix_serial(ogg: bytes, serial: int = OGG_SERIAL) -> bytes:
    """`ogg` with every page's stream serial set to `serial` and its checksum redone.

    An Ogg page: "OggS", version, flags, granule (8 bytes), serial (4, at 14), sequence
    (4), checksum (4, at 22), segment count n (at 26), n lacing values, then the body.
    """
    out = bytearray(ogg)
    pos = 0
    while pos < len(out):
        if out[pos : pos + 4] != b"OggS" or pos + 27 > len(out):
            raise ValueError(f"not an Ogg page at byte {pos}")
        n_segments = out[pos + 26]
        header = 27 + n_segments
        size = header + sum(out[pos + 27 : pos + header])
        struct.pack_into("<I", out, pos + 14, serial)
        struct.pack_into("<I", out, pos + 22, 0)  # the checksum covers the page with it zeroed
        struct.pack_into("<I", out, pos + 22, ogg_crc(bytes(out[pos : pos + size])))
        pos += size
    return bytes(out)


def ogg_bytes(audio: np.ndarray, sample_rate: int, quality: float = VORBIS_QUALITY) -> bytes:
    """Mono float audio (-1..1) as Ogg Vorbis bytes, the same bytes every run."""
    import soundfile

    buffer = io.BytesIO()
    soundfile.write(
        buffer,
        np.asarray(audio, np.float32),
        sample_rate,
        format="OGG",
        subtype="VORBIS",
        compression_level=quality,
    )
    return fix_serial(buffer.getvalue())


def encode_ogg(source: Path, out: Path, quality: float = VORBIS_QUALITY) -> Path:
    """Encode an audio file libsndfile reads (e.g. WAV) as Ogg Vorbis at `out`."""
    import soundfile

    audio, sample_rate = soundfile.read(str(source), dtype="float32")
    out.write_bytes(ogg_bytes(audio, sample_rate, quality))
    return out


def audio_seconds(path: Path | None) -> float | None:
    """An audio file's length in seconds; None if absent or unreadable."""
    if path is None:
        return None
    import soundfile

    try:
        return float(soundfile.info(str(path)).duration)
    except (OSError, RuntimeError, soundfile.LibsndfileError):
        return None
