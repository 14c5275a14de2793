"""The benchmark table (`etude table`): Etude's runs beside the published rows."""

from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any

import pytest

from pipeline.report.table import (
    ROW_KEYS,
    TableError,
    TableParams,
    build_table,
    kind_text,
    markdown,
    read_published,
    read_runs,
)

ROOT = Path(__file__).resolve().parents[2]
JSB = ROOT / "benchmarks" / "jsb"
PARAMS = TableParams(
    title="JSB test",
    citation="Etude benchmarks/jsb",
    labels={"biaxial": "biaxial LSTM (DeepJ)", "transformer": "Music Transformer"},
)
BIAXIAL = {0: 6.25, 1: 5.5, 2: 7.75}  # seed -> test frame NLL; median 6.25, min 5.5, max 7.75
# seed -> validation frame NLL: the best by validation (seed 0) is not the best on test (seed 1)
BIAXIAL_VALID = {0: 6.0, 1: 6.4, 2: 7.0}
SECONDS = {"biaxial-s0": 61.0, "biaxial-s1": 59.4, "biaxial-s2": 70.0, "poph-s0": 130.25}


def run(model: str, seed: int, nll: float, **extra: Any) -> dict[str, Any]:
    """One frames result as the frames stage writes it."""
    return {
        "model": model,
        "run": f"{model}-s{seed}",
        "seed": seed,
        "step": 600,
        "frame_nll": nll,
        "bound": False,
        "unit": "nats per frame (88 keys)",
        "split": "test",
        "pieces": 77,
        "frames": 4725,
        "scored_on": "2026-12-01",
        "machine": "test CPU, 2 cores",
        **extra,
    }


def valid(nll: float) -> dict[str, Any]:
    """The validation keys the frames stage adds to a result."""
    return {"validation_frame_nll": nll, "validation_frames": 4602, "validation_pieces": 76}


def scored(seed: int, nll: float, validation: float) -> dict[str, Any]:
    """A biaxial run as `read_runs` hands it on (with its training time, unknown here)."""
    return run("biaxial", seed, nll, train_seconds=None, **valid(validation))


def runs() -> list[dict[str, Any]]:
    out = [
        run("biaxial", s, v, note_unigram=11.0589, **valid(BIAXIAL_VALID[s]))
        for s, v in BIAXIAL.items()
    ]
    out.append(run("poph", 0, 6.5, note_unigram=11.0589))
    out.append(run("transformer", 0, 8.9, bound=True, tokens=28000))
    return out


@pytest.fixture
def results(tmp_path: Path) -> tuple[Path, Path]:
    """results/frames/*.json and reports/train/<run>/summary.json (not the transformer's)."""
    folder, reports = tmp_path / "results" / "frames", tmp_path / "reports" / "train"
    folder.mkdir(parents=True)
    for r in runs():
        (folder / f"{r['run']}.json").write_text(json.dumps(r))
        if r["run"] in SECONDS:
            (reports / r["run"]).mkdir(parents=True)
            summary = {"steps": 600, "wall_time_s": SECONDS[r["run"]]}
            (reports / r["run"] / "summary.json").write_text(json.dumps(summary))
    return folder, reports


def published_rows() -> list[dict[str, Any]]:
    none = {k: None for k in ROW_KEYS}
    return [
        {
            **none,
            "model": "RNN-NADE",
            "frame_nll": 5.83,
            "source": "published",
            "citation": "2012",
            "bound": False,
        },
        {
            **none,
            "model": "DMM-Aug-NADE",
            "frame_nll": 5.118,
            "source": "published",
            "citation": "2017",
            "bound": True,
        },
    ]


