"""The HTML report and the find-the-fake page: built from a real reports tree, parsed,
and opened in headless Chromium (found on PATH) and clicked through over the Chrome
DevTools Protocol, checking that no request leaves the machine. Without Chromium the
browser tests skip locally and fail under CI (tests/tools.py: `require_tool`)."""

from __future__ import annotations

import base64
import json
import os
import re
import select
import subprocess
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote

import pytest
import soundfile
import typer
from fixture_stores import FIXTURES
from tools import CHROMIUM_NAMES, find_chromium, require_tool
from typer.testing import CliRunner

from pipeline.core.io import write_json
from pipeline.core.params import ParamsError, default_params, from_mapping
from pipeline.evaluation import metrics, render
from pipeline.report.stage import ReportParams, build_report, report_command
from pipeline.report.templating import NOT_RUN

DEFAULTS = default_params("report", ReportParams)
ROOT = Path(__file__).resolve().parents[2]
PLOTS_TEMPLATE = ROOT / "pipeline" / "report" / "plots" / "dvc_plots.html"

CHROMIUM = find_chromium()
CLIP_S = 2.0
NLL = {"rnn": 2.5, "transformer": 1.75}
OBJECTIVES = {  # as evaluate records them (`pipeline.evaluation.evaluate.objective_numbers`)
    "rnn": ("pitch_nll", "likelihood", "nats per note", "pitch_nll"),
    "transformer": ("nll", "likelihood", "nats per token", "nll"),
    "vae": ("neg_elbo", "bound", "nats per cell", "nll"),
    "autoencoder": ("denoising_bce", "loss", "nats per cell", None),
    "biaxial": ("play_nll", "likelihood", "nats per pitch-step", "play_nll"),
}


# find the fake as evaluate writes it (`pipeline.evaluation.samples.find_the_fake`):
# rnn's pair 0 has the generated clip the more likely fake (the classifier is right),
# pair 1 the real one (wrong); transformer has too few clips to score
P_REAL, P_FAKE = [0.1234, 0.6543], [0.8765, 0.3456]
RNN_FAKE = {
    "folds": 2,
    "seed": 0,
    "score": {"accuracy": 0.75, "low": 0.3006, "high": 0.9544, "n_real": 2, "n_fake": 2,
              "folds": 2, "seed": 0, "fake_probability_real": P_REAL,
              "fake_probability_fake": P_FAKE},
    "control": {"accuracy": 0.5, "low": 0.1500, "high": 0.8500, "n_real": 2, "n_fake": 2,
                "folds": 2, "seed": 0, "fake_probability_real": [0.5, 0.5],
                "fake_probability_fake": [0.5, 0.5]},
}  # fmt: skip
TOO_FEW = "find the fake needs at least 5 clips on each side; got 1 generated and 1 real"
FAKE = {
    "rnn": {"fake": RNN_FAKE, "oa_interval": {"oa_mean": {"low": 0.1111, "high": 0.8888}}},
    "transformer": {"fake": {"folds": 5, "seed": 0, "score": {"error": TOO_FEW},
                             "control": {"error": TOO_FEW}}},
}  # fmt: skip


def objective(model: str, test: float, train: float, baseline: float = 3.0) -> dict[str, Any]:
    name, kind, unit, base = OBJECTIVES[model]
    return {
        "name": name,
        "kind": kind,
        "unit": unit,
        "description": f"what {model} reports",
        "test": test,
        "train": train,
        "baseline": None
        if base is None
        else {"key": "baseline_nll", "name": base, "description": "trivial", "test": baseline},
    }


# --- a real reports tree -------------------------------------------------------------


def _clips() -> list[Any]:
    from pipeline.midi import parse_midi

    notes = parse_midi(FIXTURES / "maestro" / "miditok_Maestro_3.mid").notes
    windows = []
    for k in range(4):
        t0 = 10.0 * k
        win = notes[(notes["start"] >= t0) & (notes["start"] < t0 + CLIP_S)].copy()
        win["start"] -= t0
        win["end"] = (win["end"] - t0).clip(upper=CLIP_S)
        windows.append(win.reset_index(drop=True))
    return windows


