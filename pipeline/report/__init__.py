"""The report: static pages a person reads and listens to, built from ``reports/``.

Two stages live here, each importing only what it runs:

* `report` (``etude report``, `stage`): ``reports/index.html`` and the blind listening
  test ``reports/fake.html`` with its clips in ``reports/fake/``.
  - `collect`: reads what the other stages wrote, as plain data
  - `pages`: turns it into the rows and captions of ``templates/index.html.j2``
  - `charts`: training curves as inline SVG (matplotlib)
  - `fake`: the blind pairs and ``templates/fake.html.j2``
  - `audio`: the blind clips as Ogg Vorbis (libsndfile), reproducible bytes
  - `templating`: the Jinja2 environment and ``templates/base.html.j2``, the page shell
    with ``report.css`` and the scripts inlined, so every page opens offline
* `table` (``etude table``): a benchmark's results beside the published ones; its page
  uses the same shell (`templating.page`).

``plots/dvc_plots.html`` is the template `dvc plots show` renders into, with vega,
vega-lite and vega-embed inlined so that it works offline too (``.dvc/config``:
``plots.html_template = ../pipeline/report/plots/dvc_plots.html``); the script that
builds it is ``scripts/dvc_plots_template.py``.
"""
