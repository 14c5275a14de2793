"""The combined table (`pipeline.report.tables`): data sets' tables side by side."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.report.table import TableError
from pipeline.report.tables import (
    TablesParams,
    cell_text,
    combine,
    markdown,
    read_tables,
    row_name,
)

PARAMS = TablesParams("Four data sets", {"piano_midi": "Piano-midi.de", "jsb": "JSB Chorales"})


def row(model: str, nll: float, source: str = "published", **kw: Any) -> dict[str, Any]:
    base = {"model": model, "frame_nll": nll, "source": source, "citation": f"cite {model}"}
    base.update({"bound": False, "n_seeds": None, "min": None, "max": None, "seed": None})
    return {**base, **kw}


def table(*rows: dict[str, Any]) -> dict[str, Any]:
    return {
        "title": "t",
        "split": "test",
        "frames": 10,
        "measured": {"date": "d"},
        "rows": list(rows),
    }


def test_rows_line_up_across_data_sets_whatever_the_seed_counts() -> None:
    jsb = table(
        row("RNN-NADE (HF)", 5.56),
        row("Etude FT (median of 5)", 4.6, "etude", n_seeds=5, min=4.5, max=4.7),
        row("Etude FT (best of 5 by validation)", 4.55, "etude", n_seeds=5, seed=2),
    )
    piano = table(
        row("RNN-NADE (HF)", 7.05),
        row("Etude FT (median of 3)", 7.5, "etude", n_seeds=3, min=7.4, max=7.6),
        row("BALSTM (median of 5)", 7.0),  # a published median keeps its name
    )
    out = combine({"piano_midi": piano, "jsb": jsb}, PARAMS)
    rows = {r["model"]: r for r in out["rows"]}
    assert set(rows) == {
        "RNN-NADE (HF)",
        "Etude FT (median)",
        "Etude FT (best by validation)",
        "BALSTM (median of 5)",
    }
    assert rows["Etude FT (median)"]["cells"] == {
        "piano_midi": {"frame_nll": 7.5, "min": 7.4, "max": 7.6, "n_seeds": 3, "seed": None},
        "jsb": {"frame_nll": 4.6, "min": 4.5, "max": 4.7, "n_seeds": 5, "seed": None},
    }
    assert rows["BALSTM (median of 5)"]["cells"]["jsb"] is None
    assert cell_text(rows["Etude FT (median)"]["cells"]["jsb"]) == "4.600 (4.500–4.700, 5 seeds)"
    assert cell_text(rows["Etude FT (best by validation)"]["cells"]["jsb"]) == "4.550 (seed 2 of 5)"
    assert out["missing"] == [] and [c["dataset"] for c in out["columns"]] == ["piano_midi", "jsb"]
    text = markdown(out)
    assert text.splitlines()[0] == "| Model | Piano-midi.de | JSB Chorales | Kind | Source |"
    assert "| RNN-NADE (HF) | 7.050 | 5.560 | exact | published |" in text
    assert "| BALSTM (median of 5) | 7.000 | — | exact | published |" in text


def test_rows_are_ordered_by_mean_rank() -> None:
    out = combine(
        {
            "jsb": table(row("A", 3.0), row("B", 2.0)),
            "piano_midi": table(row("A", 1.0), row("B", 2.0)),
        },
        PARAMS,
    )
    assert [r["model"] for r in out["rows"]] == ["A", "B"]  # tied ranks: by name
    out = combine({"jsb": table(row("A", 3.0), row("B", 2.0))}, PARAMS)
    assert [r["model"] for r in out["rows"]] == ["B", "A"]


def test_a_row_with_two_protocols_is_refused() -> None:
    with pytest.raises(TableError, match=r"jsb: row 'TCN' is exact, frames 2..T here but exact"):
        combine(
            {
                "piano_midi": table(row("TCN", 3.0)),
                "jsb": table(row("TCN", 8.1, first_frame=False)),
            },
            PARAMS,
        )


def test_missing_data_sets_are_columns_that_say_so(tmp_path: Path) -> None:
    (tmp_path / "jsb.json").write_text(json.dumps(table(row("A", 5.0))))
    out = combine(read_tables(tmp_path, PARAMS.datasets), PARAMS)
    assert out["missing"] == ["piano_midi"]
    assert markdown(out).splitlines()[0].startswith("| Model | Piano-midi.de (not run yet) |")


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({}, r"no table of any of \['piano_midi', 'jsb'\]"),
        ({"jsb.json": "{"}, r"jsb.json: not a table"),
    ],
)
def test_bad_folders_name_the_file(tmp_path: Path, files: dict[str, str], message: str) -> None:
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    with pytest.raises(TableError, match=message):
        read_tables(tmp_path, PARAMS.datasets)


def test_row_name() -> None:
    assert row_name(row("Etude X (median of 12)", 1.0, "etude")) == "Etude X (median)"
    assert row_name(row("X (best of 5)", 1.0)) == "X (best of 5)"