@pytest.fixture(scope="module")
def reports_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """rnn: trained, evaluated, 2 sample + 2 real clips, find the fake scored, mean OA
    with its interval; transformer: evaluated, 1 pair, no training summary, find the fake
    not scored (too few clips), no OA interval; vae: nothing (listed in params only)."""
    root = tmp_path_factory.mktemp("reports")
    clips = _clips()
    fake = [c.assign(pitch=c["pitch"] + 7) for c in clips[:2]]  # "generated": a 5th up
    comparison = metrics.compare_sets(fake, clips)
    for model, n_pairs in (("rnn", 2), ("transformer", 1)):
        samples = root / "samples" / model
        for i in range(n_pairs):
            render.render_clip(fake[i], samples / f"sample-{i}", seconds=CLIP_S, sample_rate=8000)
            render.render_clip(clips[i], samples / f"real-{i}", seconds=CLIP_S, sample_rate=8000)
        write_json(
            root / "evaluate" / f"{model}.json",
            {
                "model": {"name": model, "representation": "tuples", "n_parameters": 1234},
                "objective": objective(model, NLL[model], NLL[model] - 0.5),
                "test": {"nll": NLL[model], "baseline_nll": 3.0, "loss": NLL[model] + 0.1},
                "train": {"nll": NLL[model] - 0.5},
                "samples": {"n": n_pairs, "n_real": n_pairs, **comparison, **FAKE[model]},
            },
        )
    train = root / "train" / "rnn"
    write_json(
        train / "summary.json",
        {"steps": 300, "best_val_loss": 2.4, "wall_time_s": 125.0, "n_parameters": 98765},
    )
    for split, offset in (("train", 0.0), ("eval", 0.3)):
        tsv = train / "plots" / "metrics" / split / "loss.tsv"
        tsv.parent.mkdir(parents=True)
        lines = ["timestamp\tstep\tloss"]
        lines += [
            f"{1700000000000 + s}\t{s}\t{3.0 / (1 + s / 50) + offset}" for s in range(0, 300, 10)
        ]
        tsv.write_text("\n".join(lines) + "\n")
    write_json(
        root / "data" / "pianoroll.json",
        {
            "rows": {"train": 1000, "validation": 100, "test": 120},
            "size_bytes": 2_500_000,
            "pieces": 12,
        },
    )
    write_json(
        root / "validation" / "pianoroll.json",
        {"success": True, "checks": [{"expectation": "pitch in [21, 108]", "success": True}]},
    )
    write_json(
        root / "validation" / "events.json",
        {"success": False, "checks": [{"expectation": "tokens < 391", "success": False}]},
    )
    return root


@pytest.fixture(scope="module")
def built(reports_dir: Path) -> Path:
    return build_report(reports_dir, models=["rnn", "transformer", "vae"], params=DEFAULTS)


class Page(HTMLParser):
    """Collects links, sources, table rows (by table id) and text."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[tuple[str, str, str]] = []  # (tag, attribute, value)
        self.rows: dict[str, list[list[str]]] = {}
        self.row_models: dict[str, list[str]] = {}
        self.text: list[str] = []
        self.tags: list[str] = []
        self._table: list[str] = []
        self._row: list[str] | None = None
        self._cell: list[str] | None = None
        self.answers = ""
        self._in_answers = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        self.tags.append(tag)
        for key in ("src", "href"):
            if key in a:
                self.links.append((tag, key, a[key]))
        if tag == "table":
            self._table.append(a.get("id", ""))
        elif tag == "tr" and self._table:
            self._row = []
            if "data-model" in a:
                self.row_models.setdefault(self._table[-1], []).append(a["data-model"])
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []
        elif tag == "script" and a.get("id") == "answers":
            self._in_answers = True

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append("".join(self._cell).strip())
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.setdefault(self._table[-1], []).append(self._row)
            self._row = None
        elif tag == "table" and self._table:
            self._table.pop()
        elif tag == "script":
            self._in_answers = False

    def handle_data(self, data: str) -> None:
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)
        if self._in_answers:
            self.answers += data


def parse(path: Path) -> Page:
    page = Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def test_summary_table_rows_and_not_run_yet(built: Path, reports_dir: Path) -> None:
    assert built == reports_dir / "index.html"
    page = parse(built)
    assert page.row_models["models"] == ["rnn", "transformer", "vae"]
    header, *rows = page.rows["models"]
    assert header[:3] == ["model", "representation", "objective"]
    assert not [h for h in header if "NLL" in h or "loss" in h]  # no cross-model ranking
    by_model = {r[0]: dict(zip(header, r, strict=True)) for r in rows}
    assert by_model["rnn"]["objective"] == "pitch nll (likelihood, nats per note)"
    assert by_model["transformer"]["objective"] == "nll (likelihood, nats per token)"
    assert by_model["vae"]["objective"] == NOT_RUN
    # test numbers: one table per kind and unit, so rnn and transformer never share one
    (per_note_header, per_note), (per_token_header, per_token) = (
        page.rows["objective-likelihood-nats-per-note"],
        page.rows["objective-likelihood-nats-per-token"],
    )
    assert per_note_header == [
        "model", "objective", "test (nats per note)", "baseline", "baseline (nats per note)",
        "test − baseline", "train (nats per note)",
    ]  # fmt: skip
    assert per_note == ["rnn", "pitch nll", "2.5", "pitch nll", "3", "-0.5", "2"]
    assert per_token_header[2] == "test (nats per token)"
    assert per_token == ["transformer", "nll", "1.75", "nll", "3", "-1.25", "1.25"]
    assert by_model["rnn"]["steps"] == "300"
    assert by_model["rnn"]["parameters"] == "98,765"  # training summary wins
    assert by_model["rnn"]["train time"] == "2m05s"
    assert by_model["rnn"]["samples"] == "2"
    assert by_model["transformer"]["steps"] == NOT_RUN
    assert by_model["transformer"]["parameters"] == "1,234"  # from the metrics file
    in_objective_tables = [
        m for table, ms in page.row_models.items() if table.startswith("objective-") for m in ms
    ]
    assert sorted(in_objective_tables) == ["rnn", "transformer"]  # vae: not evaluated
    assert float(by_model["rnn"]["mean OA ↑"].split()[0]) > 0  # then its interval
    musical_header, *musical = page.rows["musical"]
    assert musical_header == ["model", *metrics.METRICS]
    assert [r[0] for r in musical] == ["rnn", "transformer", "vae"]
    assert musical[2][1] == NOT_RUN
    text = " ".join(page.text)
    assert "Training curves: not run yet" in text  # transformer, vae
    assert "Samples: not run yet" in text  # vae
    assert "Evaluation: not run yet" in text  # vae


def _sort_keys(page_html: str, table_id: str, model: str) -> list[str]:
    """The data-v of each cell of `model`'s row in table `table_id`."""
    table = page_html[page_html.index(f'id="{table_id}"') :]
    table = table[: table.index("</table>")]
    row = re.search(rf'<tr data-model="{model}">(.*?)</tr>', table, re.S)
    assert row is not None, (table_id, model)
    return re.findall(r'<td data-v="([^"]*)"', row.group(1))


