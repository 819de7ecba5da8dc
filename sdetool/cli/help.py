"""Plain help pages for the ``sdetool`` commands: short, wrapped to the terminal, free of Python types.

Every command is a :class:`HelpCommand` and the app a :class:`HelpGroup`; both print

    Usage: sdetool analyze [OPTIONS] INPUT...

      The description (the docstring up to a form feed; what follows it is for docs/cli.md only).

    Options:
      -k, --key NAME          Set to analyze (repeatable; default: all).
      --center / --no-center  Subtract column means first. [default: --center]

with the options grouped by their ``rich_help_panel`` and each value named as a user types it: the
option's metavar, its choices (``[median|mppca]``), ``INT``, ``FLOAT`` or ``TEXT`` (read from typer's
``type_descriptor``, or click's ``param.type``). The same helpers name values and defaults in
``docs/cli.md`` (:mod:`sdetool.cli.docs`), and :func:`default_words` is what a test types to check that
every option accepts its own default.
"""

from __future__ import annotations

import shutil
import textwrap
import typing

from typer.core import TyperCommand, TyperGroup

MIN_WIDTH, MAX_WIDTH, FALLBACK_WIDTH = 50, 100, 80
DEFAULT_PANEL = "Options"
ARGUMENTS_PANEL = "Arguments"
TYPE_NAMES = {int: "INT", float: "FLOAT", str: "TEXT"}
KEEP_TOGETHER = "\xa0"  # joins words that wrapping must not part, e.g. "[default: x]"; a space once printed


def help_width(ctx) -> int:
    """Columns to wrap to: the context's ``terminal_width``, else the terminal (``COLUMNS`` first), 50 to 100."""
    columns = ctx.terminal_width or shutil.get_terminal_size((FALLBACK_WIDTH, 24)).columns
    return max(MIN_WIDTH, min(columns, MAX_WIDTH))


def description(help_text: str | None) -> str:
    """The part of a docstring shown in ``--help``: everything before the first form feed."""
    return textwrap.dedent(help_text or "").partition("\f")[0].strip()


def short_description(command) -> str:
    """One line for a command list: ``short_help``, else the first paragraph of the help."""
    return command.short_help or description(command.help).split("\n\n")[0].replace("\n", " ")


# --- values, names and defaults of one parameter ---------------------------------------------------


def choice_values(param) -> tuple[str, ...]:
    """The values a choice parameter accepts, as typed (``("median", "median-gd", ...)``); empty for others."""
    descriptor = getattr(param, "type_descriptor", None)
    choices = getattr(descriptor, "choices", None) or getattr(getattr(param, "type", None), "choices", None) or ()
    return tuple(str(getattr(choice, "value", choice)) for choice in choices)


def _value_types(param) -> tuple:
    """The Python type of each value an option takes: ``(int, int)`` for a pair, ``(str,)`` for a list."""
    annotation = getattr(getattr(param, "type_descriptor", None), "annotation", None)
    origin, arguments = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is tuple:
        return arguments
    if origin is list:
        return arguments[:1]
    return (annotation,)


def value_name(param) -> str:
    """How help names a parameter's value: its metavar, ``[a|b|c]`` for choices, else ``INT`` / ``FLOAT`` / ``TEXT``."""
    if param.metavar:
        return param.metavar
    choices = choice_values(param)
    if choices:
        return "[" + "|".join(choices) + "]"
    return " ".join(TYPE_NAMES.get(value_type, "VALUE") for value_type in _value_types(param))


def _short_first(names) -> list[str]:
    return sorted(names, key=lambda name: name.startswith("--"))


def option_label(param) -> str:
    """``-k, --key NAME``; a flag pair reads ``--center / --no-center``."""
    label = ", ".join(_short_first(param.opts))
    if param.secondary_opts:
        label += " / " + ", ".join(_short_first(param.secondary_opts))
    if not param.is_flag:
        label += " " + value_name(param)
    return label


def argument_label(param) -> str:
    """``INPUT...`` for a variadic argument (unless its metavar already says how many), else ``KIND``."""
    name = (param.metavar or param.name).upper()
    many = param.nargs == -1 and not name.endswith("...") and "[" not in name
    return f"{name}..." if many else name


def long_name(param) -> str:
    """The option's first ``--name`` (what docs and tests type)."""
    return next((name for name in param.opts if name.startswith("--")), param.opts[0])


def default_words(param) -> list[str] | None:
    """The command-line words that give an option's default explicitly; None when it has no such form.

    ``--center`` for a flag pair on by default (``--no-l2`` for one off), ``--alpha-window 10 100``, and
    for an option whose default is decided later (``None``) the value its ``show_default`` string
    documents, ``--model builtin:lit-fmnist``. A plain flag off by default, a required option and a
    ``None`` default that documents no value have none.
    """
    if param.param_type_name != "option" or param.required:
        return None
    if param.is_flag:
        if param.secondary_opts:
            return [param.opts[0] if param.default else param.secondary_opts[0]]
        return [param.opts[0]] if param.default else None
    if isinstance(param.show_default, str):
        values = [param.show_default]
    elif param.default is None:
        return None
    else:
        values = list(param.default) if isinstance(param.default, (list, tuple)) else [param.default]
    if not values:
        return None
    texts = [str(getattr(value, "value", value)) for value in values]
    if param.multiple:
        return [word for text in texts for word in (long_name(param), text)]
    return [long_name(param), *texts]


