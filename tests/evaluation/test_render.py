"""Audio and piano-roll rendering of real clips, with FluidSynth and with the sine fallback.

The FluidSynth test skips where the library is missing, except under CI (tests/tools.py)."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile
from fixture_stores import FIXTURES
from tools import require_tool

from pipeline.evaluation import render


@pytest.fixture(scope="module")
def real_notes() -> pd.DataFrame:
    from pipeline.midi import parse_midi

    return parse_midi(FIXTURES / "maestro" / "miditok_Maestro_1.mid").notes


def read_audio(path: Path) -> tuple[np.ndarray, int, int, str]:
    """Decoded samples (float, -1..1), sample rate, channels and format of a clip."""
    info = soundfile.info(str(path))
    audio, rate = soundfile.read(str(path), dtype="float64")
    return audio, rate, info.channels, f"{info.format}/{info.subtype}"


def check_png(path: Path) -> tuple[int, ...]:
    from matplotlib.image import imread

    image = imread(path)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 300
    assert image[..., :3].std() > 0.01  # something is drawn
    return image.shape


def test_real_clip_renders_ogg_and_png(tmp_path: Path, real_notes: pd.DataFrame) -> None:
    out = render.render_clip(real_notes, tmp_path / "clips" / "real-0", seconds=6.0)
    assert out == {
        "audio": tmp_path / "clips" / "real-0.ogg",
        "png": tmp_path / "clips" / "real-0.png",
    }
    audio, rate, channels, kind = read_audio(out["audio"])
    assert (rate, channels, kind) == (22050, 1, "OGG/VORBIS")
    assert len(audio) == 6 * 22050
    assert abs(np.abs(audio).max() - render.PEAK) < 0.05  # peak-normalised (lossy codec)
    assert np.sqrt(np.mean(audio**2)) > 0.01  # not silent
    check_png(out["png"])
    assert sorted(p.name for p in out["audio"].parent.iterdir()) == ["real-0.ogg", "real-0.png"]
    # 16-bit PCM would be 2 bytes per sample: Vorbis is several times smaller
    assert out["audio"].stat().st_size < 6 * 22050 * 2 / 4
    again = render.render_clip(real_notes, tmp_path / "again" / "real-0", seconds=6.0)
    assert again["audio"].read_bytes() == out["audio"].read_bytes()  # reproducible bytes


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
    audio, rate, _, _ = read_audio(tmp_path / "a.ogg")
    assert rate == 16000 and len(audio) == 32000
    # a sampled piano is not the sine rendering of the same notes
    assert np.corrcoef(audio[: len(sine[:32000])], sine[:32000])[0, 1] < 0.9


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
    audio, rate, _, _ = read_audio(out["audio"])
    assert len(audio) == 3 * rate
    assert np.sqrt(np.mean(audio**2)) > 0.01
    # pretty_midi's own sine synthesis of the cropped notes, normalised, through Vorbis
    sine = render.to_pretty_midi(render.crop(real_notes, 3.0)).synthesize(fs=rate)[: 3 * rate]
    expected = sine / np.abs(sine).max() * render.PEAK
    assert np.corrcoef(audio, expected)[0, 1] > 0.99
    assert np.sqrt(np.mean((audio - expected) ** 2)) < 0.05 * np.sqrt(np.mean(expected**2))
    check_png(out["png"])


def test_default_length_is_last_note_plus_release(tmp_path: Path) -> None:
    notes = pd.DataFrame(
        {"pitch": [60, 64], "velocity": [90, 60], "start": [0.0, 0.5], "end": [1.0, 1.25]}
    )
    out = render.render_clip(notes, tmp_path / "x", sample_rate=8000)
    audio, rate, _, _ = read_audio(out["audio"])
    assert len(audio) == int((1.25 + render.RELEASE_S) * 8000)


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
    audio, _, _, _ = read_audio(out["audio"])
    assert len(audio) == 12000 and np.abs(audio).max() < 1e-4
    assert out["png"].stat().st_size > 0


def test_failed_render_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*args: object, **kwargs: object) -> None:
        raise RuntimeError("disk full")

    notes = pd.DataFrame({"pitch": [60], "velocity": [80], "start": [0.0], "end": [0.5]})
    monkeypatch.setattr(render, "write_piano_roll", boom)
    with pytest.raises(RuntimeError):
        render.render_clip(notes, tmp_path / "f", seconds=1.0, sample_rate=8000)
    assert [p.name for p in tmp_path.iterdir()] == ["f.ogg"]  # complete audio, no temp files
    with pytest.raises(ValueError, match="seconds"):
        render.render_clip(notes, tmp_path / "g", seconds=0)