def test_build_table_rows(results: tuple[Path, Path]) -> None:
    table = build_table(read_runs(*results), published_rows(), PARAMS)
    by_model = {row["model"]: row for row in table["rows"]}
    assert all(tuple(row) == ROW_KEYS for row in table["rows"])

    median = by_model["Etude biaxial LSTM (DeepJ) (median of 3)"]
    assert median["frame_nll"] == statistics.median(BIAXIAL.values()) == 6.25
    assert (median["min"], median["max"], median["n_seeds"]) == (5.5, 7.75, 3)
    assert (median["selected_by"], median["seed"]) == ("median", None)
    assert median["train_seconds"] == statistics.median([61.0, 59.4, 70.0])
    best = by_model["Etude biaxial LSTM (DeepJ) (best of 3 by validation)"]
    assert (best["selected_by"], best["seed"], best["n_seeds"]) == ("validation", 0, 3)
    assert best["frame_nll"] == BIAXIAL[0] == 6.25  # seed 0's test NLL, not the lowest (5.5)
    assert best["min"] is None and best["max"] is None
    assert best["train_seconds"] == 61.0  # the chosen seed's own time
    assert "seeds 0, 1, 2" in best["citation"] and "2026-12-01" in best["citation"]
    assert not any("best of 3)" in m for m in by_model)  # no row chosen on test

    assert by_model["Etude poph"]["frame_nll"] == 6.5  # one seed: one row, no label given
    assert (by_model["Etude poph"]["n_seeds"], by_model["Etude poph"]["min"]) == (1, 6.5)
    assert by_model["Etude poph"]["train_seconds"] == 130.2  # rounded to 0.1 s
    assert not any(m.startswith("Etude poph (") for m in by_model)
    transformer = by_model["Etude Music Transformer"]
    assert transformer["bound"] is True and transformer["train_seconds"] is None
    assert by_model["DMM-Aug-NADE"]["bound"] is True  # published bounds carried
    assert by_model["DMM-Aug-NADE"]["n_seeds"] is None
    unigram = [row for m, row in by_model.items() if m.startswith("Etude Note 1-Gram")]
    assert [row["frame_nll"] for row in unigram] == [11.0589]

    assert {row["source"] for row in table["rows"]} == {"etude", "published"}
    values = [row["frame_nll"] for row in table["rows"]]
    assert (
        values == sorted(values) and len(values) == 2 + 1 + 1 + 1 + 2
    )  # biaxial poph transformer 1-gram, published
    assert (table["split"], table["frames"]) == ("test", 4725)
    assert table["measured"] == {"date": "2026-12-01", "machine": "test CPU, 2 cores"}

    text = markdown(table)
    lines = text.splitlines()
    assert len(lines) == 2 + len(table["rows"]) and text.endswith("\n")
    transformer_line = next(ln for ln in lines if ln.startswith("| Etude Music Transformer |"))
    assert "| 8.900 | upper bound | etude | n/a |" in transformer_line
    poph_line = next(ln for ln in lines if ln.startswith("| Etude poph |"))
    assert "| 6.500 | exact | etude | 2 min 10 s |" in poph_line
    median_line = next(ln for ln in lines if "(median of 3)" in ln)
    assert "| 6.250 (5.500\u20137.750) | exact |" in median_line  # min-max beside the median
    best_line = next(ln for ln in lines if "(best of 3 by validation)" in ln)
    assert "| 6.250 | exact |" in best_line


def test_the_best_seed_is_chosen_on_validation_alone() -> None:
    """Whatever the seeds score on test, the best row is the lowest validation NLL's."""
    for test_nll in ({0: 9.0, 1: 5.0, 2: 7.0}, {0: 5.0, 1: 9.0, 2: 7.0}):
        group = [scored(s, test_nll[s], v) for s, v in {0: 6.1, 1: 6.3, 2: 5.9}.items()]
        rows = {r["model"]: r for r in build_table(group, [], PARAMS)["rows"]}
        best = rows["Etude biaxial LSTM (DeepJ) (best of 3 by validation)"]
        assert (best["seed"], best["frame_nll"]) == (2, 7.0)
        median = rows["Etude biaxial LSTM (DeepJ) (median of 3)"]
        assert (median["frame_nll"], median["min"], median["max"]) == (7.0, 5.0, 9.0)


def test_no_best_row_without_validation_and_none_on_other_validation_data() -> None:
    group = [scored(s, v, BIAXIAL_VALID[s]) for s, v in BIAXIAL.items()]
    del group[1]["validation_frame_nll"]  # scored before the frames stage recorded it
    models = [r["model"] for r in build_table(group, [], PARAMS)["rows"]]
    assert models == ["Etude biaxial LSTM (DeepJ) (median of 3)"]  # no best by test instead
    group = [scored(s, v, BIAXIAL_VALID[s]) for s, v in BIAXIAL.items()]
    group[2]["validation_frames"] = 4601
    with pytest.raises(TableError, match=r"biaxial: runs were validated on different data"):
        build_table(group, [], PARAMS)


