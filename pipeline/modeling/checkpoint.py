"""Checkpoint files: save atomically, load safely, rebuild the model from the file alone.

A checkpoint is a plain dict of tensors and Python primitives, so it loads with
``torch.load(path, weights_only=True)`` (no arbitrary unpickling, ever):

* ``name``, ``representation``: the registered model and the store it reads;
* ``checkpoint_version``: `pipeline.modeling.base.CHECKPOINT_VERSION` when written;
* ``config``: ``dataclasses.asdict`` of the model config the weights belong to (after
  the spec's ``prepare``), so sampling needs no params.yaml and no store;
* ``repr_params``: ``dataclasses.asdict`` of the representation params (decode needs them);
* ``step``, ``state_dict``; ``last.pt`` adds the optimizer, scheduler and RNG states.

`pick_device` lives here because every tool that loads a
trained model for sampling (``etude evaluate``, ``generate``, ``interpolate``) needs it.
"""

from __future__ import annotations

import dataclasses
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from pipeline.core.io import atomic_path
from pipeline.modeling.base import CHECKPOINT_VERSION, GenerateError, ModelSpec


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, or from another model or Etude version."""


REQUIRED_KEYS = ("name", "representation", "config", "checkpoint_version", "state_dict")


def pick_device(device: str) -> str:
    """``auto`` -> cuda when torch sees one, else cpu; checks ``cpu``/``cuda``.

    Raises:
        GenerateError: another name, or ``cuda`` without a CUDA device.
    """
    if device not in ("auto", "cpu", "cuda"):
        raise GenerateError(f"--device must be auto, cpu or cuda, got {device!r}")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise GenerateError("--device cuda: torch sees no CUDA device")
    return device


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """Write `payload` with torch.save to a temporary sibling, then rename into place."""
    path = Path(path)
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    return path


def load_checkpoint(
    path: str | Path, name: str | None = None, map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` and check its version and model name.

    Raises:
        CheckpointError: the file is missing or unreadable, lacks a required key, was
            written by another checkpoint version, or holds another model than `name`.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint not found (run the train stage first)")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # torch raises pickle/zip/runtime errors for broken files
        raise CheckpointError(
            f"{path}: not a readable checkpoint ({unreadable_reason(path, exc)}); "
            f"`{retrain_command(path, name)}` writes it anew"
        ) from exc
    if not isinstance(ckpt, dict):
        raise CheckpointError(f"{path}: not an Etude checkpoint (a {type(ckpt).__name__})")
    missing = [k for k in REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path}: not an Etude checkpoint (missing {', '.join(missing)})")
    version = ckpt["checkpoint_version"]
    if version != CHECKPOINT_VERSION:
        raise CheckpointError(
            f"{path}: checkpoint version {version}, this Etude reads version "
            f"{CHECKPOINT_VERSION}; retrain the model (dvc repro train@{ckpt['name']})"
        )
    if name is not None and ckpt["name"] != name:
        raise CheckpointError(f"{path}: holds model '{ckpt['name']}', expected '{name}'")
    return ckpt


def unreadable_reason(path: Path, exc: BaseException) -> str:
    """Why `torch.load(path, weights_only=True)` failed, in Etude's words.

    Torch's own message is not passed on: for a file it will not load safely it advises
    ``weights_only=False`` or allow-listing globals, the unsafe load Etude never does.
    """
    try:
        with path.open("rb") as fh:
            head = fh.read(4)
    except OSError as err:
        return f"cannot read it: {err.strerror or type(err).__name__}"
    if not head:
        return "the file is empty"
    # torch: "Unsupported global: GLOBAL module.name was not an allowed global ..."
    found = re.search(r"GLOBAL (\S+)", str(exc))
    if found and isinstance(exc, pickle.UnpicklingError):
        return f"it holds a Python object ({found.group(1)}) that Etude does not unpickle"
    if not head.startswith(b"PK"):  # torch.save writes a zip archive
        return "not a file torch.save wrote, e.g. text or a pointer file"
    return "a damaged or truncated torch.save archive"


def retrain_command(path: Path, name: str | None) -> str:
    """The command that trains the model anew into the folder of `path`.

    ``--fresh`` because a rerun that resumes a finished last.pt would not rewrite model.pt.
    """
    return f"etude train {name or '<model>'} --out {path.parent} --fresh"


def config_from_checkpoint(spec: ModelSpec, ckpt: dict[str, Any], path: str | Path = "") -> Any:
    """Rebuild the model config dataclass from ``ckpt["config"]`` (validated)."""
    from pipeline.core.params import ParamsError, from_mapping, message_body

    try:
        return from_mapping(ckpt["config"], spec.config_cls, f"{spec.name} checkpoint config")
    except ParamsError as exc:
        why = message_body(exc)  # the checkpoint's, not params.yaml's
        raise CheckpointError(f"{path}: config does not fit model '{spec.name}': {why}") from exc


def repr_params_from_checkpoint(ckpt: dict[str, Any], path: str | Path = "") -> Any:
    """Rebuild the representation params dataclass stored in the checkpoint."""
    from pipeline import representations
    from pipeline.core.params import ParamsError, from_mapping, message_body

    rep = representations.get(ckpt["representation"])
    raw = ckpt.get("repr_params")
    if raw is None:
        raise CheckpointError(f"{path}: checkpoint has no repr_params")
    try:
        return from_mapping(raw, rep.params_cls, f"{rep.name} checkpoint repr_params")
    except ParamsError as exc:
        why = message_body(exc)
        raise CheckpointError(f"{path}: repr_params do not fit '{rep.name}': {why}") from exc


def load_model(
    path: str | Path, name: str | None = None, device: str | torch.device = "cpu"
) -> tuple[Any, ModelSpec, dict[str, Any]]:
    """Load a checkpoint and rebuild its model in eval mode on `device`.

    Returns:
        (model, spec, checkpoint dict).
    """
    from pipeline.modeling.base import get

    ckpt = load_checkpoint(path, name, map_location=device)
    try:
        spec = get(ckpt["name"])
    except KeyError as exc:
        raise CheckpointError(f"{path}: {exc.args[0]}") from exc
    config = config_from_checkpoint(spec, ckpt, path)
    model = spec.model_cls(config)
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0][:300]
        raise CheckpointError(f"{path}: weights do not fit the stored config ({first})") from exc
    model.to(device)
    model.eval()
    return model, spec, ckpt


def describe(config: Any) -> dict[str, Any]:
    """``dataclasses.asdict`` as plain dicts and lists; ``{}`` for None."""
    if config is None:
        return {}
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return _plain(dataclasses.asdict(config))
    if isinstance(config, dict):
        return _plain(dict(config))
    raise TypeError(f"cannot describe {type(config).__name__} as a dict")


def _plain(value: Any) -> Any:
    """Tuples become lists, so `pipeline.core.params.from_mapping` reads the dict back."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
