"""The training loop's dvclive curves: files only, on rank 0.

At every evaluation `log_live` writes the training terms averaged since the last
evaluation (``train/<term>``), the validation terms (``val/<term>``) and the learning
rate to ``live_dir/plots/metrics/**.tsv`` and the latest values to
``live_dir/metrics.json``. dvclive never touches git, a DVC repository, dvc.yaml or
experiments here: the train stage's outputs are these files, and DVC tracks them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.modeling.distributed import Dist


def open_live(live_dir: Path, resume_step: int | None, dist: Dist) -> Any:
    """dvclive's ``Live`` on rank 0 (None on the others), writing files only.

    Resumed curves are cut back to the checkpoint's step so that the replayed steps
    are not logged twice.
    """
    if not dist.is_main:
        return None
    from dvclive import Live

    live_dir = Path(live_dir).absolute()
    live_dir.mkdir(parents=True, exist_ok=True)
    if resume_step is not None:
        truncate_curves(live_dir, resume_step)
    with _outside_any_repository():
        return Live(
            dir=str(live_dir),
            resume=resume_step is not None,
            save_dvc_exp=False,
            dvcyaml=None,
            report=None,
        )


@contextlib.contextmanager
def _outside_any_repository() -> Iterator[None]:
    """The filesystem root as working directory while dvclive starts.

    ``Live()`` opens the DVC repository around the working directory even with
    ``save_dvc_exp=False, dvcyaml=None``: in a git repository without DVC it runs
    ``dvc init`` (and stages its files), and in one without commits it fails ("Empty
    git repo"). Started from the root (with an absolute ``dir``) it finds no
    repository, so it only writes its files; nothing else reads the working directory
    meanwhile (training runs no other thread).
    """
    here = os.getcwd()
    os.chdir(Path(here).anchor or os.sep)
    try:
        yield
    finally:
        os.chdir(here)


def truncate_curves(live_dir: Path, step: int) -> None:
    """Drop the rows after `step` from every curve under `live_dir`."""
    for tsv in (live_dir / "plots" / "metrics").rglob("*.tsv"):
        lines = tsv.read_text().splitlines()
        if not lines:
            continue
        header, rows = lines[0], lines[1:]
        columns = header.split("\t")
        if "step" not in columns:
            continue
        at = columns.index("step")
        kept = [r for r in rows if int(float(r.split("\t")[at])) <= step]
        tsv.write_text("\n".join([header, *kept]) + "\n")


def log_live(
    live: Any,
    step: int,
    sums: dict[str, float],
    weight: float,
    val: dict[str, float],
    lr: float,
) -> None:
    """One evaluation's point of every curve, and the latest values in metrics.json."""
    live.step = step
    for key, value in sums.items():
        live.log_metric(f"train/{key}", value / max(weight, 1e-12))
    for key, value in val.items():
        live.log_metric(f"val/{key}", value)
    live.log_metric("lr", lr)
    live.make_summary()
