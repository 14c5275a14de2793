"""The `etude` CLI: help text and one-line errors for bad input."""

from typer.testing import CliRunner

from pipeline.cli import app

runner = CliRunner()


def test_cli_help_lists_stages():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("fetch", "ingest", "represent", "validate", "train", "evaluate", "report"):
        assert command in result.output


def test_cli_fetch_unknown_source_names_the_key(tmp_path):
    result = runner.invoke(app, ["fetch", "napster", "--out", str(tmp_path / "raw")])
    assert result.exit_code == 1
    assert "'sources' has unknown entry 'napster'" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "raw").exists()


def test_cli_fetch_negative_max_files_names_the_key(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text("corpus: {collections: [bach], max_files: -3, workers: 1}\n")
    result = runner.invoke(
        app, ["fetch", "corpus", "--out", str(tmp_path / "raw"), "--params", str(params)]
    )
    assert result.exit_code == 1
    assert "'corpus': max_files must be >= 0" in result.output
