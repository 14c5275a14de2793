"""The report's Jinja2 environment: templates, filters, and the page shell.

Every page (``index.html``, ``fake.html``, a benchmark's ``table.html``) extends
``templates/base.html.j2``, which inlines ``report.css`` and the page's scripts, so
that a page opens offline from disk with nothing to fetch. Values are autoescaped;
what is HTML already (the inlined CSS and JavaScript, the charts' SVG, table.py's rows)
is marked ``| safe`` in the templates. Links are relative and URL-quoted (`href`).
"""

from __future__ import annotations

import html
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import jinja2

TEMPLATES = Path(__file__).with_name("templates")
NOT_RUN = "not run yet"


def number(value: Any) -> float | None:
    """`value` as a finite float; None for booleans, NaN, infinities and non-numbers."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value) if math.isfinite(value) else None
    return None


def fmt(value: Any, digits: int = 4) -> str:
    """A number as the tables show it: ints with thousands separators, floats to
    `digits` significant digits (scientific when tiny or huge), "—" for none."""
    num = number(value)
    if num is None:
        return "—"
    if isinstance(value, int):
        return f"{value:,}"
    if num != 0 and (abs(num) < 1e-3 or abs(num) >= 1e5):
        return f"{num:.{digits - 1}e}"
    return f"{num:.{digits}g}"


def duration(seconds: Any) -> str:
    """Wall time as ``1h02m`` or ``2m05s``; "—" for none."""
    num = number(seconds)
    if num is None:
        return "—"
    minutes, secs = divmod(int(round(num)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


def href(target: Path, page_dir: Path) -> str:
    """A relative, URL-quoted link from a page in `page_dir` to a file."""
    rel = os.path.relpath(target.resolve(), page_dir.resolve())
    return quote(Path(rel).as_posix())


def esc(value: Any) -> str:
    """HTML-escape `value` (for the few pages still assembled in Python: table.py)."""
    return html.escape(str(value), quote=True)


@dataclass(frozen=True)
class Cell:
    """One table cell: its text, its sort key (``data-v``), a CSS class, a link."""

    text: str
    sort: str | None = None  # None: no data-v, the page sorts by the text
    cls: str = ""
    link: str = ""


def cell(value: Any, text: str | None = None, cls: str = "", link: str = "") -> Cell:
    """A cell whose sort key is the raw number or text (empty if none), shown formatted."""
    num = number(value)
    sort = value if isinstance(value, str) else ("" if num is None else repr(num))
    shown = text if text is not None else (value if isinstance(value, str) else fmt(value))
    return Cell(str(shown), str(sort), cls, link)


@dataclass(frozen=True)
class Row:
    """A table row; `model` becomes ``data-model`` (the browser test and sorting use it)."""

    cells: list[Cell]
    model: str | None = None


def environment() -> jinja2.Environment:
    """The templates folder, autoescaped, with the report's filters."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(fmt=fmt, duration=duration)
    env.globals.update(NOT_RUN=NOT_RUN)
    return env


def asset(name: str) -> str:
    """A CSS or JavaScript file from ``templates/`` (the page shell inlines it verbatim)."""
    return (TEMPLATES / name).read_text(encoding="utf-8")


def render(template: str, *, scripts: Sequence[str] = (), **context: Any) -> str:
    """Render `template` with report.css and `scripts` (file names) inlined."""
    env = environment()
    return env.get_template(template).render(
        css=asset("report.css"), scripts=[asset(s) for s in scripts], **context
    )


def page(title: str, body: str, scripts: Sequence[str] = ()) -> str:
    """A page around `body`, HTML already escaped by the caller (table.py's rows)."""
    return render("base.html.j2", scripts=scripts, title=title, body=body)


def table(table_id: str, head: Sequence[str], rows: Sequence[str]) -> str:
    """A sortable table of rows already rendered as HTML (table.py's rows)."""
    macros = environment().get_template("macros.html.j2").module
    return str(macros.table(table_id, head, list(rows)))  # type: ignore[attr-defined]
