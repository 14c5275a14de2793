import csv
import re

import pytest

from pipeline.core.params import ParamsError, default_params, from_mapping
from pipeline.core.stores import read_store
from pipeline.ingest import IngestParams, ingest_dir
from pipeline.sources import corpus
from pipeline.validation import ValidateParams, validate_store

DEFAULT_PARAMS = default_params("ingest", IngestParams)
VALIDATE = default_params("validate", ValidateParams)


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


# versions of one work the corpus ships under different names (music21's Bach collection)
VERSIONS = {
    "bwv281": ["bwv281.krn", "bwv281.mxl", "riemenschneider006.rntxt"],
    "bwv190_7": ["bwv190.7.mxl", "bwv190.7-inst.mxl"],
    "bwv248_64": ["bwv248.64-6.mxl", "bwv248.64-s.mxl"],
    "bwv248_9": ["bwv248.9-1.mxl", "bwv248.9-s.mxl"],
    "bwv248_12": ["bwv248.12-2.mxl", "riemenschneider009.rntxt"],
    "bwv18_5": ["bwv18.5-lz.mxl", "bwv18.5-w.mxl"],
    "bwv69_6": ["bwv69.6-a.mxl", "bwv69.6.xml"],
}


def test_work_key_on_every_name_the_corpus_exports():
    """The grouping of all 433 real Bach scores, without exporting them."""
    scores = corpus.list_scores(["bach"])
    assert len(scores) == 433
    keys = {path.name: corpus.work_key(path) for _, path in scores}
    for key, names in VERSIONS.items():
        assert {keys[n] for n in names} == {key}, names
    assert keys["bwv145-a.mxl"] == "bwv145" != keys["bwv145.5.mxl"] == "bwv145_5"
    assert all(re.fullmatch(r"bwv\d+(_\d+)?", k) for k in keys.values())
    # every analysis belongs to a chorale the corpus also has as a score
    scored = {k for n, k in keys.items() if not n.endswith(".rntxt")}
    analyses = {n: k for n, k in keys.items() if n.endswith(".rntxt")}
    assert len(analyses) == 20 and set(analyses.values()) <= scored
    assert len(set(keys.values())) == 401  # 433 scores of 401 works
    names = [corpus.export_name(p) for _, p in corpus.list_scores(list(corpus.COMPOSERS))]
    assert len(names) == len(set(names))  # beethoven/opus18no1/movement1 vs opus59no1/...
    one = [p for _, p in corpus.list_scores(["beethoven"]) if p.stem == "movement1"]
    assert {corpus.work_key(p) for p in one if "opus18no1" in str(p)} == {
        "beethoven/opus18no1/movement1"
    }


def test_versions_of_a_work_share_a_split_after_a_real_export(tmp_path):
    wanted = {n for names in VERSIONS.values() for n in names}
    scores = [s for s in corpus.list_scores(["bach"]) if s[1].name in wanted]
    assert len(scores) == len(wanted)
    corpus.export(scores, tmp_path / "raw", workers=2)
    with open(tmp_path / "raw" / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["group"] for r in rows} <= set(VERSIONS) and all(r["split"] == "" for r in rows)
    ingest_dir(
        tmp_path / "raw",
        tmp_path / "interim",
        source="corpus",
        params=DEFAULT_PARAMS,
        progress=False,
    )
    pieces = read_store(tmp_path / "interim" / "pieces.parquet", "pieces")
    assert len(pieces) == len(rows) >= 12  # identical-note duplicates are dropped at export
    assert (pieces.groupby("group")["split"].nunique() == 1).all()
    assert (pieces.groupby("fingerprint")["split"].nunique() == 1).all()
    assert pieces["group"].nunique() == len(VERSIONS)
    result = validate_store("notes", tmp_path / "interim", VALIDATE)
    leaks = [c for c in result["checks"] if c["table"] == "split_leaks"]
    assert len(leaks) == 2 and all(c["success"] for c in leaks)