def test_a_table_json_without_the_new_keys_prints_as_before() -> None:
    """A table.json written before min/max existed shows its numbers alone."""
    old = {k: v for k, v in _etude_row(6.25).items() if k in ROW_KEYS[:6]}
    text = markdown({"rows": [old]})
    assert "| 6.250 | exact | etude |" in text


def _etude_row(nll: float) -> dict[str, Any]:
    rows = build_table([scored(0, nll, 6.0)], [], PARAMS)["rows"]
    return next(r for r in rows if r["source"] == "etude" and "1-Gram" not in r["model"])


def test_a_row_says_its_sliding_window_and_one_row_is_one_way_of_scoring() -> None:
    group = [scored(s, v, BIAXIAL_VALID[s]) for s, v in BIAXIAL.items()]
    whole = build_table(group, [], PARAMS)["rows"]
    assert all("sliding" not in r["citation"] for r in whole)
    for r in group:
        r["window"] = 64
    rows = build_table(group, [], PARAMS)["rows"]
    median = next(r for r in rows if "(median of 3)" in r["model"])
    assert median["citation"].endswith("seeds 0, 1, 2; scored in sliding windows of 64 steps)")
    group[1]["window"] = 0  # one seed scored whole
    with pytest.raises(
        TableError, match=r"biaxial: runs were scored in different windows \(\[0, 64\]"
    ):
        build_table(group, [], PARAMS)


def test_runs_of_other_data_are_refused() -> None:
    mixed = runs()
    mixed[1]["frames"] = 4724
    with pytest.raises(TableError, match=r"frame counts \[4724, 4725\]"):
        build_table(mixed, [], PARAMS)
    mixed = runs()
    mixed[0]["split"] = "validation"
    with pytest.raises(TableError, match=r"splits \['test', 'validation'\]"):
        build_table(mixed, [], PARAMS)


def test_read_runs_names_a_bad_file(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="no frames results"):
        read_runs(tmp_path, tmp_path)
    (tmp_path / "a.json").write_text(json.dumps({"model": "biaxial", "run": "a"}))
    with pytest.raises(TableError, match=r"a\.json: not a frames result \(no 'frame_nll'\)"):
        read_runs(tmp_path, tmp_path)
    (tmp_path / "a.json").write_text("{")
    with pytest.raises(TableError, match=r"a\.json: not a frames result"):
        read_runs(tmp_path, tmp_path)
    (tmp_path / "a.json").write_text(json.dumps(run("biaxial", 0, "6.0")))  # type: ignore[arg-type]
    with pytest.raises(TableError, match=r"a\.json: frame_nll must be a finite number"):
        read_runs(tmp_path, tmp_path)


