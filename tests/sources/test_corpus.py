import csv

import pytest

from pipeline.core.params import ParamsError, default_params, from_mapping
from pipeline.core.stores import read_store
from pipeline.ingest import IngestParams, ingest_dir
from pipeline.sources import corpus

DEFAULT_PARAMS = default_params("ingest", IngestParams)


def test_corpus_exports_a_reproducible_subset(tmp_path):
    params = corpus.Params(collections=["bach"], max_files=6, workers=1)
    corpus.fetch(params, tmp_path / "a")
    with open(tmp_path / "a" / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert 1 <= len(rows) <= 6
    assert all(r["composer"] == "Johann Sebastian Bach" for r in rows)
    assert sorted(
        p.relative_to(tmp_path / "a").as_posix() for p in (tmp_path / "a").rglob("*.mid")
    ) == sorted(r["path"] for r in rows)
    corpus.fetch(params, tmp_path / "b")
    assert sorted(p.name for p in (tmp_path / "a" / "bach").iterdir()) == sorted(
        p.name for p in (tmp_path / "b" / "bach").iterdir()
    )
    summary = ingest_dir(
        tmp_path / "a", tmp_path / "interim", source="corpus", params=DEFAULT_PARAMS, progress=False
    )
    assert summary.rejects == 0 and summary.pieces == len(rows)
    pieces = read_store(tmp_path / "interim" / "pieces.parquet", "pieces")
    assert (pieces["style"] == "Johann Sebastian Bach").all()


def test_corpus_params_name_the_bad_key():
    with pytest.raises(ParamsError, match="'corpus'.*unknown collection"):
        from_mapping(
            {"collections": ["nobody"], "max_files": 0, "workers": 0}, corpus.Params, "corpus"
        )
    with pytest.raises(ParamsError, match="max_files must be >= 0"):
        from_mapping(
            {"collections": ["bach"], "max_files": -1, "workers": 0}, corpus.Params, "corpus"
        )
