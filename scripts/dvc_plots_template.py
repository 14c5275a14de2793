"""Build ``pipeline/report/plots/dvc_plots.html``: DVC's plots template, offline.

Not runtime code (no stage runs it): a maintainer runs it when upgrading vega. `dvc
plots show` normally loads vega from a CDN; this template has vega, vega-lite and
vega-embed inlined instead, and ``.dvc/config`` points DVC at it
(``plots.html_template = ../pipeline/report/plots/dvc_plots.html``). DVC fills
``{plot_divs}`` (and ``{refresh_tag}``) and adds its CDN ``<script src>`` tags only
where a template has ``{scripts}``, which this one has not.

The scripts come from the npm packages (``npm pack vega@5 vega-lite@5 vega-embed@6``,
each BSD-3-Clause), their ``build/*.min.js`` in the order vega, vega-lite, vega-embed;
their LICENSE text is kept in a comment at the top::

    python scripts/dvc_plots_template.py --notice NOTICE.txt \\
        --out pipeline/report/plots/dvc_plots.html \\
        "vega@5.33.1 build/vega.min.js=package/build/vega.min.js" \\
        "vega-lite@5.23.0 build/vega-lite.min.js=vega-lite/build/vega-lite.min.js" \\
        "vega-embed@6.29.0 build/vega-embed.min.js=vega-embed/build/vega-embed.min.js"

(each argument is ``LABEL=PATH``; the label is the comment above the script). The
committed template was written by `write_dvc_plots_template` as it is here; a test
rebuilds it from its own scripts and compares the bytes.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence
from pathlib import Path


def template_text(scripts: Sequence[tuple[str, str]], notice: str = "") -> str:
    """The template's text: each (label, JavaScript) inlined in order, `notice` on top."""
    blocks = []
    for label, code in scripts:
        if "{plot_divs}" in code or "{scripts}" in code:
            raise ValueError(f"{label}: contains a DVC template placeholder")
        blocks.append(
            f"<!-- {label} (BSD-3-Clause) -->\n<script>\n"
            + code.replace("</script", "<\\/script")
            + "\n</script>"
        )
    header = f"<!--\n{notice.replace('--', '- -').strip()}\n-->\n" if notice else ""
    return (
        "<!DOCTYPE html>\n" + header + '<html>\n<head>\n<meta charset="utf-8">\n{refresh_tag}\n'
        "<title>DVC Plot</title>\n"
        + "\n".join(blocks)
        + "\n<style>table { border-spacing: 15px; }</style>\n</head>\n<body>\n{plot_divs}\n"
        "</body>\n</html>\n"
    )


def write_dvc_plots_template(
    js_files: Sequence[Path],
    out: Path,
    labels: Sequence[str] | None = None,
    notice: str = "",
) -> Path:
    """Write the template with `js_files` inlined (labelled by `labels`, else file names)."""
    labels = list(labels) if labels is not None else [Path(p).name for p in js_files]
    scripts = [
        (label, Path(path).read_text(encoding="utf-8"))
        for path, label in zip(js_files, labels, strict=True)
    ]
    text = template_text(scripts, notice)
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("scripts", nargs="+", help="LABEL=PATH of each script, in order")
    parser.add_argument("--out", type=Path, required=True, help="the template to write")
    parser.add_argument("--notice", type=Path, help="license text for the top comment")
    args = parser.parse_args(argv)
    labels, paths = zip(*(s.split("=", 1) for s in args.scripts), strict=True)
    notice = args.notice.read_text(encoding="utf-8") if args.notice else ""
    write_dvc_plots_template([Path(p) for p in paths], args.out, labels, notice)


if __name__ == "__main__":
    main()