def test_summary_shows_find_the_fake_and_intervals(built: Path) -> None:
    """Find the fake with its 95% interval and the real-against-real control beside it,
    sorted by the accuracy; mean OA with its bootstrap interval; a clear placeholder
    where a model's score is an error ("—", the error listed) or absent (not run)."""
    page = parse(built)
    header, *rows = page.rows["models"]
    by_model = {r[0]: dict(zip(header, r, strict=True)) for r in rows}
    assert by_model["rnn"]["find the fake ↓"] == "0.75 [0.30, 0.95]"
    assert by_model["rnn"]["real vs real"] == "0.50 [0.15, 0.85]"
    assert re.fullmatch(r"\d\.\d\d \[0\.11, 0\.89\]", by_model["rnn"]["mean OA ↑"])
    assert float(by_model["transformer"]["mean OA ↑"]) > 0  # no interval recorded: plain
    assert by_model["transformer"]["find the fake ↓"] == "—"
    assert by_model["transformer"]["real vs real"] == "—"
    assert by_model["vae"]["find the fake ↓"] == NOT_RUN == by_model["vae"]["real vs real"]
    text = " ".join(page.text)
    for test in ("generated against real", "real against real"):
        assert f"Find the fake not scored for transformer ({test}): {TOO_FEW}" in text
    assert "0.5 means it cannot tell them apart" in text
    assert "real clips of the train split in place of the generated ones" in text
    # sorted by the accuracy itself; a model without one sorts last (empty key)
    html_text = built.read_text(encoding="utf-8")
    fake, control, oa = (header.index(h) for h in ("find the fake ↓", "real vs real", "mean OA ↑"))
    rnn = _sort_keys(html_text, "models", "rnn")
    assert (float(rnn[fake]), float(rnn[control])) == (0.75, 0.5)
    assert 0 < float(rnn[oa]) < 1
    assert _sort_keys(html_text, "models", "transformer")[fake] == ""
    assert _sort_keys(html_text, "models", "vae")[fake] == ""
    # the model's own section: both tests, and each clip's probability of being generated
    assert "generated against real" in text and "0.75 [0.30, 0.95] (2 vs 2 clips, 2-fold)" in text
    assert "rnn: sample-0 (classifier: 0.88 fake)" in text
    assert "real: real-1 (classifier: 0.65 fake)" in text
    assert "transformer: sample-0 (classifier" not in text


def test_every_source_exists_and_nothing_is_remote(built: Path) -> None:
    for page_path in (built, built.with_name("fake.html")):
        page = parse(page_path)
        assert "link" not in page.tags  # no stylesheets to fetch
        for tag, _, value in page.links:
            assert not value.startswith(("http://", "https://", "//")), (page_path.name, value)
            if value.startswith("#"):
                continue
            assert (page_path.parent / unquote(value)).is_file(), (page_path.name, tag, value)
        html_text = page_path.read_text(encoding="utf-8")
        assert "<script src" not in html_text and "@import" not in html_text


def test_model_sections_show_clips_and_curves(built: Path) -> None:
    page = parse(built)
    images = [v for t, _, v in page.links if t == "img"]
    audio = [v for t, _, v in page.links if t == "audio"]
    assert sorted(images) == sorted(
        f"samples/{m}/{kind}-{i}.png"
        for m, n in (("rnn", 2), ("transformer", 1))
        for kind in ("sample", "real")
        for i in range(n)
    )
    assert len(audio) == 6 and all(a.endswith(".ogg") for a in audio)
    html_text = built.read_text(encoding="utf-8")
    rnn = html_text[html_text.index('id="model-rnn"') : html_text.index('id="model-transformer"')]
    assert rnn.count('<svg class="chart"') == 1  # one metric: loss
    assert re.findall(r'<g id="([^"]*-curve-\d+)"', rnn) == [
        "chart-rnn-loss-curve-0",  # eval/loss, then train/loss (file order)
        "chart-rnn-loss-curve-1",
    ]
    assert "train/loss" in rnn and "eval/loss" in rnn  # the legend names the curves
    assert "<?xml" not in html_text and "<!DOCTYPE svg" not in html_text


