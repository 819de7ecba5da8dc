"""Driving the CLI in-process, and the checks every CLI test makes (shared by several test files)."""

import re

from typer.testing import CliRunner

from sdetool.cli import app

# One line of sdetool.cli.progress.PlainProgress: what stderr holds besides messages when it is no terminal.
PROGRESS_LINE = re.compile(
    r"^sdetool: (?P<label>.+): (?P<done>[\d,]+)/(?P<total>[\d,]+) (?P<unit>\w+)(?: \((?P<share>\d+)%\))?, "
    r"(?P<rate>\?|[\d,.]+) (?P=unit)/s, elapsed (?P<elapsed>\d+:\d\d:\d\d), "
    r"(?P<outlook>ETA (?:\?|\d+:\d\d:\d\d)|done|stopped)(?:, (?P<status>.+))?$")


def message_lines(stderr: str) -> list[str]:
    """The non-blank lines of ``stderr`` that are not progress lines."""
    return [line for line in stderr.splitlines() if line.strip() and not PROGRESS_LINE.match(line)]


def invoke(*args):
    """Run ``sdetool ARGS...`` in-process (a single list or tuple argument is the whole command line)."""
    if len(args) == 1 and isinstance(args[0], (list, tuple)):
        args = tuple(args[0])
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_ok(result):
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    return result


def assert_error(result, code: int, *fragments: str) -> str:
    """Exit ``code``, no traceback, exactly one line on stderr naming the problem, after the progress lines of
    the work it stopped (when stderr is no terminal); returns it."""
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = message_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert result.stderr.rstrip().splitlines()[-1] == lines[0], result.stderr  # the last line
    assert lines[0].startswith("sdetool: error: "), lines[0]
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]
