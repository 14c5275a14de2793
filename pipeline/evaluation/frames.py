"""The `frames` stage: the frame NLL of a trained model (``etude frames <model>``).

Used by the JSB Chorales benchmark (``benchmarks/jsb``). The metric, its errors and
params live in `pipeline.modeling.frames`; each model family that defines a
probability of frames has a ``pipeline.modeling.<store>.frames`` module (prv: exact,
every piece scored whole; events: an upper bound), and a model without one is refused
with a message saying so.

The frame grid is read from a store's params.json, never from params.yaml: a prv
model's own store sets it; an events store has none, so ``--grid`` names the store
whose grid the frames follow (the benchmark's prv store).

The result also holds the validation split's frame NLL (``validation_frame_nll``,
``validation_frames``, ``validation_pieces``), so that the table can pick a "best" seed
without looking at test; it costs a second pass over the model, about the validation
split's share of the stage's scoring time. ``--reference`` (a data set's own rolls,
`pipeline.sources.poly2012`) scores a prv model against those rolls, after refusing a
pitch window that cannot hold one of their pitches and checking the store cell for
cell; an events model must count the same frames. Without it nothing changes.
"""

from __future__ import annotations

import dataclasses
import datetime
import importlib
import importlib.util
import inspect
import json
import os
import platform
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from pipeline.core.config import PARAMS_FILE
from pipeline.core.stage_utils import user_errors
from pipeline.modeling.frames import UNIT, FrameError, FramesParams

if TYPE_CHECKING:
    from pipeline.modeling.base import ModelSpec, StoreData
    from pipeline.sources.poly2012 import Reference


def score_model(
    spec: ModelSpec,
    model: Any,
    store: StoreData,
    params: FramesParams,
    *,
    steps_per_second: float | None = None,
    reference: Reference | None = None,
    validation: bool = False,
) -> dict[str, Any]:
    """The frame NLL of `model` on ``params.split`` of `store`, with what it is.

    Each model family that defines a probability of frames has a
    ``pipeline.modeling.<store>.frames`` module whose ``score(model, store, params,
    steps_per_second=...)`` returns ``{"frame_nll", "bound", "unit", "method", "split",
    "pieces", "frames", ...}``: prv models add ``frame_nll_windowed`` (the same model
    scored on `etude evaluate`'s windows) and ``note_unigram`` (the per-key frequency
    baseline of the same store); events models ``tokens`` and ``nats_per_token``. Here:
    which module, and its errors as one-line `FrameError`s. The families score in
    `eval_mode`.

    Args:
        steps_per_second: the frame grid from another store (`grid_of`); None for a
            model whose store has its own (prv). A prv store must have the same.
        reference: the data set's own rolls (`pipeline.sources.poly2012.read_reference`).
            A family that scores rolls (prv) scores against them, after refusing a
            pitch window that cannot hold a frame and checking the store cell for cell;
            another (events, a bound on whole pieces) must count the same frames. The
            result then says which data set (``reference``).
        validation: also score the validation split, for choosing among seeds without
            looking at test: ``validation_frame_nll``, ``validation_frames``,
            ``validation_pieces`` (the same numbers when ``params.split`` is validation).

    Raises:
        FrameError: the model's family has no frame probability, or no grid to score on,
            or a grid that is not its store's; with a reference, a window too narrow for
            the data set, a store that is not its frames, or another frame count.
    """
    family = f"pipeline.modeling.{spec.representation}.frames"
    if importlib.util.find_spec(family) is None:
        raise FrameError(
            f"model {spec.name!r} ({spec.representation} store) defines no probability of "
            "frames (prv and events models do)"
        )
    module = importlib.import_module(family)
    window = params.window.get(spec.name, 0)
    if window and "window" not in inspect.signature(module.score).parameters:
        raise FrameError(
            f"frames.window.{spec.name}: {spec.representation} models are scored on whole "
            "pieces only (sliding windows are the prv models'); leave it out"
        )
    result = _score(module, model, store, params, steps_per_second, reference, window)
    if validation:
        held_out = (
            result
            if params.split == "validation"
            else _score(
                module,
                model,
                store,
                dataclasses.replace(params, split="validation"),
                steps_per_second,
                reference,
                window,
            )
        )
        result["validation_frame_nll"] = held_out["frame_nll"]
        result["validation_frames"] = held_out["frames"]
        result["validation_pieces"] = held_out["pieces"]
    if reference is not None:
        result["reference"] = {
            "dataset": reference.dataset,
            "sha256": reference.meta.get("sha256"),
            "frames": reference.frames(params.split),
        }
    return result


