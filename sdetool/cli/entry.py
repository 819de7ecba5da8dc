"""The ``sdetool`` command line: parse -> one library call -> render. Exit codes: 0 ok, 1 a ``--fail-if``
check failed, 2 bad input or usage, 3 a bug, 4 a training failure. Heavy modules are imported inside the
commands so that ``sdetool --help`` is instant.

Each command group is one module that registers its commands on :data:`sdetool.cli.common.app`; this module
imports them all and holds the console-script entry point."""

from __future__ import annotations

import sys
from typing import List, Optional

import typer

from sdetool.cli import analyze as cli_analyze
from sdetool.cli import export as cli_export
from sdetool.cli import extract as cli_extract
from sdetool.cli import finetune as cli_finetune
from sdetool.cli import results as cli_results
from sdetool.cli.common import EXIT_BAD_INPUT, _print_error, app

# Every module that registers commands (sdetool.cli.docs reads their OPTION_DETAILS).
COMMAND_MODULES = (cli_analyze, cli_extract, cli_finetune, cli_results, cli_export)


def main(argv: Optional[List[str]] = None) -> None:
    """Console-script entry point: usage errors too become one line on stderr and exit code 2."""
    try:
        from typer.exceptions import TyperException
    except ImportError:  # typer before it vendored click
        from click.exceptions import ClickException as TyperException

    command = typer.main.get_command(app)
    try:
        code = command.main(args=argv, prog_name="sdetool", standalone_mode=False)
    except TyperException as error:
        if not hasattr(error, "format_message"):  # Abort (Ctrl-C at a prompt) and the like
            _print_error("interrupted")
            sys.exit(130)
        context = getattr(error, "ctx", None)
        if type(error).__name__ == "NoArgsIsHelpError":  # bare 'sdetool': the help page, and exit 2 as click does
            typer.echo(context.get_help())
            sys.exit(EXIT_BAD_INPUT)
        hint = f" (see '{context.command_path} --help')" if context is not None else ""
        _print_error(error.format_message() + hint)
        sys.exit(getattr(error, "exit_code", EXIT_BAD_INPUT))
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":  # pragma: no cover
    main()
