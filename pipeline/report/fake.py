"""``fake.html``: the blind "find the fake" listening test.

Each model's generated clip i is paired with its real clip i (same length), the pairs
are shuffled and capped, and the side of the fake is drawn at random; all draws come
from one `random.Random(seed)`, so a seed gives the same page. The clips (Ogg Vorbis,
as evaluate wrote them) are copied under neutral names (``fake/pair-NN-{a,b}.ogg``), so
that no file name gives the answer away.
"""

from __future__ import annotations

import logging
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

from pipeline.core.io import atomic_dir
from pipeline.evaluation.audio import SUFFIX, audio_seconds
from pipeline.report.collect import Clip, ModelReport
from pipeline.report.templating import href, render

log = logging.getLogger(__name__)
LENGTH_TOLERANCE_S = 0.05  # a pair whose clips differ more is logged as unfair


@dataclass
class FakePair:
    """One blind pair: the fake is side `fake` ("a" or "b")."""

    a: Clip
    b: Clip
    fake: str
    model: str


def _candidates(model: ModelReport) -> list[tuple[str, Clip, Clip]]:
    """The model's (generated i, real i) pairs that both have audio."""
    generated = [c for c in model.clips if not c.real and c.audio is not None]
    real = [c for c in model.clips if c.real and c.audio is not None]
    found = []
    for gen, ref in zip(generated, real, strict=False):
        gen_s, real_s = audio_seconds(gen.audio), audio_seconds(ref.audio)
        if gen_s is not None and real_s is not None and abs(gen_s - real_s) > LENGTH_TOLERANCE_S:
            log.warning(
                "%s: %s (%.2f s) and %s (%.2f s) differ in length; render both with "
                "the same `seconds` for a fair test",
                model.name, gen.stem, gen_s, ref.stem, real_s,
            )  # fmt: skip
        found.append((model.name, gen, ref))
    return found


def fake_pairs(models: list[ModelReport], n_pairs: int, seed: int) -> list[FakePair]:
    """Pair each model's generated clip i with its real clip i, shuffle, cap, hide the side.

    Args:
        models: the models, in report order.
        n_pairs: at most this many pairs; 0 = every pair available.
        seed: seeds the shuffle and each pair's side, in that order.
    """
    rng = random.Random(seed)
    candidates = [pair for m in models for pair in _candidates(m)]
    rng.shuffle(candidates)
    if n_pairs:
        candidates = candidates[:n_pairs]
    pairs = []
    for model, gen, ref in candidates:
        if rng.random() < 0.5:
            pairs.append(FakePair(a=gen, b=ref, fake="a", model=model))
        else:
            pairs.append(FakePair(a=ref, b=gen, fake="b", model=model))
    return pairs


def blind_copies(pairs: list[FakePair], folder: Path) -> list[FakePair]:
    """Copy each pair's clips to `folder/pair-NN-{a,b}.ogg`, so that the audio file
    names on the page (``sample-0.ogg`` vs ``real-0.ogg``) do not give the answer away.

    The folder is replaced atomically; the returned pairs point at the copies.
    """
    blinded = []
    with atomic_dir(folder) as tmp:
        for i, pair in enumerate(pairs):
            sides = {}
            for side, clip in (("a", pair.a), ("b", pair.b)):
                name = f"pair-{i:02d}-{side}{SUFFIX}"
                if clip.audio is not None:
                    shutil.copyfile(clip.audio, tmp / name)
                sides[side] = Clip(clip.stem, folder / name if clip.audio else None, None)
            blinded.append(FakePair(a=sides["a"], b=sides["b"], fake=pair.fake, model=pair.model))
    return blinded


def _answer(pair: FakePair) -> dict[str, object]:
    """What the page reveals after "Check my answers" (read by fake.js)."""
    return {
        "fake": pair.fake,
        "model": pair.model,
        "a": {"name": pair.a.stem, "real": pair.a.real, "model": pair.model},
        "b": {"name": pair.b.stem, "real": pair.b.real, "model": pair.model},
    }


def fake_page(pairs: list[FakePair], page_dir: Path, index_name: str = "index.html") -> str:
    """The blind listening test: pick the generated clip of each pair, then check."""
    sources = [
        [(side, href(c.audio, page_dir) if c.audio else "") for side, c in (("a", p.a), ("b", p.b))]
        for p in pairs
    ]
    return render(
        "fake.html.j2",
        scripts=["fake.js"] if pairs else [],
        title="Etude: find the fake",
        pairs=sources,
        answers=[_answer(p) for p in pairs],
        index_href=href(page_dir / index_name, page_dir),
    )