ROW = "- model: X\n  frame_nll: 5.5\n  citation: Y\n  bound: false\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (ROW + "- model: Z\n  frame_nll: 5.5\n  citation: Y\n", r"row 1 \(Z\): no 'bound'"),
        (ROW + "- model: Z\n  frame_nll: n/a\n  citation: Y\n  bound: false\n", "row 1 \\(Z\\)"),
        (ROW + "- model: Z\n  frame_nll: true\n  citation: Y\n  bound: false\n", "row 1 \\(Z\\)"),
        (ROW + "- model: Z\n  frame_nll: .nan\n  citation: Y\n  bound: false\n", "row 1 \\(Z\\)"),
        (ROW + "- model: Z\n  frame_nll: 5.5\n  citation: Y\n  bound: maybe\n", "row 1 \\(Z\\)"),
        (ROW + "- model: Z\n  frame_nll: 5.5\n  citation: Y\n  bound: 1\n", "row 1 \\(Z\\)"),
        (ROW + "- model: ''\n  frame_nll: 5.5\n  citation: Y\n  bound: false\n", "row 1"),
        (
            ROW + "- model: Z\n  frame_nll: 5.5\n  citation: Y\n  bound: false\n  first_frame: 0\n",
            r"row 1 \(Z\): first_frame must be true or false",
        ),
        (
            ROW + "- model: Z\n  frame_nll: 6.3\n  citation: Y\n  bound: false\n  estimate: ''\n",
            r"row 1 \(Z\): estimate must name the estimator",
        ),
        (
            ROW + "- model: Z\n  frame_nll: 6.3\n  citation: Y\n  bound: true\n  estimate: AIS\n",
            r"row 1 \(Z\): a row is a bound or an estimate, not both",
        ),
        ("[]\n", "non-empty list"),
        ("model: X\n", "non-empty list"),
        ("- [unclosed\n", "cannot read"),
    ],
)
def test_read_published_names_the_file_and_row(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "published.yaml"
    path.write_text(text)
    with pytest.raises(TableError, match=message) as info:
        read_published(path)
    assert str(path) in str(info.value)


def test_a_published_row_says_whether_first_frames_count(tmp_path: Path) -> None:
    path = tmp_path / "published.yaml"
    path.write_text(
        ROW + "- model: Z\n  frame_nll: 8.1\n  citation: Y\n  bound: false\n  first_frame: false\n"
    )
    first, second = read_published(path)
    assert first["first_frame"] is True and second["first_frame"] is False  # default: scored
    assert kind_text(first) == "exact" and kind_text(second) == "exact, frames 2..T"
    assert kind_text({**second, "bound": True}) == "upper bound, frames 2..T"


def test_an_estimated_published_row_says_so(tmp_path: Path) -> None:
    """The 2012 paper's RBM rows are AIS estimates: neither exact nor a bound."""
    path = tmp_path / "published.yaml"
    path.write_text(
        ROW
        + "- model: RNN-RBM\n  frame_nll: 6.27\n  citation: Y\n  bound: false\n  estimate: AIS\n"
    )
    exact, rbm = read_published(path)
    assert exact["estimate"] is None and rbm["estimate"] == "AIS"
    assert kind_text(exact) == "exact" and kind_text(rbm) == "AIS estimate"
    assert kind_text({**rbm, "first_frame": False}) == "AIS estimate, frames 2..T"
    assert "| RNN-RBM | 6.270 | AIS estimate |" in markdown({"rows": [exact, rbm]})


def test_read_published_missing_file(tmp_path: Path) -> None:
    with pytest.raises(TableError, match="nowhere.yaml: cannot read"):
        read_published(tmp_path / "nowhere.yaml")


# --------------------------------------------------------------------------------------
# the committed benchmark

ISSUE_ROWS = {  # issue 15's published rows (nats per step, JSB test)
    "Note 1-Gram": 11.06,
    "RNN-RBM": 6.27,
    "RNN-NADE": 5.83,
    "RNN-NADE (HF)": 5.56,
    "LSTM-NADE (best of 5)": 6.00,
    "LSTM-NADE (median of 5)": 6.10,
    "TP-LSTM-NADE (best of 5)": 5.88,
    "TP-LSTM-NADE (median of 5)": 5.92,
    "BALSTM, biaxial LSTM (best of 5)": 5.05,
    "BALSTM, biaxial LSTM (median of 5)": 5.86,
    "DMM-Aug-NADE": 5.118,
    "LSTM": 8.45,
    "TCN": 8.10,
}


def test_committed_published_rows_are_the_issues() -> None:
    rows = read_published(JSB / "published.yaml")
    assert {row["model"]: row["frame_nll"] for row in rows} == ISSUE_ROWS
    assert all(tuple(row) == ROW_KEYS and row["source"] == "published" for row in rows)
    assert all(row["citation"] for row in rows)
    # only DMM-Aug-NADE is a variational bound
    assert {row["model"] for row in rows if row["bound"]} == {"DMM-Aug-NADE"}
    by_model = {row["model"]: row["citation"] for row in rows}
    assert "Boulanger-Lewandowski" in by_model["RNN-RBM"]
    assert "Johnson" in by_model["BALSTM, biaxial LSTM (best of 5)"]
    assert "Krishnan" in by_model["DMM-Aug-NADE"]
    assert "Bai" in by_model["TCN"]


def test_readme_shows_the_committed_table() -> None:
    table_json = JSB / "table.json"
    assert table_json.is_file(), "benchmarks/jsb/table.json (the benchmark's committed table)"
    table = json.loads(table_json.read_text(encoding="utf-8"))
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    table_md = JSB / "table.md"
    if table_md.is_file():
        assert table_md.read_text(encoding="utf-8") == markdown(table), f"{table_md} is stale"
    assert markdown(table) in readme, (
        "README.md's JSB table is not benchmarks/jsb/table.json's: paste "
        "benchmarks/jsb/table.md (or `markdown(table)`) into README.md"
    )