def default_text(param) -> str | None:
    """The default as help shows it: ``--center``, ``10 100``, ``builtin:lit-fmnist``; None when there is none."""
    if param.show_default is False:
        return None
    words = default_words(param)
    if words is None:
        return None
    if param.is_flag:
        return words[0]
    return " ".join(words[1::2] if param.multiple else words[1:])


# --- the page ---------------------------------------------------------------------------------------


def _option_text(param) -> str:
    text = " ".join((param.help or "").split())
    default = default_text(param)
    if default is not None:
        text += " " + f"[default: {default}]".replace(" ", KEEP_TOGETHER)
    if param.required:
        text += " [required]"
    return text.strip()


def panels(command, ctx) -> list[tuple[str, list[tuple[str, str]]]]:
    """``(title, rows)`` per section: arguments, the plain options (with help), then each named panel."""
    sections: dict[str, list[tuple[str, str]]] = {ARGUMENTS_PANEL: [], DEFAULT_PANEL: []}
    for param in command.get_params(ctx):
        if getattr(param, "hidden", False):
            continue
        if param.param_type_name == "argument":
            sections[ARGUMENTS_PANEL].append((argument_label(param), " ".join((getattr(param, "help", "") or "").split())))
        else:
            panel = getattr(param, "rich_help_panel", None) or DEFAULT_PANEL
            sections.setdefault(panel, []).append((option_label(param), _option_text(param)))
    return [(title, rows) for title, rows in sections.items() if rows]


def definition_lines(rows: list[tuple[str, str]], column: int, width: int) -> list[str]:
    """Rows as ``  LABEL  text``, the text wrapped at ``width`` in a column; a longer label gets its own line."""
    indent = " " * (2 + column + 2)
    lines = []
    for label, text in rows:
        wrapped = textwrap.wrap(text, width - len(indent), break_long_words=False, break_on_hyphens=False) or [""]
        if len(label) <= column:
            lines.append(f"  {label.ljust(column)}  {wrapped[0]}".rstrip())
            wrapped = wrapped[1:]
        else:
            lines.append(f"  {label}")
        lines += [indent + line for line in wrapped]
    return [line.replace(KEEP_TOGETHER, " ") for line in lines]


def _label_column(sections, width: int) -> int:
    """The widest label that fits the left column (at most about a third of the width)."""
    limit = max(16, width * 7 // 20)
    labels = [len(label) for _, rows in sections for label, _ in rows if len(label) <= limit]
    return max(labels, default=limit)


def _paragraphs(text: str, width: int) -> list[str]:
    lines = []
    for paragraph in text.split("\n\n"):
        lines += textwrap.wrap(" ".join(paragraph.split()), width - 2, initial_indent="  ", subsequent_indent="  ",
                               break_long_words=False, break_on_hyphens=False)
        lines.append("")
    return lines


def page(command, ctx, sections) -> str:
    """The whole help page of ``command``: usage, description, then each section."""
    width = help_width(ctx)
    usage = " ".join([ctx.command_path, *command.collect_usage_pieces(ctx)])
    lines = textwrap.wrap(f"Usage: {usage}", width, subsequent_indent="  ", break_on_hyphens=False) + [""]
    text = description(command.help)
    if text:
        lines += _paragraphs(text, width)
    column = _label_column(sections, width)
    for title, rows in sections:
        lines += [f"{title}:", *definition_lines(rows, column, width), ""]
    if command.epilog:
        lines += _paragraphs(command.epilog, width)
    return "\n".join(lines).rstrip() + "\n"


class HelpCommand(TyperCommand):
    """A typer command whose ``--help`` is :func:`page` (and whose usage names no Python types)."""

    def collect_usage_pieces(self, ctx) -> list[str]:
        arguments = [argument_label(param) for param in self.get_params(ctx) if param.param_type_name == "argument"]
        return [self.options_metavar, *arguments] if self.options_metavar else arguments

    def format_help(self, ctx, formatter) -> None:
        formatter.write(page(self, ctx, panels(self, ctx)))


class HelpGroup(TyperGroup):
    """The ``sdetool`` group: its options, then one line per command."""

    def format_help(self, ctx, formatter) -> None:
        commands = [(name, short_description(self.commands[name])) for name in self.list_commands(ctx)
                    if not self.commands[name].hidden]
        sections = panels(self, ctx) + [("Commands", commands)]
        formatter.write(page(self, ctx, sections))
