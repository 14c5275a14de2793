"""The `report` stage (``etude report``): ``reports/index.html`` and ``reports/fake.html``.

Reads what the other stages wrote (`collect`), draws the blind pairs and encodes their
audio (`fake`, `audio`), and renders both pages from Jinja2 templates (`pages`,
`templating`). Both pages open offline from disk: CSS and JavaScript are inlined,
charts are inline SVG, and images and audio are relative links.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer

from pipeline.core.config import PARAMS_FILE, REPORTS
from pipeline.core.io import atomic_path
from pipeline.core.params import require
from pipeline.report.collect import collect, discover_models
from pipeline.report.fake import blind_copies, fake_page, fake_pairs
from pipeline.report.pages import index_page
from pipeline.report.templating import href

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReportParams:
    """params.yaml `report`: the find-the-fake page and the benchmark tables shown."""

    fake_pairs: int  # pairs of (real, generated) clips; 0 = every pair available
    seed: int  # shuffles the pairs and which side the fake is on
    benchmarks: list[str]  # benchmark table pages (etude table --html) shown in frames

    def validate(self) -> None:
        require(self.fake_pairs >= 0, "fake_pairs must be >= 0")
        require(
            all(str(b).endswith(".html") for b in self.benchmarks),
            "benchmarks must list .html pages written by `etude table`",
        )


def build_report(
    reports_dir: Path = REPORTS,
    out: Path | None = None,
    models: Sequence[str] | None = None,
    *,
    params: ReportParams,
) -> Path:
    """Write the report page and the find-the-fake page beside it.

    Args:
        reports_dir: the ``reports/`` folder the other stages wrote.
        out: the report page [default: ``<reports_dir>/index.html``]; ``fake.html`` and
            the blind clips (``fake/``) are written in the same folder.
        models: models to show, in order (missing ones say "not run yet");
            None: every model any stage wrote something for.
        params: the `report` params section.

    Returns:
        The path of the report page.
    """
    reports_dir = Path(reports_dir)
    out = Path(out) if out is not None else reports_dir / "index.html"
    page_dir = out.parent
    page_dir.mkdir(parents=True, exist_ok=True)
    problems: list[str] = []
    names = list(models) if models is not None else discover_models(reports_dir)
    reports = collect(reports_dir, names, problems)
    pairs = fake_pairs(reports, params.fake_pairs, params.seed)
    pairs = blind_copies(pairs, page_dir / "fake")
    fake_path = page_dir / "fake.html"
    index = index_page(
        reports,
        reports_dir,
        page_dir,
        fake_href=href(fake_path, page_dir),
        n_pairs=len(pairs),
        benchmarks=params.benchmarks,
        problems=problems,
    )
    for problem in problems:
        log.warning("%s", problem)
    with atomic_path(fake_path) as tmp:
        tmp.write_text(fake_page(pairs, page_dir, out.name), encoding="utf-8")
    with atomic_path(out) as tmp:
        tmp.write_text(index, encoding="utf-8")
    log.info("report: %d models, %d fake pairs -> %s", len(reports), len(pairs), out)
    return out


def models_from_params(data: dict[str, Any]) -> list[str] | None:
    """Model names from params.yaml's `models` (a mapping or a list); None if absent."""
    value = data.get("models")
    if isinstance(value, dict):
        return [str(k) for k in value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return list(value)
    return None


def report_command(
    reports: Annotated[Path, typer.Option(help="The reports folder the stages wrote.")] = REPORTS,
    out: Annotated[
        Path | None,
        typer.Option(help="Report page (default: REPORTS/index.html); fake.html goes beside it."),
    ] = None,
    params: Annotated[Path, typer.Option("--params", help="params.yaml to read.")] = PARAMS_FILE,
) -> None:
    """Write reports/index.html (table, curves, clips) and the find-the-fake page."""
    from pipeline.core.params import from_mapping, get_section, params_errors, read_params_file
    from pipeline.core.stage_utils import user_errors

    with user_errors(OSError):
        data = read_params_file(params)
        with params_errors(params):
            settings = from_mapping(get_section(data, "report"), ReportParams, "report")
        page = build_report(reports, out, models_from_params(data), params=settings)
        typer.echo(f"report -> {page}")
