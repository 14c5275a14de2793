from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from pipeline.core.params import (
    ParamsError,
    from_mapping,
    get_section,
    load_list,
    load_params,
    read_params_file,
    require,
)
from pipeline.ingest import IngestParams

ROOT = Path(__file__).resolve().parents[2]  # tests/core/ -> the repository


@dataclass(frozen=True)
class Example:
    name: str
    count: int
    rate: float
    mode: Literal["a", "b"]
    flags: list[str]
    optional: int | None = None

    def validate(self) -> None:
        require(self.count >= 0, "count must be >= 0")


GOOD = {"name": "x", "count": 3, "rate": 1, "mode": "a", "flags": ["f"]}


def test_valid_mapping_builds_frozen_dataclass():
    obj = from_mapping(GOOD, Example, "ex")
    assert obj == Example("x", 3, 1.0, "a", ["f"], None)
    assert isinstance(obj.rate, float)
    with pytest.raises(AttributeError):
        obj.count = 4  # type: ignore[misc]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"extra": 1}, "unknown key 'ex.extra'"),
        ({"count": "3"}, "'ex.count' must be an integer"),
        ({"count": True}, "'ex.count' must be an integer"),
        ({"rate": "fast"}, "'ex.rate' must be a number"),
        ({"mode": "c"}, "'ex.mode' must be one of ['a', 'b']"),
        ({"flags": "f"}, "'ex.flags' must be a list"),
        ({"flags": [1]}, "'ex.flags[0]' must be a string"),
        ({"count": -1}, "count must be >= 0"),
    ],
)
def test_bad_values_name_the_key(change, message):
    with pytest.raises(ParamsError) as info:
        from_mapping({**GOOD, **change}, Example, "ex")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_missing_key_is_named():
    raw = dict(GOOD)
    del raw["rate"]
    with pytest.raises(ParamsError, match="missing key 'ex.rate'"):
        from_mapping(raw, Example, "ex")


