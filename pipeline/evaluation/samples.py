"""The samples half of `evaluate`: generate clips, cut them, judge them against real music.

For one model this draws ``evaluate.n_samples`` clips with the model's sampling
settings (params ``sample.<model>``, `SampleParams`), keeps only what the model wrote
(`pipeline.evaluation.clips.written`: a primer is cut away), and compares them with
as many real clips of the test split, cut from the same place in a piece:

- the Yang & Lerch overlapping areas (`pipeline.evaluation.metrics.compare_sets`),
  with bootstrap intervals (`metrics.oa_intervals`);
- find the fake (`pipeline.evaluation.c2st`): a classifier's cross-validated accuracy
  at telling the generated clips from the real ones, with its 95% interval (0.5: it
  cannot tell; 1.0: every fake caught), and the same test with real against real
  (train-split clips against the test clips) as the control that shows what "cannot
  tell" looks like on this data.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.evaluation.params import EvaluateParams, SampleParams

if TYPE_CHECKING:
    import pandas as pd

    from pipeline.modeling.base import ModelSpec
    from pipeline.representations import StoreData

log = logging.getLogger(__name__)


def generate_clips(
    spec: ModelSpec,
    model: Any,
    store: StoreData,
    ep: EvaluateParams,
    sp: SampleParams,
    own: Mapping[str, Any],
) -> tuple[list[pd.DataFrame], list[str]]:
    """`ep.n_samples` clips of what the model wrote (primer cut), and each one's primer.

    With a primer, each sample continues the opening of its own validation piece: in one
    call when the sampler continues sample i from primer piece i (its
    ``primes_each_sample`` attribute), else one call per sample; without, one call.
    """
    import pandas as pd
    import torch

    from pipeline.evaluation.clips import primers, written
    from pipeline.modeling.sampling import SampleOptions, sampler
    from pipeline.representations import decode_rows

    if ep.n_samples == 0:
        return [], []
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(ep.seed)
    seconds = ep.seconds + (1.0 / 8 if sp.primer_seconds else 0.0)  # room for the grid
    base = SampleOptions(
        temperature=sp.temperature,
        top_k=sp.top_k,
        top_p=sp.top_p,
        seconds=seconds,
        settings=dict(own),
    )
    draw = sampler(spec)
    if sp.primer_seconds > 0:
        opened = primers(store, spec.representation, ep.n_samples, sp.primer_seconds, ep.seed)
        if getattr(draw, "primes_each_sample", False):
            every = pd.concat([primer for _, primer in opened], ignore_index=True)
            rows = draw(model, len(opened), dataclasses.replace(base, primer=every), generator)
        else:
            rows = [
                draw(model, 1, dataclasses.replace(base, primer=primer), generator)[0]
                for _, primer in opened
            ]
        sources = [pid for pid, _ in opened]
    else:
        rows = draw(model, ep.n_samples, base, generator)
        sources = ["" for _ in rows]
    notes = [decode_rows(spec.representation, r, store.params) for r in rows]
    return [written(n, sp.primer_seconds, ep.seconds) for n in notes], sources


def judge(
    generated: list[pd.DataFrame],
    store: StoreData,
    representation: str,
    ep: EvaluateParams,
    offset: float,
) -> tuple[dict[str, Any], list[pd.DataFrame]]:
    """Compare `generated` with real test clips: metrics, intervals, find the fake.

    Returns the ``samples`` summary (see `pipeline.evaluation.evaluate`) and the
    real clips (for writing beside the samples).
    """
    from pipeline.evaluation import metrics
    from pipeline.evaluation.clips import piece_notes, real_clips

    test = piece_notes(store, "test", representation)
    labels, real = real_clips(test, ep.n_real, ep.seconds, offset, ep.seed)
    summary: dict[str, Any] = {
        "n": len(generated),
        "mean_notes": _mean([len(n) for n in generated]),
        "mean_seconds": _mean([_end(n) for n in generated]),
        "seconds": ep.seconds,
        "offset_seconds": offset,
        "n_real": len(real),
        "real_clips": labels,
    }
    if len(real) < ep.n_real:
        log.warning(
            "%d real clips of %g s after %g s in the test split (%d pieces); asked for %d",
            len(real), ep.seconds, offset, len(test), ep.n_real,
        )  # fmt: skip
    if not generated or not real:
        return summary, real
    summary.update(metrics.compare_sets(generated, real))
    summary["pitch_class_profile"] = {
        "generated": metrics.pitch_class_profile(generated),
        "real": metrics.pitch_class_profile(real),
    }
    summary["oa_interval"] = metrics.oa_intervals(generated, real, n_boot=ep.oa_boot, seed=ep.seed)
    train = piece_notes(store, "train", representation)
    _, control = real_clips(train, len(real), ep.seconds, offset, ep.seed)
    summary["fake"] = find_the_fake(generated, real, control, ep)
    return summary, real


def find_the_fake(
    generated: list[pd.DataFrame],
    real: list[pd.DataFrame],
    control: list[pd.DataFrame],
    ep: EvaluateParams,
) -> dict[str, Any]:
    """The classifier two-sample test, generated vs real and (control) train vs test.

    Fewer clips than ``evaluate.fake_folds`` on a side gives one warning line and a
    null score (the rest of the evaluation stands).
    """
    from pipeline.evaluation.c2st import C2stError, c2st

    out: dict[str, Any] = {"folds": ep.fake_folds, "seed": ep.seed}
    for key, other in (("score", generated), ("control", control)):
        try:
            out[key] = c2st(real, other, ep.seconds, folds=ep.fake_folds, seed=ep.seed).as_dict()
        except C2stError as exc:
            log.warning("find the fake (%s): %s", key, exc)
            out[key] = {"error": str(exc)}
    return out


def write_clips(
    folder: Path,
    generated: list[pd.DataFrame],
    real: list[pd.DataFrame],
    seconds: float,
    render: bool,
) -> None:
    """``sample-<i>.mid`` and ``real-<i>.mid`` (with .ogg/.png when `render`)."""
    from pipeline.evaluation.render import render_clip
    from pipeline.midi import notes_to_midi

    folder.mkdir(parents=True, exist_ok=True)
    clips = [(f"sample-{i}", n) for i, n in enumerate(generated)]
    clips += [(f"real-{i}", n) for i, n in enumerate(real)]
    for stem, notes in clips:
        notes_to_midi(notes, folder / f"{stem}.mid")
        if render:
            render_clip(notes, folder / stem, seconds=seconds)


def _end(notes: pd.DataFrame) -> float:
    return float(notes["end"].max()) if len(notes) else 0.0


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values)) if values else math.nan