def test_chart_ids_are_unique_and_charts_reproducible(built: Path, tmp_path: Path) -> None:
    """Inline SVGs share one id space: matplotlib's ids get a per-chart prefix. The same
    curves give the same bytes (fixed hash salt, no date)."""
    html_text = built.read_text(encoding="utf-8")
    ids = re.findall(r'\sid="([^"]+)"', html_text)
    assert len(ids) == len(set(ids)), sorted(i for i in set(ids) if ids.count(i) > 1)[:5]
    refs = set(re.findall(r'(?:url\(#|href="#)([^)"]+)', html_text))
    assert refs <= set(ids) | {f"model-{m}" for m in ("rnn", "transformer", "vae")}
    again = build_report(built.parent, tmp_path / "index.html", ["rnn"], params=DEFAULTS)
    svg = re.compile(r'<svg class="chart".*?</svg>', re.S)
    assert svg.findall(again.read_text(encoding="utf-8")) == svg.findall(html_text)


def test_data_and_validation_section(built: Path) -> None:
    page = parse(built)
    assert page.rows["stores"][1] == [
        "pianoroll",
        "12",
        "train: 1,000, validation: 100, test: 120",
        "2.50 MB",
    ]
    assert page.rows["validation"][1:] == [
        ["events", "FAILED", "1", "1"],
        ["pianoroll", "passed", "1", "0"],
    ]
    assert "tokens < 391" in " ".join(page.text)


def test_find_the_fake_pairs(built: Path) -> None:
    page = parse(built.with_name("fake.html"))
    answers = json.loads(page.answers)
    assert len(answers) == 3  # rnn 2 + transformer 1 (fake_pairs defaults to 12)
    audio = [v for t, _, v in page.links if t == "audio"]
    assert len(audio) == 6
    samples = built.parent / "samples"
    for i, pair in enumerate(answers):
        a, b = audio[2 * i], audio[2 * i + 1]
        # neutral names: the file name must not tell real from generated
        assert (a, b) == (f"fake/pair-{i:02d}-a.ogg", f"fake/pair-{i:02d}-b.ogg")
        real_side = "b" if pair["fake"] == "a" else "a"
        assert pair[real_side]["name"].startswith("real-")
        assert pair[pair["fake"]]["real"] is False
        model_dir = samples / pair["model"]
        sources = [model_dir / f"{pair[side]['name']}.ogg" for side in ("a", "b")]
        for copy, source, other in ((a, *sources), (b, *reversed(sources))):
            # each copy is its own clip, byte for byte, and not the other one
            assert (built.parent / copy).read_bytes() == source.read_bytes()
            assert (built.parent / copy).read_bytes() != other.read_bytes()
            decoded, rate = soundfile.read(built.parent / copy)
            assert rate == soundfile.info(str(source)).samplerate and len(decoded) > 0
    sides = {p["fake"] for p in answers}
    assert sides <= {"a", "b"}


def test_fake_page_carries_the_classifiers_guess(built: Path) -> None:
    """Each pair's answer holds the classifier's guess: the side with the higher
    out-of-fold probability of being generated, both probabilities, right or not;
    none where the model has no score. Like the answer, it is only in the embedded
    answers, never in the page's visible text or its file names."""
    fake_html = built.with_name("fake.html")
    answers = json.loads(parse(fake_html).answers)
    right = {}
    for pair in answers:
        real_side = "b" if pair["fake"] == "a" else "a"
        if pair["model"] == "transformer":
            assert pair["classifier"] is None  # find the fake not scored
            continue
        i = int(pair[pair["fake"]]["name"].removeprefix("sample-"))
        assert pair[real_side]["name"] == f"real-{i}"
        guess = pair["classifier"]
        assert (guess[pair["fake"]], guess[real_side]) == (P_FAKE[i], P_REAL[i])
        # pair 0: generated 0.8765 > real 0.1234; pair 1: generated 0.3456 < real 0.6543
        assert guess["fake"] == (pair["fake"] if i == 0 else real_side)
        right[i] = guess["right"]
    assert right == {0: True, 1: False}
    html_text = fake_html.read_text(encoding="utf-8")
    embedded = r'<script type="application/json" id="answers">.*?</script>'
    visible = re.sub(embedded, "", html_text, flags=re.S)
    assert not [p for p in (*P_REAL, *P_FAKE) if str(p) in visible]
    assert "sample-" not in visible and "real-" not in visible


def test_classifier_guess_takes_the_higher_probability() -> None:
    from pipeline.report.collect import Clip, ModelReport, fake_probability
    from pipeline.report.fake import FakePair, classifier_guess

    gen, real = Clip("sample-0", None, None), Clip("real-0", None, None)
    guess = classifier_guess(FakePair(gen, real, "a", "m", 0.3, 0.6))
    assert guess == {"fake": "b", "a": 0.3, "b": 0.6, "right": False}
    assert classifier_guess(FakePair(real, gen, "b", "m", 0.3, 0.6)) == {
        "fake": "b", "a": 0.3, "b": 0.6, "right": True,
    }  # fmt: skip
    tie = classifier_guess(FakePair(real, gen, "b", "m", 0.5, 0.5))
    assert tie is not None and tie["fake"] is None and tie["right"] is False
    assert classifier_guess(FakePair(real, gen, "b", "m", None, 0.5)) is None
    score = {"accuracy": 0.6, "low": 0.4, "high": 0.8,
             "fake_probability_real": [0.25, "x"], "fake_probability_fake": [0.75]}  # fmt: skip
    model = ModelReport("m", metrics={"samples": {"fake": {"score": score}}})
    assert fake_probability(model, "real-0") == 0.25 and fake_probability(model, "sample-0") == 0.75
    assert fake_probability(model, "real-1") is None  # not a number
    assert fake_probability(model, "sample-1") is None  # past the list
    assert fake_probability(model, "other-0") is None
    score["error"], score["accuracy"] = "too few clips", None
    assert fake_probability(model, "real-0") is None  # no score: no guesses


