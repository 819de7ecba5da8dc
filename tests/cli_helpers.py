"""Driving the CLI in-process, and the checks every CLI test makes (shared by several test files)."""

from typer.testing import CliRunner

from sdetool.cli import app


def invoke(*args):
    """Run ``sdetool ARGS...`` in-process (a single list or tuple argument is the whole command line)."""
    if len(args) == 1 and isinstance(args[0], (list, tuple)):
        args = tuple(args[0])
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_ok(result):
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    return result


def assert_error(result, code: int, *fragments: str) -> str:
    """Exit ``code``, no traceback, exactly one non-blank line on stderr naming the problem; returns it."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("sdetool: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]
