"""Generate ``docs/cli.md`` from the commands' own help (a test fails when the file is stale).

Run ``python -m sdetool.cli.docs > docs/cli.md`` after changing a command or an option.

``--help`` keeps to one short line per option; the reference adds what did not fit. It comes from two
places next to the commands: the ``OPTION_DETAILS`` mapping of each CLI module (command name -> option's
long name, or an argument's metavar -> text), and the part of a command's docstring after a form feed
(``\\f``), which ``--help`` leaves out.
"""

from __future__ import annotations

import typer

from sdetool.cli import app
from sdetool.cli import entry as cli
from sdetool.cli import help as clihelp

HEADER = """# Command-line reference

Generated from the commands' help by `python -m sdetool.cli.docs > docs/cli.md`; do not edit by hand.
`sdetool COMMAND -h` (or `--help`) prints the short form of a command's section.
Exit codes: 0 success, 1 a `--fail-if` check failed, 2 bad input or usage (one line on stderr),
3 an internal error (a bug: one line; `SDETOOL_DEBUG=1` shows the traceback).
"""


def option_details() -> dict[str, dict[str, str]]:
    """Every CLI module's ``OPTION_DETAILS``, merged: command -> option long name or argument metavar -> text."""
    merged: dict[str, dict[str, str]] = {}
    for module in cli.COMMAND_MODULES:
        for command, entries in module.OPTION_DETAILS.items():
            merged.setdefault(command, {}).update(entries)
    return merged


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def _range(param) -> str:
    low, high = getattr(param, "min", None), getattr(param, "max", None)
    if low is not None and high is not None:
        return f" ({low} to {high})"
    if low is not None:
        return f" (>= {low})"
    return f" (<= {high})" if high is not None else ""


def _value(param) -> str:
    if param.is_flag:
        return "flag"
    return _cell(f"`{clihelp.value_name(param)}`{_range(param)}")


def _default(param) -> str:
    if param.required:
        return "required"
    default = clihelp.default_text(param)
    return f"`{default}`" if default is not None else ""


def _described(param, details: dict[str, str], key: str) -> str:
    return _cell(" ".join(part for part in ((getattr(param, "help", "") or ""), details.get(key, "")) if part))


def _option_tables(command, context, details: dict[str, str]) -> list[str]:
    panels: dict[str, list[str]] = {}
    for param in command.params:
        if param.param_type_name != "option" or param.hidden:
            continue
        names = ", ".join(f"`{name}`" for name in [*param.opts, *param.secondary_opts])
        row = f"| {names} | {_value(param)} | {_default(param)} | {_described(param, details, clihelp.long_name(param))} |"
        panels.setdefault(getattr(param, "rich_help_panel", None) or clihelp.DEFAULT_PANEL, []).append(row)
    lines = []
    for title, rows in panels.items():
        lines += [f"**{title}**", "", "| option | value | default | description |", "| --- | --- | --- | --- |",
                  *rows, ""]
    return lines


def _argument_lines(command, details: dict[str, str]) -> list[str]:
    lines = []
    for param in command.params:
        if param.param_type_name == "argument":
            choices = clihelp.choice_values(param)
            kinds = f" (`{' | '.join(choices)}`)" if choices else ""
            name = (param.metavar or param.name).upper()
            lines.append(f"- `{clihelp.argument_label(param)}`{kinds}: {_described(param, details, name)}")
    return lines + [""] if lines else []


def _command_section(command, name: str, details: dict[str, str]) -> list[str]:
    context = typer.Context(command)
    usage = " ".join([f"sdetool {name}", *command.collect_usage_pieces(context)])
    text = "\n\n".join(part.strip() for part in (command.help or "").split("\f") if part.strip())
    lines = [f"## `sdetool {name}`", "", text, "", "```", usage, "```", ""]
    return lines + _argument_lines(command, details) + _option_tables(command, context, details)


def render() -> str:
    """The whole reference as markdown."""
    root = typer.main.get_command(app)
    details = option_details()
    lines = [HEADER, "```", "sdetool [--version] [-h | --help] COMMAND ...", "```", ""]
    for name in sorted(root.commands):
        lines += _command_section(root.commands[name], name, details.get(name, {}))
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(render(), end="")
