"""Typed, validated views of params.yaml sections.

This is the only module that reads params.yaml. Each consumer declares a frozen
dataclass for its section; `load_params` checks that every key is known, every
field is present and every value has the declared type, and raises `ParamsError`
with a one-line message naming the offending key otherwise.

Messages built from a mapping begin with ``params.yaml:``; `load_params`, `load_list`
and `default_params` replace that with the file actually read (`params_errors`), so
``--params other.yaml`` or the shipped defaults are named, never a file nobody read.

A params file may begin with ``extends: <path>`` (relative to the file): it then holds
only what differs from that file, merged over it (`merge_params`). A benchmark with one
file per data set (benchmarks/poly2012/datasets/) keeps its shared sections in one
place that way; DVC tracks each file's own keys.
"""

from __future__ import annotations

import dataclasses
import logging
import types
import typing
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin

import yaml

from pipeline.core.config import DEFAULT_PARAMS_FILE, PARAMS_FILE

log = logging.getLogger(__name__)

T = TypeVar("T")


class ParamsError(ValueError):
    """A params.yaml problem, worded for the user (one line, names the key)."""


PREFIX = "params.yaml:"  # how messages built from a mapping begin (`from_mapping`, `_check`)


@contextmanager
def params_errors(path: str | Path = PARAMS_FILE) -> Iterator[None]:
    """Re-raise a ParamsError whose message begins ``params.yaml:`` with the file read instead.

    `path` is the params file as the command was given it (``--params``); it resolves
    as `read_params_file` does, so where the shipped defaults were read they are named.
    A message that already names a file (not found, bad YAML) passes unchanged.
    """
    try:
        yield
    except ParamsError as exc:
        message = str(exc)
        shown = f"{_resolved(Path(path))}:"
        if not message.startswith(PREFIX) or shown == PREFIX:
            raise
        raise ParamsError(shown + message.removeprefix(PREFIX)) from exc


def message_body(exc: ParamsError) -> str:
    """`exc`'s message without its leading ``params.yaml:``, for a mapping that came
    from another file (a store's params.json, a checkpoint), which the caller names."""
    return str(exc).removeprefix(PREFIX).strip()


def _resolved(path: Path) -> Path:
    """The file `resolve_params_file` reads for `path`, without logging the choice."""
    if path == PARAMS_FILE and not path.exists() and DEFAULT_PARAMS_FILE.exists():
        return DEFAULT_PARAMS_FILE
    return path


def resolve_params_file(path: str | Path = PARAMS_FILE) -> Path:
    """`path`, or Etude's shipped defaults when `path` is the default and absent.

    A project's params.yaml is the one place every value is set. Outside a project
    (no params.yaml in the working directory) commands read the copy of the
    repository's params.yaml that ships in the package, so no value has a second,
    code-side default; an explicit `--params` that does not exist stays an error.
    """
    path = Path(path)
    resolved = _resolved(path)
    if resolved != path:
        log.info("no %s here: using Etude's defaults (%s)", path, resolved)
    return resolved


def default_params(section: str, cls: type[T]) -> T:
    """`section` as Etude ships it (the repository's params.yaml), for tools and tests."""
    return load_params(section, cls, DEFAULT_PARAMS_FILE)


EXTENDS = "extends"  # a params file's key naming the file it overrides


def read_params_file(path: str | Path = PARAMS_FILE) -> dict[str, Any]:
    """Parse params.yaml into a dict, over the file it ``extends`` if it names one
    (raises ParamsError on YAML syntax errors, a missing base or a cycle)."""
    return _read_layered(resolve_params_file(path), ())


def _read_layered(path: Path, seen: tuple[Path, ...]) -> dict[str, Any]:
    data = _read_one(path)
    if EXTENDS not in data:
        return data
    base = data.pop(EXTENDS)
    if not isinstance(base, str) or not base.strip():
        raise ParamsError(f"{path}: '{EXTENDS}' must name another params file, got {base!r}")
    target = (path.parent / base).resolve()
    chain = (*seen, path.resolve())
    if target in chain:
        names = " -> ".join(str(p) for p in (*chain, target))
        raise ParamsError(f"{path}: '{EXTENDS}' makes a cycle: {names}")
    if not target.is_file():
        raise ParamsError(f"{path}: '{EXTENDS}: {base}': no such file ({target})")
    return merge_params(_read_layered(target, chain), data)