def test_fake_pairs_capped_and_reproducible(reports_dir: Path, tmp_path: Path) -> None:
    params = ReportParams(fake_pairs=2, seed=5, benchmarks=[])
    out = build_report(reports_dir, tmp_path / "site" / "index.html", params=params)
    first = json.loads(parse(out.with_name("fake.html")).answers)
    assert len(first) == 2
    build_report(reports_dir, tmp_path / "site" / "index.html", params=params)
    assert json.loads(parse(out.with_name("fake.html")).answers) == first
    # the pages live elsewhere: links still resolve, relative to the page
    for tag, _, value in parse(out).links:
        if tag in ("img", "audio"):
            assert (out.parent / unquote(value)).is_file()


def test_empty_reports_folder_says_not_run_yet(tmp_path: Path) -> None:
    out = build_report(tmp_path / "reports", params=DEFAULTS)
    text = " ".join(parse(out).text)
    assert "Models: not run yet" in text and "Validation: not run yet" in text
    assert "No pairs" in " ".join(parse(out.with_name("fake.html")).text)


def test_unreadable_files_are_listed_not_fatal(tmp_path: Path) -> None:
    root = tmp_path / "reports"
    (root / "evaluate").mkdir(parents=True)
    (root / "evaluate" / "rnn.json").write_text("{not json")
    (root / "train" / "rnn").mkdir(parents=True)
    (root / "train" / "rnn" / "summary.json").write_text("[1, 2]")
    page = parse(build_report(root, params=DEFAULTS))
    assert page.row_models["models"] == ["rnn"]
    text = " ".join(page.text)
    assert "rnn.json: unreadable JSON" in text and "expected a JSON object" in text


