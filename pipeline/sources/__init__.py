"""Registry of data sources, and the `fetch` stage that fills data/raw/<source>/.

A fetched source folder holds MIDI files (any sub-folders) and `manifest.csv`
with columns ``path, split, composer, title`` (path relative to the folder; empty
strings where unknown). Ingest takes splits and metadata from the manifest.
Each source is one module below this package, imported only when it is fetched.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Protocol

import typer

from pipeline.core.config import PARAMS_FILE
from pipeline.core.stores import MANIFEST, MANIFEST_COLUMNS
from pipeline.registry import Registry

__all__ = ["MANIFEST", "MANIFEST_COLUMNS", "REGISTRY", "Source", "fetch_command", "get", "names"]


class FetchFn(Protocol):
    def __call__(self, params: Any, out_dir: Path) -> None: ...


@dataclass(frozen=True)
class Source:
    """A registered source: its params section (same name) and its fetch function."""

    name: str
    params_cls: type
    fetch: FetchFn


REGISTRY: Registry[Source] = Registry(
    "source",
    {
        "corpus": "pipeline.sources.corpus",
        "maestro": "pipeline.sources.maestro",
        "lakh": "pipeline.sources.lakh",
        "folder": "pipeline.sources.folder",
        "jsb": "pipeline.sources.jsb",
        "poly2012": "pipeline.sources.poly2012",
    },
)
register = REGISTRY.register
get = REGISTRY.get
names = REGISTRY.names


def fetch_command(
    source: Annotated[
        str, typer.Argument(help="Source name: corpus, maestro, lakh, folder, jsb or poly2012.")
    ],
    out: Annotated[Path, typer.Option(help="Folder to fill (replaced atomically).")],
    params: Annotated[Path, typer.Option("--params", help="params.yaml to read.")] = PARAMS_FILE,
) -> None:
    """Download (or export) one source's MIDI files into OUT, with manifest.csv."""
    from pipeline.core.params import ParamsError, load_params, params_errors
    from pipeline.core.stage_utils import user_errors
    from pipeline.download import DownloadError

    with user_errors(DownloadError, OSError):
        with params_errors(params):  # the file read, not a literal params.yaml
            if source not in REGISTRY:
                raise ParamsError(
                    f"params.yaml: 'sources' has unknown entry {source!r}; allowed: {names()}"
                )
        spec = get(source)
        spec.fetch(load_params(source, spec.params_cls, params), out)
