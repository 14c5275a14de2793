"""`etude quality`: the find-the-fake table from evaluate's details and train summaries."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from pipeline.report.quality import QualityParams, build_table, convincing, markdown, model_row


def details(accuracy: float | None, scale: float, poly: float, probs: list[float]) -> dict:
    score = (
        {"accuracy": accuracy, "low": accuracy - 0.1, "high": accuracy + 0.05, "n_real": 4,
         "n_fake": 4, "fake_probability_fake": probs, "fake_probability_real": [0.5] * 4}
        if accuracy is not None
        else {"error": "find the fake needs at least 5 clips on each side"}
    )  # fmt: skip
    return {
        "samples": {
            "n": len(probs),
            "seconds": 20.0,
            "oa_mean": 0.5,
            "oa_interval": {"oa_mean": {"low": 0.4, "high": 0.6}},
            "metrics": {
                "scale_consistency": {"generated_mean": scale, "real_mean": 0.96, "oa": 0.3},
                "polyphony": {"generated_mean": poly, "real_mean": 4.0, "oa": 0.4},
            },
            "fake": {"score": score, "control": {"accuracy": 0.5, "low": 0.4, "high": 0.6}},
        }
    }


@pytest.fixture
def reports(tmp_path: Path) -> Path:
    runs = {
        "good": details(0.55, 0.93, 3.0, [0.9, 0.1, 0.5, 0.3]),  # poly 3.0: 25% off -> ok
        "bad": details(0.95, 0.80, 1.0, [0.99, 0.97, 0.98, 0.96]),
        "few": details(None, 0.9, 4.0, []),
    }
    for name, data in runs.items():
        path = tmp_path / "evaluate" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))
        summary = tmp_path / "train" / name / "summary.json"
        summary.parent.mkdir(parents=True)
        summary.write_text(json.dumps({"wall_time_s": 120.0, "steps": 10}))
    return tmp_path


def test_rows_best_first_with_checks_and_a_line_for_a_model_without_score(reports: Path) -> None:
    table = build_table(reports, QualityParams(models=("bad", "few", "good")))
    assert [r["model"] for r in table["rows"]] == ["good", "bad", "few"]
    assert table["best"] == "good" and table["control"]["accuracy"] == 0.5
    good, bad, few = table["rows"]
    assert good["checks"] == {"scale_consistency": True, "polyphony": True}
    assert bad["checks"] == {"scale_consistency": False, "polyphony": False}
    assert few["fake"]["accuracy"] is None and "5 clips" in few["error"]
    text = markdown(table)
    assert "| good | 0.55 [0.45, 0.60] | 0.50 [0.40, 0.60] | 0.50 [0.40, 0.60]" in text
    assert "| few | - |" in text and "2.0 min" in text


def test_most_and_least_convincing_by_the_classifier() -> None:
    best, worst = convincing(details(0.6, 0.9, 4.0, [0.9, 0.1, 0.5, 0.3]), 2)
    assert best == [1, 3] and worst == [0, 2]


def test_missing_evaluation_is_one_line_naming_the_file(reports: Path, tmp_path: Path) -> None:
    import typer

    from pipeline.report.quality import quality_command

    app = typer.Typer()
    app.command()(quality_command)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"quality": {"models": ["good", "absent"]}}))
    result = CliRunner().invoke(
        app, ["--reports", str(reports), "--params", str(params), "--out", str(tmp_path / "t.json")]
    )
    assert result.exit_code != 0
    assert "absent.json: missing (run the evaluate stage first)" in result.output
    assert not (tmp_path / "t.json").exists()
    row = model_row("x", {}, {})
    assert row["fake"]["accuracy"] is None and row["clips"] is None
