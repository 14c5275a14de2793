"""Loading a checkpoint that is not one: a one-line error naming the file and the retrain
command, loaded only with ``weights_only=True`` and never passing on torch's advice to
load it unsafely."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from typer.testing import CliRunner

from pipeline.cli import app
from pipeline.modeling import base
from pipeline.modeling.base import CHECKPOINT_VERSION
from pipeline.modeling.checkpoint import (
    CheckpointError,
    config_from_checkpoint,
    load_checkpoint,
    load_model,
    save_checkpoint,
)


class Smuggled:
    """Unpickles as a call to os.getcwd: code a weights-only load must refuse to run."""

    def __reduce__(self) -> tuple[Callable[[], str], tuple[()]]:
        return (os.getcwd, ())


def _good(path: Path) -> None:
    save_checkpoint(
        {
            "name": "rnn",
            "representation": "tuples",
            "config": {},
            "checkpoint_version": CHECKPOINT_VERSION,
            "state_dict": {"w": torch.arange(4096, dtype=torch.float32)},
        },
        path,
    )


def _text(path: Path) -> None:
    path.write_text("not a checkpoint\n")


def _lfs_pointer(path: Path) -> None:
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 9\n")


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _truncated(path: Path) -> None:
    _good(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _disallowed_global(path: Path) -> None:
    torch.save({"name": "rnn", "state_dict": {}, "payload": Smuggled()}, path)


BROKEN: dict[str, tuple[Callable[[Path], None], str]] = {
    "text": (_text, "not a file torch.save wrote, e.g. text or a pointer file"),
    "lfs pointer": (_lfs_pointer, "not a file torch.save wrote, e.g. text or a pointer file"),
    "empty": (_empty, "the file is empty"),
    "truncated zip": (_truncated, "a damaged or truncated torch.save archive"),
    "disallowed global": (
        _disallowed_global,
        f"it holds a Python object ({os.getcwd.__module__}.getcwd) that Etude does not unpickle",
    ),
}


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_a_broken_file_is_named_with_what_to_do_and_no_unsafe_advice(
    kind: str, tmp_path: Path
) -> None:
    write, reason = BROKEN[kind]
    path = tmp_path / "m" / "model.pt"
    path.parent.mkdir()
    write(path)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(path, "rnn")
    message = str(info.value)
    assert message == (
        f"{path}: not a readable checkpoint ({reason}); "
        f"`etude train rnn --out {path.parent} --fresh` writes it anew"
    )
    assert "weights_only" not in message and "add_safe_globals" not in message
    assert "\n" not in message
    with pytest.raises(CheckpointError) as info:
        load_model(path)  # no name: the command still says what to run
    assert f"`etude train <model> --out {path.parent} --fresh`" in str(info.value)
    assert "weights_only" not in str(info.value)


def test_loading_is_weights_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every load asks torch for weights_only=True: the unsafe load is never tried."""
    seen: list[Any] = []
    real = torch.load

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs.get("weights_only"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    _good(tmp_path / "good.pt")
    assert load_checkpoint(tmp_path / "good.pt", "rnn")["name"] == "rnn"
    _disallowed_global(tmp_path / "bad.pt")
    with pytest.raises(CheckpointError):
        load_checkpoint(tmp_path / "bad.pt")
    assert seen == [True, True]


def test_a_config_that_does_not_fit_names_the_checkpoint_not_params_yaml(tmp_path: Path) -> None:
    spec = base.get("rnn")
    path = tmp_path / "model.pt"
    with pytest.raises(CheckpointError) as info:
        config_from_checkpoint(spec, {"config": {"no_such_key": 1}}, path)
    message = str(info.value)
    assert message.startswith(f"{path}: config does not fit model 'rnn': unknown key ")
    assert "params.yaml" not in message


def test_cli_generate_from_a_text_model_pt_exits_1_naming_it(tmp_path: Path) -> None:
    model_dir = tmp_path / "models" / "rnn"
    model_dir.mkdir(parents=True)
    _text(model_dir / "model.pt")
    result = CliRunner().invoke(
        app, ["generate", "rnn", "--model-dir", str(model_dir), "--out", str(tmp_path / "out")]
    )
    assert result.exit_code == 1
    assert result.output.strip() == (
        f"error: {model_dir / 'model.pt'}: not a readable checkpoint (not a file torch.save "
        f"wrote, e.g. text or a pointer file); `etude train rnn --out {model_dir} --fresh` "
        "writes it anew"
    )
    assert "weights_only" not in result.output and not (tmp_path / "out").exists()
