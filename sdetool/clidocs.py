"""Generate ``docs/cli.md`` from the commands' own help (a test fails when the file is stale).

Run ``python -m sdetool.clidocs > docs/cli.md`` after changing a command or an option.
"""

from __future__ import annotations

import typer

from sdetool.cli import app

HEADER = """# Command-line reference

Generated from the commands' help by `python -m sdetool.clidocs > docs/cli.md`; do not edit by hand.
Exit codes: 0 success, 1 a `--fail-if` check failed, 2 bad input or usage (one line on stderr),
3 an internal error (a bug: one line; `SDETOOL_DEBUG=1` shows the traceback).
"""


def _usage(command, name: str) -> str:
    pieces = [f"sdetool {name}" if name else "sdetool"]
    for param in command.params:
        if param.param_type_name == "argument":
            metavar = (param.metavar or param.name).upper()
            pieces.append(f"{metavar}..." if param.nargs == -1 else metavar)
    pieces.append("[OPTIONS]")
    return " ".join(pieces)


def _flags(param) -> str:
    names = list(param.opts) + list(param.secondary_opts)
    return ", ".join(f"`{name}`" for name in names)


def _default(param) -> str:
    if param.is_flag and param.secondary_opts:
        return f"`{param.opts[0] if param.default else param.secondary_opts[0]}`"
    if param.default is None or param.is_flag and not param.default or param.required:
        return ""
    value = param.default
    if isinstance(value, (list, tuple)):
        return "`" + " ".join(str(getattr(v, "value", v)) for v in value) + "`" if value else ""
    return f"`{getattr(value, 'value', value)}`"


def _kind(param, context) -> str:
    if getattr(param, "is_flag", False):
        return "flag"
    if param.metavar and param.param_type_name == "option":
        return f"`{param.metavar}`"
    return param.display_type(context).strip("<>").replace("|", " \\| ")


def _command_section(command, name: str) -> list[str]:
    context = typer.Context(command)
    lines = [f"## `sdetool {name}`", "", (command.help or "").strip(), "", "```", _usage(command, name), "```", ""]
    arguments = [p for p in command.params if p.param_type_name == "argument"]
    for param in arguments:
        help_text = getattr(param, "help", "") or ""
        lines.append(f"- `{(param.metavar or param.name).upper()}`: {help_text}")
    if arguments:
        lines.append("")
    options = [p for p in command.params if p.param_type_name == "option"]
    lines += ["| option | value | default | description |", "| --- | --- | --- | --- |"]
    for param in options:
        text = (param.help or "").replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {_flags(param)} | {_kind(param, context)} | {_default(param)} | {text} |")
    lines.append("")
    return lines


def render() -> str:
    """The whole reference as markdown."""
    root = typer.main.get_command(app)
    lines = [HEADER, "```", "sdetool [--version] [--help] COMMAND ...", "```", ""]
    for name in sorted(root.commands):
        lines += _command_section(root.commands[name], name)
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(render(), end="")