def test_report_command(reports_dir: Path, tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(
        "models:\n  rnn: {}\n  vae: {}\nreport:\n  fake_pairs: 1\n  seed: 0\n  benchmarks: []\n"
    )
    app = typer.Typer()
    app.command()(report_command)
    out = tmp_path / "site" / "index.html"
    args = ["--reports", str(reports_dir), "--out", str(out), "--params", str(params)]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert parse(out).row_models["models"] == ["rnn", "vae"]
    assert len(json.loads(parse(out.with_name("fake.html")).answers)) == 1
    params.write_text("report:\n  fake_pairs: -1\n  seed: 0\n  benchmarks: []\n")
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1
    assert "fake_pairs must be >= 0" in result.output
    assert "Traceback" not in result.output


def test_benchmark_pages_are_framed_and_missing_ones_named(
    reports_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # paths in report.benchmarks are relative to the working directory (the project root)
    monkeypatch.chdir(tmp_path)
    page = Path("benchmarks/jsb/table.html")
    page.parent.mkdir(parents=True)
    page.write_text("<html><body>table</body></html>", encoding="utf-8")
    params = ReportParams(
        fake_pairs=0, seed=0, benchmarks=[str(page), "benchmarks/other/table.html"]
    )
    out = build_report(reports_dir, tmp_path / "site" / "index.html", params=params)
    frames = [v for t, _, v in parse(out).links if t == "iframe"]
    assert len(frames) == 1 and (out.parent / unquote(frames[0])).resolve() == page.resolve()
    text = " ".join(parse(out).text)
    assert "benchmarks/other/table.html: not run yet" in text
    with pytest.raises(ParamsError, match="benchmarks"):
        from_mapping({"fake_pairs": 0, "seed": 0, "benchmarks": ["x.json"]}, ReportParams, "report")


def test_dvc_plots_template_is_offline_and_complete() -> None:
    template = PLOTS_TEMPLATE
    text = template.read_text(encoding="utf-8")
    assert "{plot_divs}" in text and "{scripts}" not in text
    assert "<script src" not in text
    assert all(f"<!-- {lib}@" in text for lib in ("vega", "vega-lite", "vega-embed"))
    assert template.stat().st_size < 2_000_000


def _template_script() -> Any:
    """scripts/dvc_plots_template.py (a maintainer's tool, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "dvc_plots_template", ROOT / "scripts" / "dvc_plots_template.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_write_dvc_plots_template(tmp_path: Path) -> None:
    script = _template_script()
    js = tmp_path / "lib.js"
    js.write_text('window.lib = "</script>";')
    out = script.write_dvc_plots_template([js], tmp_path / "t.html", ["lib@1"], notice="MIT -- x")
    text = out.read_text()
    assert "<\\/script>" in text and "<!-- lib@1 (BSD-3-Clause) -->" in text
    assert "{plot_divs}" in text and "MIT - - x" in text
    js.write_text("var s = '{plot_divs}';")
    with pytest.raises(ValueError, match="placeholder"):
        script.write_dvc_plots_template([js], tmp_path / "t.html")


def test_the_script_rebuilds_the_committed_template(tmp_path: Path) -> None:
    """The committed template is the script's output: from its own scripts and notice,
    through the script's command line, byte for byte."""
    text = PLOTS_TEMPLATE.read_text(encoding="utf-8")
    notice = re.match(r"<!DOCTYPE html>\n<!--\n(.*?)\n-->\n", text, re.S)
    blocks = re.findall(r"<!-- (.*?) \(BSD-3-Clause\) -->\n<script>\n(.*?)\n</script>", text, re.S)
    assert notice and [label.split("@")[0] for label, _ in blocks] == [
        "vega", "vega-lite", "vega-embed",
    ]  # fmt: skip
    (tmp_path / "NOTICE").write_text(notice.group(1), encoding="utf-8")
    args = ["--out", str(tmp_path / "out.html"), "--notice", str(tmp_path / "NOTICE")]
    for i, (label, code) in enumerate(blocks):
        js = tmp_path / f"{i}.js"
        js.write_text(code.replace("<\\/script", "</script"), encoding="utf-8")
        args.append(f"{label}={js}")
    _template_script().main(args)
    assert (tmp_path / "out.html").read_bytes() == PLOTS_TEMPLATE.read_bytes()


# --- headless Chromium over the DevTools protocol (stdlib: --remote-debugging-pipe) -----


class Browser:
    """A headless Chromium driven over CDP through the pipe on fds 3 and 4."""

    def __init__(self, chromium: str, profile: Path) -> None:
        to_child_r, self._w = os.pipe()
        self._r, from_child_w = os.pipe()

        def wire_fds() -> None:  # runs in the child: CDP expects to read fd 3, write fd 4
            a, b = os.dup(to_child_r), os.dup(from_child_w)
            os.dup2(a, 3)
            os.dup2(b, 4)
            os.set_inheritable(3, True)
            os.set_inheritable(4, True)

        args = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu",
            "--disable-background-networking", "--disable-component-update", "--no-first-run",
            "--no-default-browser-check", "--disable-sync", "--mute-audio",
            f"--user-data-dir={profile}", "--host-resolver-rules=MAP * ~NOTFOUND",
            "--remote-debugging-pipe", "--window-size=1200,1000", "about:blank",
        ]  # fmt: skip
        self.proc = subprocess.Popen(
            args,
            preexec_fn=wire_fds,  # fine here: the test process starts no threads of its own
            close_fds=False,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_child_r)
        os.close(from_child_w)
        self._buffer = b""
        self._id = 0
        self.events: list[dict[str, Any]] = []

    def _read(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while b"\0" not in self._buffer:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("chromium: no DevTools message")
            ready, _, _ = select.select([self._r], [], [], left)
            if ready:
                chunk = os.read(self._r, 1 << 16)
                if not chunk:
                    raise EOFError("chromium closed the DevTools pipe")
                self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def send(
        self, method: str, params: dict[str, Any] | None = None, session: str | None = None
    ) -> dict[str, Any]:
        self._id += 1
        message: dict[str, Any] = {"id": self._id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._w, json.dumps(message).encode() + b"\0")
        while True:
            reply = self._read(30.0)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str, session: str, timeout: float = 30.0) -> dict[str, Any]:
        for event in self.events:
            if event.get("method") == method and event.get("sessionId") == session:
                self.events.remove(event)
                return event
        deadline = time.monotonic() + timeout
        while True:
            event = self._read(max(0.01, deadline - time.monotonic()))
            if event.get("method") == method and event.get("sessionId") == session:
                return event
            self.events.append(event)

    def open(self, path: Path) -> str:
        """Open a file in a new tab; return the CDP session id once it has loaded."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})[
            "sessionId"
        ]
        for domain in ("Page", "Network", "Runtime"):
            self.send(f"{domain}.enable", session=session)
        self.send("Page.navigate", {"url": path.resolve().as_uri()}, session=session)
        self.wait_event("Page.loadEventFired", session)
        return session

    def js(self, session: str, expression: str) -> Any:
        result = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            session=session,
        )
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, session: str, path: Path) -> Path:
        data = self.send("Page.captureScreenshot", {"format": "png"}, session=session)["data"]
        path.write_bytes(base64.b64decode(data))
        return path

    def requests(self, session: str) -> list[str]:
        return [
            e["params"]["request"]["url"]
            for e in self.events
            if e.get("method") == "Network.requestWillBeSent" and e.get("sessionId") == session
        ]

    def errors(self, session: str) -> list[Any]:
        return [
            e["params"]
            for e in self.events
            if e.get("sessionId") == session
            and e.get("method") in ("Runtime.exceptionThrown", "Network.loadingFailed")
        ]

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (OSError, EOFError, TimeoutError, RuntimeError):
            pass
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._w)
        os.close(self._r)


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Browser]:
    """One headless Chromium for the module; without one: skip, or fail under CI."""
    require_tool(CHROMIUM is not None, f"Chromium (none of {', '.join(CHROMIUM_NAMES)} on PATH)")
    assert CHROMIUM is not None  # require_tool returned: found
    chrome = Browser(CHROMIUM, tmp_path_factory.mktemp("chromium-profile"))
    yield chrome
    chrome.close()


def test_a_missing_tool_skips_locally_and_fails_under_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    """The browser and FluidSynth tests rest on `require_tool`: a failed apt-get in CI
    must show as a failure, never as a green run with skipped tests."""
    message = r"widget is not installed \(scripts/setup\.sh installs it"
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match=message):
        require_tool(False, "widget")
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception, match=message):
        require_tool(False, "widget")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=message + r".*CI=true"):
        require_tool(False, "widget")
    require_tool(True, "widget")  # present: neither skips nor fails, under CI or not
    monkeypatch.delenv("CI")
    require_tool(True, "widget")


def test_chromium_is_looked_up_on_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not a fixed /usr/bin/chromium: whichever of the usual names PATH has, in order."""
    monkeypatch.setenv("PATH", str(tmp_path))
    assert find_chromium() is None
    for name in ("google-chrome", "chromium-browser"):
        exe = tmp_path / name
        exe.write_text("#!/bin/sh\n")
        exe.chmod(0o755)
    assert find_chromium() == str(tmp_path / "chromium-browser")  # listed before google-chrome
    (tmp_path / "chromium").write_text("not executable")
    assert find_chromium() == str(tmp_path / "chromium-browser")


def _local_only(urls: list[str]) -> None:
    assert urls, "the page made no request at all"
    remote = [u for u in urls if not u.startswith(("file://", "data:", "about:", "blob:"))]
    assert not remote, remote


def test_report_renders_and_sorts_in_chromium(
    browser: Browser, built: Path, tmp_path: Path
) -> None:
    session = browser.open(built)
    first_rows = (
        "Array.from(document.querySelectorAll('#models tbody tr')).map(r => r.dataset.model)"
    )
    assert browser.js(session, first_rows) == ["rnn", "transformer", "vae"]
    header = "document.querySelectorAll('#models th')[5]"  # parameters
    browser.js(session, f"{header}.click()")
    assert browser.js(session, first_rows) == ["transformer", "rnn", "vae"]  # 1234, 98765, none
    browser.js(session, f"{header}.click()")
    assert browser.js(session, first_rows) == ["rnn", "transformer", "vae"]  # missing stays last
    loaded = (  # the piano rolls are lazy: load them all, count those that decode
        "Promise.all(Array.from(document.images).map(i => { i.loading = 'eager';"
        " return i.decode().then(() => i.naturalWidth > 0, () => false); }))"
        ".then(ok => ok.filter(Boolean).length)"
    )
    assert browser.js(session, loaded) == 6
    curves = "document.querySelectorAll('svg.chart g[id*=\"-curve-\"] path').length"
    assert browser.js(session, curves) == 2
    shot = browser.screenshot(session, tmp_path / "report.png")
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    _local_only(browser.requests(session))
    assert browser.errors(session) == []


def test_find_the_fake_click_through_in_chromium(
    browser: Browser, built: Path, tmp_path: Path
) -> None:
    fake_html = built.with_name("fake.html")
    answers = json.loads(parse(fake_html).answers)
    session = browser.open(fake_html)
    guesses = "Array.from(document.querySelectorAll('.reveal .classifier')).map(c => c.textContent)"
    assert browser.js(session, guesses) == []  # nothing shown before checking
    # answer "A" everywhere: right exactly where the fake is on side A
    browser.js(session, "document.querySelectorAll(\"input[value='a']\").forEach(r => r.click())")
    browser.js(session, "document.getElementById('check').click()")
    expected = sum(p["fake"] == "a" for p in answers)
    score = browser.js(session, "document.getElementById('score').textContent")
    assert score == f"You found {expected} of {len(answers)} fakes."
    reveals = browser.js(
        session, "Array.from(document.querySelectorAll('.reveal')).map(r => r.textContent)"
    )
    for pair, text in zip(answers, reveals, strict=True):
        fake_side = "A" if pair["fake"] == "a" else "B"
        assert f"{fake_side}: generated by {pair['model']}" in text
        assert text.startswith("✓" if pair["fake"] == "a" else "✗")
    guessed = [p["classifier"] for p in answers if p["classifier"] is not None]
    machine = browser.js(session, "document.getElementById('classifier-score').textContent")
    caught, missing = sum(g["right"] for g in guessed), len(answers) - len(guessed)
    assert machine == f"The classifier found {caught} of {len(guessed)} (no guess for {missing})."
    for pair, line in zip(answers, browser.js(session, guesses), strict=True):
        guess = pair["classifier"]
        if guess is None:
            assert line.startswith("Classifier: no guess")
            continue
        assert line.startswith(("✓" if guess["right"] else "✗") + " Classifier: ")
        assert f"{guess['fake'].upper()} is the fake" in line
        assert f"A {guess['a']:.2f}, B {guess['b']:.2f}" in line
    marked = browser.js(session, "document.querySelectorAll('.pair.correct').length")
    assert marked == expected
    tally = browser.js(session, "document.querySelectorAll('#tally tbody tr').length")
    assert tally == len({p["model"] for p in answers})
    durations = (  # every blind clip loads in the browser (Ogg Vorbis), about full length
        "Promise.all(Array.from(document.querySelectorAll('audio')).map(a =>"
        " new Promise(done => { a.onloadedmetadata = () => done(a.duration);"
        " a.onerror = () => done(-1); a.preload = 'metadata'; a.load(); })))"
    )
    # (Chromium estimates a Vorbis stream's duration; the exact length is checked above)
    assert browser.js(session, durations) == pytest.approx([CLIP_S] * 2 * len(answers), abs=0.1)
    browser.screenshot(session, tmp_path / "fake.png")
    assert (tmp_path / "fake.png").stat().st_size > 1000
    _local_only(browser.requests(session))
    # once it has the metadata, Chromium cancels a media download (net::ERR_ABORTED)
    aborted = {"type": "Media", "errorText": "net::ERR_ABORTED"}
    errors = browser.errors(session)
    assert [e for e in errors if aborted.items() - e.items()] == [], errors


def test_dvc_plots_template_renders_offline(browser: Browser, tmp_path: Path) -> None:
    from dvc_render import render_html
    from dvc_render.vega import VegaRenderer

    points = [{"step": s, "loss": 3.0 / (1 + s), "rev": "workspace", "filename": "loss.tsv",
               "field": "loss"} for s in range(20)]  # fmt: skip
    renderer = VegaRenderer(points, "train/loss.tsv", x="step", y="loss")
    template = PLOTS_TEMPLATE
    page = Path(render_html([renderer], tmp_path / "index.html", html_template=template))
    assert "cdn.jsdelivr" not in page.read_text()
    session = browser.open(page)
    drawn = (
        "new Promise(done => { const t0 = Date.now(); (function poll() {"
        " const c = document.querySelector('canvas.marks, svg.marks');"
        " if (c || Date.now() - t0 > 15000) done(!!c); else setTimeout(poll, 100); })(); })"
    )
    assert browser.js(session, drawn) is True
    _local_only(browser.requests(session))
    assert browser.errors(session) == []


def test_pitch_class_profiles_compare_poph_with_biaxial(tmp_path: Path) -> None:
    c_major = [1 / 7 if pc in (0, 2, 4, 5, 7, 9, 11) else 0.0 for pc in range(12)]
    chromatic = [1 / 12] * 12
    for name, generated in (("biaxial", chromatic), ("poph", c_major)):
        path = tmp_path / "evaluate" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        profile = {"generated": generated, "real": c_major}
        path.write_text(
            json.dumps({"test": {"nll": 1.0}, "samples": {"pitch_class_profile": profile}})
        )
    page = parse(build_report(tmp_path, models=["biaxial", "poph"], params=DEFAULTS))
    rows = page.rows["pitch-classes"][1:]
    assert [r[:2] for r in rows] == [
        ["biaxial", "generated"],
        ["biaxial", "real"],
        ["poph", "generated"],
        ["poph", "real"],
    ]
    key_share = {tuple(r[:2]): float(r[-1]) for r in rows}
    assert key_share[("poph", "generated")] == pytest.approx(1.0)
    assert key_share[("biaxial", "generated")] == pytest.approx(
        7 / 12, abs=1e-4
    )  # shown to 4 places


def test_test_numbers_are_grouped_by_kind_and_unit(tmp_path: Path) -> None:
    """A loss and a bound never share a table (or a sortable column) with a likelihood,
    and each number is captioned with its name and unit."""
    root = tmp_path / "reports"
    values = {"rnn": 2.5, "biaxial": 0.2, "vae": 0.15, "autoencoder": 0.05}
    for model, value in values.items():
        write_json(
            root / "evaluate" / f"{model}.json",
            {
                "model": {"name": model, "representation": "x"},
                "objective": objective(model, value, value, baseline=0.3),
                "test": {"nll": value, "baseline_nll": 0.3},
                "train": {"nll": value},
            },
        )
    write_json(root / "evaluate" / "old.json", {"test": {"nll": 1.0}})  # before objectives
    page = parse(build_report(root, params=DEFAULTS))
    tables = {t: ms for t, ms in page.row_models.items() if t.startswith("objective-")}
    assert tables == {
        "objective-likelihood-nats-per-note": ["rnn"],
        "objective-likelihood-nats-per-pitch-step": ["biaxial"],
        "objective-bound-nats-per-cell": ["vae"],
        "objective-loss-nats-per-cell": ["autoencoder"],
    }
    order = [t for t in page.rows if t.startswith("objective-")]
    assert order[-2:] == ["objective-bound-nats-per-cell", "objective-loss-nats-per-cell"]
    loss_header, loss_row = page.rows["objective-loss-nats-per-cell"]
    assert loss_header == ["model", "objective", "test (nats per cell)", "train (nats per cell)"]
    assert loss_row == ["autoencoder", "denoising bce", "0.05", "0.05"]  # no baseline column
    _, bound_row = page.rows["objective-bound-nats-per-cell"]
    assert bound_row[:6] == ["vae", "neg elbo", "0.15", "nll", "0.3", "-0.15"]
    text = " ".join(page.text)
    assert "Bounds on a likelihood, nats per cell" in text and "Losses, nats per cell" in text
    assert "Objective not recorded for old" in text
    by_model = {r[0]: r for r in page.rows["models"][1:]}
    assert by_model["old"][2] == "not recorded (rerun evaluate)"
    assert by_model["autoencoder"][2] == "denoising bce (loss, nats per cell)"
    # the model's own section captions the nll term and its baseline with name and unit
    assert "nll = denoising bce (loss, nats per cell)" in text
    assert "nll = neg elbo (bound, nats per cell)" in text
    assert "baseline_nll = baseline nll (likelihood, nats per cell)" in text
    assert "No baseline of this kind." in text