def merge_params(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """`over` on top of `base`: mappings merge key by key; any other value replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = merge_params(out[key], value)
        else:
            out[key] = value
    return out


def _read_one(path: Path) -> dict[str, Any]:
    try:
        with path.open(encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except FileNotFoundError as exc:
        raise ParamsError(f"{path}: params file not found") from exc
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path}: not valid YAML: {str(exc).splitlines()[0]}") from exc
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: expected a mapping at the top level")
    return data


def get_section(data: Mapping[str, Any], section: str) -> Any:
    """Return `data[a][b]...` for a dotted `section` name like "models.rnn"."""
    node: Any = data
    walked: list[str] = []
    for part in section.split("."):
        walked.append(part)
        if not isinstance(node, Mapping) or part not in node:
            raise ParamsError(f"params.yaml: missing key '{'.'.join(walked)}'")
        node = node[part]
    return node


def load_params(section: str, cls: type[T], path: str | Path = PARAMS_FILE) -> T:
    """Load `section` of params.yaml into the frozen dataclass `cls` (errors name `path`)."""
    with params_errors(path):
        return from_mapping(get_section(read_params_file(path), section), cls, section)


def load_list(
    key: str, allowed: typing.Iterable[str] | None, path: str | Path = PARAMS_FILE
) -> list[str]:
    """Load a top-level list of names (e.g. `sources`), each one of `allowed` (None: any)."""
    with params_errors(path):
        return _check_list(get_section(read_params_file(path), key), key, allowed)


def _check_list(value: Any, key: str, allowed: typing.Iterable[str] | None) -> list[str]:
    allowed = sorted(allowed) if allowed is not None else None
    if not isinstance(value, list) or not value:
        raise ParamsError(f"params.yaml: '{key}' must be a non-empty list of {allowed or 'names'}")
    for item in value:
        if not isinstance(item, str):
            raise ParamsError(f"params.yaml: '{key}' entries must be names, got {item!r}")
        if allowed is not None and item not in allowed:
            raise ParamsError(
                f"params.yaml: '{key}' has unknown entry {item!r}; allowed: {allowed}"
            )
    return value


def from_mapping(raw: Any, cls: type[T], section: str) -> T:
    """Build dataclass `cls` from a mapping, validating keys and types."""
    if not isinstance(raw, Mapping):
        raise ParamsError(f"params.yaml: '{section}' must be a mapping, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ParamsError(
            f"params.yaml: unknown key '{section}.{unknown[0]}'; allowed: {sorted(fields)}"
        )
    values: dict[str, Any] = {}
    for name, field in fields.items():
        key = f"{section}.{name}"
        if name not in raw:
            has_default = (
                field.default is not dataclasses.MISSING
                or field.default_factory is not dataclasses.MISSING
            )
            if has_default:
                continue
            raise ParamsError(f"params.yaml: missing key '{key}'")
        values[name] = _check(raw[name], hints[name], key)
    obj = cls(**values)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ValueError as exc:
            raise ParamsError(f"params.yaml: '{section}': {exc}") from exc
    return obj


def _check(value: Any, hint: Any, key: str) -> Any:
    """`value` if it has type `hint` (a list as a tuple, an int as a float where the hint
    says so, a mapping as its dataclass); else a ParamsError naming `key`."""
    origin = get_origin(hint)
    if origin is Literal:
        return _check_literal(value, hint, key)
    if origin in (typing.Union, types.UnionType):
        return _check_union(value, hint, key)
    if origin in (list, tuple):
        return _check_sequence(value, hint, origin, key)
    if dataclasses.is_dataclass(hint):
        return from_mapping(value, hint, key)
    return _check_scalar(value, hint, key)


def _check_literal(value: Any, hint: Any, key: str) -> Any:
    choices = get_args(hint)
    if value not in choices:
        raise ParamsError(f"params.yaml: '{key}' must be one of {list(choices)}, got {value!r}")
    return value


def _check_union(value: Any, hint: Any, key: str) -> Any:
    """The first member type `value` passes (None where the union allows it); else the
    first member's error."""
    args = get_args(hint)
    if value is None and type(None) in args:
        return None
    errors = []
    for arg in args:
        if arg is type(None):
            continue
        try:
            return _check(value, arg, key)
        except ParamsError as exc:
            errors.append(str(exc))
    raise ParamsError(errors[0] if errors else f"params.yaml: '{key}' has the wrong type")


def _check_sequence(value: Any, hint: Any, origin: Any, key: str) -> Any:
    (inner, *_) = get_args(hint) or (Any,)
    if not isinstance(value, list):
        raise ParamsError(f"params.yaml: '{key}' must be a list, got {value!r}")
    items = [_check(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    return tuple(items) if origin is tuple else items


def _check_scalar(value: Any, hint: Any, key: str) -> Any:
    """bool, int, float (an int becomes a float) and str; any other hint passes."""
    if hint is Any:
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"params.yaml: '{key}' must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"params.yaml: '{key}' must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"params.yaml: '{key}' must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ParamsError(f"params.yaml: '{key}' must be a string, got {value!r}")
        return value
    return value


def require(condition: bool, message: str) -> None:
    """Raise ValueError(message) unless `condition`; for dataclass `validate()` hooks."""
    if not condition:
        raise ValueError(message)