def _score(
    module: Any,
    model: Any,
    store: StoreData,
    params: FramesParams,
    steps_per_second: float | None,
    reference: Reference | None,
    window: int = 0,
) -> dict[str, Any]:
    """One split scored by the family's module; its errors as one line (`score_model`)."""
    takes_reference = "reference" in inspect.signature(module.score).parameters
    kw: dict[str, Any] = {"steps_per_second": steps_per_second}
    if window:
        kw["window"] = window
    if reference is not None and takes_reference:
        kw["reference"] = reference
    try:  # a grid or pitch window that does not fit, a missing split or column: one line
        result = module.score(model, store, params, **kw)
        if reference is not None and not takes_reference:
            want = reference.frames(params.split)
            if result["frames"] != want:
                raise FrameError(
                    f"{reference.dataset}: {result['frames']} {params.split} frames scored, "
                    f"the data set has {want}: the store is not the data set's frames"
                )
        return result
    except FrameError:
        raise
    except (ValueError, KeyError) as exc:
        raise FrameError(_message(exc)) from exc


def grid_of(store_dir: Path) -> float:
    """The frame grid (``steps_per_second``) recorded in a store's params.json.

    Read as JSON, without the store's representation module, so that scoring an events
    model on a prv store's grid loads no prv code.
    """
    path = Path(store_dir) / "params.json"
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise FrameError(f"{path}: missing (rebuild the store with `etude represent`)") from None
    except json.JSONDecodeError as exc:
        raise FrameError(f"{path}: not valid JSON ({exc})") from exc
    grid = (meta.get("params") or {}).get("steps_per_second")
    if isinstance(grid, bool) or not isinstance(grid, (int, float)) or not grid > 0:
        raise FrameError(
            f"{path}: no frame grid (params.steps_per_second > 0; a prv store has one), "
            f"got {grid!r}"
        )
    return float(grid)


def load_reference(path: Path) -> Reference:
    """The reference rolls at `path` (`pipeline.sources.poly2012`), its errors as FrameError.

    Imported here only: a frames stage without ``--reference`` loads no source code.
    """
    from pipeline.sources.poly2012 import ReferenceRollError, read_reference

    try:
        return read_reference(path)
    except ReferenceRollError as exc:
        raise FrameError(str(exc)) from None


def _message(exc: BaseException) -> str:
    """The error's text (a KeyError's own str() would add quotes around it)."""
    return str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)


def frames_command(
    name: Annotated[str, typer.Argument(help="Model name (its registered name).")],
    store: Annotated[Path, typer.Option(help="The model's representation store.")],
    model_dir: Annotated[Path, typer.Option(help="Folder of the trained model.pt.")],
    out: Annotated[Path, typer.Option(help="Result JSON (written atomically).")],
    grid: Annotated[
        Path | None,
        typer.Option(
            help="Store whose params.json sets the frame grid (steps_per_second): needed "
            "for events models; a prv model's store has its own, which must match."
        ),
    ] = None,
    reference: Annotated[
        Path | None,
        typer.Option(
            help="The data set's own rolls (reference.npz, or the raw folder `etude fetch "
            "poly2012` wrote it in): scored against them, after refusing a pitch window that "
            "cannot hold a frame and checking the store cell for cell."
        ),
    ] = None,
    params: Annotated[Path, typer.Option("--params", help="params.yaml to read.")] = PARAMS_FILE,
) -> None:
    """Frame NLL (nats per frame over 88 keys) of trained model NAME: exact or a bound.

    Scores ``frames.split`` and, for choosing among seeds, the validation split.
    """
    import torch

    from pipeline.core.io import write_json
    from pipeline.core.params import load_params
    from pipeline.modeling.base import model_spec
    from pipeline.modeling.checkpoint import CheckpointError, load_model, pick_device
    from pipeline.representations import RepresentError, load_store

    with user_errors(FrameError, CheckpointError, RepresentError):
        p = load_params("frames", FramesParams, params)
        if p.num_threads:
            torch.set_num_threads(p.num_threads)
        steps_per_second = grid_of(grid) if grid is not None else None
        ref = load_reference(reference) if reference is not None else None
        spec = model_spec(name)
        model, spec, ckpt = load_model(model_dir / "model.pt", name, pick_device(p.device))
        data = load_store(store, spec.representation)
        result = {
            "model": name,
            "run": out.stem,
            "seed": (ckpt.get("train_params") or {}).get("seed"),
            "step": ckpt.get("step"),
            **score_model(
                spec,
                model,
                data,
                p,
                steps_per_second=steps_per_second,
                reference=ref,
                validation=True,
            ),
            "scored_on": datetime.date.today().isoformat(),
            "machine": machine(next(model.parameters()).device),
        }
        write_json(out, result)
        kind = "upper bound" if result["bound"] else "exact"
        typer.echo(
            f"{out.stem}: frame NLL {result['frame_nll']:.4f} {UNIT} ({kind}; validation "
            f"{result['validation_frame_nll']:.4f}) -> {out}"
        )


def machine(device: Any) -> str:
    """What ran this: CPU model and cores (or the CUDA device), for the table's record."""
    import torch

    if getattr(device, "type", str(device)) == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"
