"""Clip audio as Ogg Vorbis: a valid stream, reproducible bytes, much smaller than WAV."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import numpy as np
import pytest
import soundfile

from pipeline.evaluation.audio import OGG_SERIAL, audio_seconds, encode_ogg, fix_serial, ogg_crc

RATE = 22050


def _pages(ogg: bytes) -> list[bytes]:
    pages, pos = [], 0
    while pos < len(ogg):
        n = ogg[pos + 26]
        size = 27 + n + sum(ogg[pos + 27 : pos + 27 + n])
        pages.append(ogg[pos : pos + size])
        pos += size
    return pages


@pytest.fixture
def wav(tmp_path: Path) -> Path:
    """Three seconds of a chord as 16-bit mono PCM (what evaluate wrote before Vorbis)."""
    t = np.arange(3 * RATE) / RATE
    audio = sum(np.sin(2 * np.pi * f * t) for f in (261.6, 329.6, 392.0)) / 3
    path = tmp_path / "clip.wav"
    with wave.open(str(path), "wb") as fh:
        fh.setnchannels(1)
        fh.setsampwidth(2)
        fh.setframerate(RATE)
        fh.writeframes((audio * 0.8 * 32767).astype("<i2").tobytes())
    return path


def test_ogg_crc_known_values() -> None:
    """The Ogg checksum is CRC-32/CKSUM (POSIX cksum: polynomial 0x04C11DB7, init 0, not
    reflected) without cksum's final inversion; the catalogue's check value for
    "123456789" is 0x765E7680."""
    assert ogg_crc(b"") == 0
    assert ogg_crc(b"123456789") == 0x765E7680 ^ 0xFFFFFFFF


def test_our_checksum_is_libsndfile_s(tmp_path: Path) -> None:
    path = tmp_path / "raw.ogg"
    soundfile.write(path, np.zeros(RATE), RATE, format="OGG", subtype="VORBIS")
    for page in _pages(path.read_bytes()):
        stored = struct.unpack_from("<I", page, 22)[0]
        zeroed = page[:22] + b"\0\0\0\0" + page[26:]
        assert ogg_crc(zeroed) == stored


def test_encode_is_reproducible_valid_and_small(wav: Path, tmp_path: Path) -> None:
    first = encode_ogg(wav, tmp_path / "a.ogg").read_bytes()
    second = encode_ogg(wav, tmp_path / "b.ogg").read_bytes()
    assert first == second  # libsndfile alone picks a random stream serial each time
    assert {struct.unpack_from("<I", p, 14)[0] for p in _pages(first)} == {OGG_SERIAL}
    decoded, rate = soundfile.read(tmp_path / "a.ogg")
    original, _ = soundfile.read(wav)
    assert rate == RATE and len(decoded) == len(original)
    assert np.corrcoef(decoded, original)[0, 1] > 0.99
    assert len(first) < wav.stat().st_size / 4


def test_fix_serial_rejects_what_is_not_ogg() -> None:
    with pytest.raises(ValueError, match="not an Ogg page at byte 0"):
        fix_serial(b"RIFF" + bytes(40))


def test_audio_seconds_reads_the_length_or_says_none(wav: Path, tmp_path: Path) -> None:
    ogg = encode_ogg(wav, tmp_path / "a.ogg")
    assert audio_seconds(ogg) == pytest.approx(3.0, abs=1e-3)
    assert audio_seconds(wav) == pytest.approx(3.0, abs=1e-3)
    (tmp_path / "bad.ogg").write_bytes(b"not audio")
    assert audio_seconds(tmp_path / "bad.ogg") is None
    assert audio_seconds(tmp_path / "missing.ogg") is None
    assert audio_seconds(None) is None