def test_load_params_reads_dotted_sections(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text(
        "models:\n  rnn:\n    name: x\n    count: 1\n    rate: 0.5\n    mode: b\n    flags: []\n"
    )
    assert load_params("models.rnn", Example, path).mode == "b"
    with pytest.raises(ParamsError, match="missing key 'models.vae'"):
        load_params("models.vae", Example, path)


def test_yaml_syntax_error_is_one_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("a: [1, 2\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params("a", Example, path)


def test_load_list_rejects_unknown_entries(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("sources: [corpus, napster]\n")
    with pytest.raises(ParamsError, match="unknown entry 'napster'"):
        load_list("sources", ["corpus", "maestro", "lakh"], path)


def test_project_params_file_loads():
    """The committed params.yaml parses into every section's dataclass."""
    settings = load_params("ingest", IngestParams, ROOT / "params.yaml")
    assert 0 <= settings.max_reject_rate <= 1
    assert load_list("sources", ["corpus", "maestro", "lakh"], ROOT / "params.yaml")


# --- one source of defaults ---------------------------------------------------------------


def test_the_package_ships_the_repository_params_file():
    from pipeline.core.config import DEFAULT_PARAMS_FILE

    assert DEFAULT_PARAMS_FILE.read_bytes() == (ROOT / "params.yaml").read_bytes()


def test_outside_a_project_commands_read_the_shipped_defaults(tmp_path, monkeypatch):
    """No params.yaml in the working directory: the shipped one; an explicit path must exist."""
    from pipeline.core.config import PARAMS_FILE
    from pipeline.core.params import read_params_file

    monkeypatch.chdir(tmp_path)
    assert read_params_file(PARAMS_FILE) == read_params_file(ROOT / "params.yaml")
    (tmp_path / "params.yaml").write_text("ingest: {}\n")
    assert read_params_file(PARAMS_FILE) == {"ingest": {}}  # the project's own file wins
    with pytest.raises(ParamsError, match="elsewhere.yaml: params file not found"):
        read_params_file(tmp_path / "elsewhere.yaml")


def _sections() -> list[tuple[str, type]]:
    """Every params section a stage reads, with its dataclass."""
    from pipeline import representations, sources
    from pipeline.evaluation.evaluate import EvaluateParams
    from pipeline.modeling import base
    from pipeline.report.stage import ReportParams
    from pipeline.validation import ValidateParams

    data = read_params_file(ROOT / "params.yaml")
    found = [
        ("ingest", IngestParams),
        ("validate", ValidateParams),
        ("evaluate", EvaluateParams),
        ("report", ReportParams),
        ("train", base.TrainParams),
    ]
    found += [(s, sources.get(s).params_cls) for s in sources.names() if s in data]
    found += [(r, representations.get(r).params_cls) for r in representations.names()]
    found += [(f"models.{m}", base.get(m).config_cls) for m in base.names()]
    return found


def test_no_params_yaml_key_has_a_second_default_in_code():
    """A key that params.yaml sets has no dataclass default: a missing key is an error
    naming it, never a silent fallback to a value written somewhere else."""
    import dataclasses

    data = read_params_file(ROOT / "params.yaml")
    doubled = []
    for section, cls in _sections():
        keys = set(get_section(data, section))
        for field in dataclasses.fields(cls):
            has_default = (
                field.default is not dataclasses.MISSING
                or field.default_factory is not dataclasses.MISSING
            )
            if field.name in keys and has_default:
                doubled.append(f"{section}.{field.name}")
    assert not doubled, f"defaults written twice (params.yaml and code): {doubled}"


@pytest.mark.parametrize("section", [s for s, _ in _sections()])
def test_a_missing_key_names_itself(section):
    data = read_params_file(ROOT / "params.yaml")
    cls = dict(_sections())[section]
    raw = dict(get_section(data, section))
    raw.pop("representation", None)
    raw.pop("network", None)
    raw.pop("train", None) if section.startswith("models.") else None
    key = next(iter(raw))
    del raw[key]
    with pytest.raises(ParamsError, match=f"missing key '{section}.{key}'"):
        from_mapping(raw, cls, section)


# --- errors name the file actually read ---------------------------------------------------


def test_load_params_names_the_file_given_not_params_yaml(tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text("ex: {name: x, count: 1, rate: 1, mode: a, flags: [], colour: red}\n")
    with pytest.raises(ParamsError) as info:
        load_params("ex", Example, other)
    assert str(info.value) == (
        f"{other}: unknown key 'ex.colour'; allowed: "
        "['count', 'flags', 'mode', 'name', 'optional', 'rate']"
    )
    with pytest.raises(ParamsError) as info:
        load_params("nope", Example, other)
    assert str(info.value) == f"{other}: missing key 'nope'"
    other.write_text("ex: {name: x, count: -1, rate: 1, mode: a, flags: []}\n")
    with pytest.raises(ParamsError) as info:
        load_params("ex", Example, other)
    assert str(info.value) == f"{other}: 'ex': count must be >= 0"


def test_load_list_names_the_file_given(tmp_path):
    other = tmp_path / "other.yaml"
    other.write_text("sources: [corpus, napster]\n")
    with pytest.raises(ParamsError) as info:
        load_list("sources", ["corpus"], other)
    assert str(info.value) == f"{other}: 'sources' has unknown entry 'napster'; allowed: ['corpus']"
    other.write_text("sources: []\n")
    with pytest.raises(ParamsError) as info:
        load_list("sources", None, other)
    assert str(info.value) == f"{other}: 'sources' must be a non-empty list of names"


def test_params_errors_names_the_shipped_defaults_where_they_were_read(tmp_path, monkeypatch):
    from pipeline.core.config import DEFAULT_PARAMS_FILE, PARAMS_FILE
    from pipeline.core.params import params_errors

    monkeypatch.chdir(tmp_path)  # no params.yaml here: the shipped file is read
    with pytest.raises(ParamsError) as info, params_errors(PARAMS_FILE):
        raise ParamsError("params.yaml: missing key 'x'")
    assert str(info.value) == f"{DEFAULT_PARAMS_FILE}: missing key 'x'"
    (tmp_path / "params.yaml").write_text("x: 1\n")  # the project's own file: named as is
    with pytest.raises(ParamsError) as info, params_errors(PARAMS_FILE):
        raise ParamsError("params.yaml: missing key 'x'")
    assert str(info.value) == "params.yaml: missing key 'x'"
    with pytest.raises(ParamsError) as info, params_errors("b.yaml"):
        raise ParamsError("a.yaml: not valid YAML")  # already names its file: unchanged
    assert str(info.value) == "a.yaml: not valid YAML"
    with pytest.raises(KeyError), params_errors("b.yaml"):
        raise KeyError("params.yaml: other errors pass through")


def test_default_params_errors_name_the_shipped_file():
    from pipeline.core.config import DEFAULT_PARAMS_FILE
    from pipeline.core.params import default_params

    with pytest.raises(ParamsError) as info:
        default_params("ingest", Example)
    assert str(info.value).startswith(f"{DEFAULT_PARAMS_FILE}: unknown key 'ingest.")


def test_cli_names_the_params_file_given(tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli import app

    other = tmp_path / "other.yaml"
    other.write_text("corpus: {collections: [bach], max_files: 0, workers: 1, colour: red}\n")
    out = tmp_path / "raw"
    runner = CliRunner()
    result = runner.invoke(app, ["fetch", "corpus", "--out", str(out), "--params", str(other)])
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {other}: unknown key 'corpus.colour'; allowed: ")
    assert "params.yaml" not in result.output and not out.exists()
    result = runner.invoke(app, ["fetch", "napster", "--out", str(out), "--params", str(other)])
    assert result.exit_code == 1
    assert result.output.startswith(f"error: {other}: 'sources' has unknown entry 'napster'")


# --- extends: a file that holds only what differs from another ----------------------------


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_extends_merges_mappings_and_replaces_other_values(tmp_path):
    _write(
        tmp_path / "params.yaml",
        "ex: {name: x, count: 3, rate: 1.0, mode: a, flags: [f, g]}\nother: {keep: 1}\n",
    )
    child = _write(
        tmp_path / "sets" / "one.yaml", "extends: ../params.yaml\nex: {count: 7, flags: [h]}\n"
    )
    data = read_params_file(child)
    assert "extends" not in data
    assert data["other"] == {"keep": 1}
    assert load_params("ex", Example, child) == Example("x", 7, 1.0, "a", ["h"], None)


def test_extends_chains_and_the_nearest_file_wins(tmp_path):
    _write(tmp_path / "a.yaml", "ex: {name: a, count: 1, rate: 1.0, mode: a, flags: []}\n")
    _write(tmp_path / "b.yaml", "extends: a.yaml\nex: {name: b, count: 2}\n")
    c = _write(tmp_path / "c.yaml", "extends: b.yaml\nex: {count: 3}\n")
    assert load_params("ex", Example, c) == Example("b", 3, 1.0, "a", [], None)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("extends: missing.yaml\n", r"'extends: missing.yaml': no such file"),
        ("extends: 3\n", r"'extends' must name another params file, got 3"),
        ("extends: self.yaml\n", r"'extends' makes a cycle: .*self.yaml -> .*self.yaml"),
    ],
)
def test_a_bad_extends_is_one_line_naming_the_file(tmp_path, text, message):
    path = _write(tmp_path / "self.yaml", text)
    with pytest.raises(ParamsError, match=message) as info:
        read_params_file(path)
    assert str(info.value).startswith(str(path))
    assert "\n" not in str(info.value)


def test_a_cycle_through_two_files_is_refused(tmp_path):
    _write(tmp_path / "a.yaml", "extends: b.yaml\n")
    b = _write(tmp_path / "b.yaml", "extends: a.yaml\n")
    with pytest.raises(ParamsError, match=r"makes a cycle: .*b.yaml -> .*a.yaml -> .*b.yaml"):
        read_params_file(b)


def test_a_missing_key_after_merging_names_the_file_given(tmp_path):
    _write(tmp_path / "base.yaml", "ex: {name: x, count: 3, rate: 1.0, mode: a}\n")
    child = _write(tmp_path / "child.yaml", "extends: base.yaml\n")
    with pytest.raises(ParamsError, match=rf"^{child}: missing key 'ex.flags'"):
        load_params("ex", Example, child)
