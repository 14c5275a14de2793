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


def test_cli_lists_every_command_and_loads_them():
    from pipeline.cli import COMMANDS

    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for name in COMMANDS:
        assert name in result.output
        sub = runner.invoke(app, [name, "--help"])
        assert sub.exit_code == 0, sub.output
        assert "UNAVAILABLE" not in sub.output


def test_cli_broken_module_is_reported_not_hidden(monkeypatch):
    """A command whose module fails to import says why, instead of 'No such command'."""
    import sys

    from pipeline import cli

    monkeypatch.setitem(cli.COMMANDS, "report", ("pipeline.no_such_module", "report_command"))
    monkeypatch.delitem(sys.modules, "pipeline.no_such_module", raising=False)
    result = runner.invoke(app, ["report", "--out", "x.html"])
    assert result.exit_code == 1
    assert "etude report` is unavailable" in result.output
    assert "pipeline.no_such_module" in result.output and "ModuleNotFoundError" in result.output
    assert "No such command" not in result.output


def test_a_stage_command_loads_only_its_own_modules(tmp_path):
    """`etude represent` must not import model, validation or evaluation code."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from pipeline.cli import app\n"
        "CliRunner().invoke(app, ['represent', 'tuples', '--out', 'x'])\n"
        "print(' '.join(sorted(m for m in sys.modules if m.startswith('pipeline'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    ).stdout.split()
    assert "pipeline.representations.tuples" in out
    for other in (
        "pipeline.modeling",
        "pipeline.validation",
        "pipeline.evaluation",
        "pipeline.representations.events",
        "pipeline.sources",
        "pipeline.ingest",
    ):
        assert not any(m == other or m.startswith(other + ".") for m in out), (other, out)
