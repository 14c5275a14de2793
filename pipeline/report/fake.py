"""``fake.html``: the blind "find the fake" listening test.

Each model's generated clip i is paired with its real clip i (same length), the pairs
are shuffled and capped, and the side of the fake is drawn at random; all draws come
from one `random.Random(seed)`, so a seed gives the same page. The clips (Ogg Vorbis,
as evaluate wrote them) are copied under neutral names (``fake/pair-NN-{a,b}.ogg``), so
that no file name gives the answer away.

Each clip also carries the classifier's out-of-fold probability that it is generated
(evaluate's find the fake, `collect.fake_probability`): the classifier "calls" fake the
clip of the pair with the higher one. Like the answer, that guess is only in the page's
embedded answers (`_answer`), which fake.js shows after "Check my answers".
"""

from __future__ import annotations

import logging
import random
import shutil
from dataclasses import dataclass, replace
from pathlib import Path

from pipeline.core.io import atomic_dir
from pipeline.evaluation.audio import SUFFIX, audio_seconds
from pipeline.report.collect import Clip, ModelReport, fake_probability
from pipeline.report.templating import href, render

log = logging.getLogger(__name__)
LENGTH_TOLERANCE_S = 0.05  # a pair whose clips differ more is logged as unfair


@dataclass
class FakePair:
    """One blind pair: the fake is side `fake` ("a" or "b"); `p_a`/`p_b` are the
    classifier's out-of-fold probabilities that side a/b is generated (None: unknown)."""

    a: Clip
    b: Clip
    fake: str
    model: str
    p_a: float | None = None
    p_b: float | None = None


def _candidates(model: ModelReport) -> list[tuple[ModelReport, Clip, Clip]]:
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
        found.append((model, gen, ref))
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
        p_gen, p_ref = fake_probability(model, gen.stem), fake_probability(model, ref.stem)
        if rng.random() < 0.5:
            pairs.append(FakePair(gen, ref, "a", model.name, p_gen, p_ref))
        else:
            pairs.append(FakePair(ref, gen, "b", model.name, p_ref, p_gen))
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
            blinded.append(replace(pair, a=sides["a"], b=sides["b"]))
    return blinded


def classifier_guess(pair: FakePair) -> dict[str, object] | None:
    """The side the classifier calls fake (the higher out-of-fold probability of being
    generated), both probabilities, and whether it is right; None where either
    probability is unknown. A tie is no call ("fake": None), and not right."""
    if pair.p_a is None or pair.p_b is None:
        return None
    side = "a" if pair.p_a > pair.p_b else "b" if pair.p_b > pair.p_a else None
    return {"fake": side, "a": pair.p_a, "b": pair.p_b, "right": side == pair.fake}


def _answer(pair: FakePair) -> dict[str, object]:
    """What the page reveals after "Check my answers" (read by fake.js): which side is
    generated, the clips' names, and the classifier's guess (`classifier_guess`)."""
    return {
        "fake": pair.fake,
        "model": pair.model,
        "a": {"name": pair.a.stem, "real": pair.a.real, "model": pair.model},
        "b": {"name": pair.b.stem, "real": pair.b.real, "model": pair.model},
        "classifier": classifier_guess(pair),
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
