"""Audio and piano-roll rendering of real clips, with FluidSynth and with the sine fallback.

The FluidSynth test skips where the library is missing, except under CI (tests/tools.py)."""

from __future__ import annotations

import logging
import wave
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fixture_stores import FIXTURES
from tools import require_tool

from pipeline.evaluation import render


@pytest.fixture(scope="module")
def real_notes() -> pd.DataFrame:
    from pipeline.midi import parse_midi

    return parse_midi(FIXTURES / "maestro" / "miditok_Maestro_1.mid").notes


def read_wav(path: Path) -> tuple[np.ndarray, int, int, int]:
    with wave.open(str(path), "rb") as fh:
        frames = fh.readframes(fh.getnframes())
        return (
            np.frombuffer(frames, "<i2"),
            fh.getframerate(),
            fh.getnchannels(),
            fh.getsampwidth(),
        )


def check_png(path: Path) -> tuple[int, ...]:
    from matplotlib.image import imread

    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 300
    assert image[..., :3].std() > 0.01  # something is drawn
    return image.shape


def test_real_clip_renders_wav_and_png(tmp_path: Path, real_notes: pd.DataFrame) -> None:
    out = render.render_clip(real_notes, tmp_path / "clips" / "real-0", seconds=6.0)
    assert out == {
        "wav": tmp_path / "clips" / "real-0.wav",
        "png": tmp_path / "clips" / "real-0.png",
    }
    pcm, rate, channels, width = read_wav(out["wav"])
    assert (rate, channels, width) == (22050, 1, 2)
    assert len(pcm) == 6 * 22050
    assert np.abs(pcm).max() == round(render.PEAK * 32767)  # peak-normalised
    assert np.sqrt(np.mean(pcm.astype(np.float64) ** 2)) > 300  # not silent
    check_png(out["png"])
    assert sorted(p.name for p in out["wav"].parent.iterdir()) == ["real-0.png", "real-0.wav"]


def test_fluidsynth_is_used_when_loadable(
    tmp_path: Path, real_notes: pd.DataFrame, caplog: pytest.LogCaptureFixture
) -> None:
    """Skips without pyfluidsynth/libfluidsynth, but fails under CI (CI=true), where
    scripts/setup.sh installs libfluidsynth3: a failed apt-get must not pass unseen."""
    require_tool(render.fluidsynth_available(), "FluidSynth (pyfluidsynth and libfluidsynth)")
    with caplog.at_level(logging.WARNING):
        render.render_clip(real_notes, tmp_path / "a", seconds=2.0, sample_rate=16000)
    assert "sine" not in caplog.text
    sine = render.to_pretty_midi(render.crop(real_notes, 2.0)).synthesize(fs=16000)
    pcm, rate, _, _ = read_wav(tmp_path / "a.wav")
    assert rate == 16000 and len(pcm) == 32000
    # a sampled piano is not the sine rendering of the same notes
    sine_pcm = np.round(sine[:32000] / np.abs(sine).max() * render.PEAK * 32767)
    assert np.corrcoef(pcm[: len(sine_pcm)], sine_pcm)[0, 1] < 0.9


def test_sine_fallback_when_fluidsynth_unavailable(
    tmp_path: Path,
    real_notes: pd.DataFrame,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setattr(render, "fluidsynth_available", lambda: False)
    with caplog.at_level(logging.WARNING, logger="pipeline.evaluation.render"):
        out = render.render_clip(real_notes, tmp_path / "s", seconds=3.0)
    assert "sine" in caplog.text
    pcm, rate, _, _ = read_wav(out["wav"])
    assert len(pcm) == 3 * rate
    assert np.sqrt(np.mean(pcm.astype(np.float64) ** 2)) > 300
    # the same as pretty_midi's own sine synthesis of the cropped notes, normalised
    sine = render.to_pretty_midi(render.crop(real_notes, 3.0)).synthesize(fs=rate)[: 3 * rate]
    expected = np.round(sine / np.abs(sine).max() * render.PEAK * 32767)
    np.testing.assert_allclose(pcm, expected, atol=1)
    check_png(out["png"])


def test_default_length_is_last_note_plus_release(tmp_path: Path) -> None:
    notes = pd.DataFrame(
        {"pitch": [60, 64], "velocity": [90, 60], "start": [0.0, 0.5], "end": [1.0, 1.25]}
    )
    out = render.render_clip(notes, tmp_path / "x", sample_rate=8000)
    pcm, rate, _, _ = read_wav(out["wav"])
    assert len(pcm) == int((1.25 + render.RELEASE_S) * 8000)


def test_crop_drops_late_notes_and_clips_ends() -> None:
    notes = pd.DataFrame(
        {"pitch": [60, 62, 64], "velocity": 80, "start": [0.0, 1.5, 2.0], "end": [3.0, 1.8, 2.5]}
    )
    cropped = render.crop(notes, 2.0)
    assert cropped["pitch"].tolist() == [60, 62]
    assert cropped["end"].tolist() == [2.0, 1.8]


def test_empty_clip_is_silence_of_the_requested_length(tmp_path: Path) -> None:
    empty = pd.DataFrame({"pitch": [], "velocity": [], "start": [], "end": []})
    out = render.render_clip(empty, tmp_path / "e", seconds=1.5, sample_rate=8000)
    pcm, _, _, _ = read_wav(out["wav"])
    assert len(pcm) == 12000 and not pcm.any()
    assert out["png"].stat().st_size > 0


def test_failed_render_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    notes = pd.DataFrame({"pitch": [60], "velocity": [80], "start": [0.0], "end": [0.5]})
    monkeypatch.setattr(render, "write_piano_roll", boom)
    with pytest.raises(RuntimeError):
        render.render_clip(notes, tmp_path / "f", seconds=1.0, sample_rate=8000)
    assert [p.name for p in tmp_path.iterdir()] == ["f.wav"]  # complete wav, no temp files
    with pytest.raises(ValueError, match="seconds"):
        render.render_clip(notes, tmp_path / "g", seconds=0)
