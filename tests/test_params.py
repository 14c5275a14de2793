from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pytest

from pipeline.ingest import IngestParams
from pipeline.params import ParamsError, from_mapping, load_list, load_params, require

ROOT = Path(__file__).resolve().parents[1]


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
