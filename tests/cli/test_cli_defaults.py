"""Every option of every command accepts its own default given explicitly, and every help page reads well.

Commands and options are read from the typer app, so a new option is covered without editing this file;
a new command fails :func:`test_every_command_names_its_library_entry_point` until it is added to
``ENTRY_POINTS`` and ``BASE_ARGUMENTS``.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
from enum import Enum

import pytest
import typer
from cli_helpers import assert_error, invoke
from typer.testing import CliRunner

from sdetool.cli import app
from sdetool.cli import help as clihelp
from sdetool.cli.common import DEFAULT_DATA, DEFAULT_MODEL
from sdetool.extract.data.items import ItemSource

# The library function each command hands its work to (the commands import it when they run, so a
# stand-in set on the module is what they call), and the fewest arguments the command runs with.
# The command line reaches the library through sdetool.api (docs/architecture.md): each command's call there.
ENTRY_POINTS = {
    "analyze": ("sdetool.api", "analyze"),
    "extract": ("sdetool.api", "extract"),
    "models": ("sdetool.api", "backend_status"),
    "finetune": ("sdetool.api", "finetune"),
    "compare": ("sdetool.api", "compare"),
    "plot": ("sdetool.api", "plot"),
    "reproduce": ("sdetool.api", "reproduce"),
    "export": ("sdetool.api", "export"),
}
BASE_ARGUMENTS = {
    "analyze": ["builtin:spiked"],
    "extract": ["--out", "store.h5"],
    "models": [],
    "finetune": ["--out", "run"],
    "compare": ["before.json", "after.json"],
    "plot": ["spectrum", "report.json", "--out", "figure.png"],
    "reproduce": ["--out", "results"],
    "export": ["store.h5", "--out", "folder"],
}
ROOT = typer.main.get_command(app)
COMMANDS = dict(sorted(ROOT.commands.items()))
PYTHON_TYPES = re.compile(r"<(list\[|bool>|int|float|str>|tuple)|\{\w+\}")


class _Reached(BaseException):
    """Raised by the stand-in library function: the command got there; nothing is rendered or written."""


def _options(command) -> list:
    return [param for param in command.params if param.param_type_name == "option"]


def _skip_reason(param) -> str | None:
    """Why an option has no explicit default form; None when it has one (:func:`clihelp.default_words`)."""
    if clihelp.default_words(param) is not None:
        return None
    if param.required:
        return "required: no default"
    if param.is_flag:
        return "plain flag, off by default: only its absence gives the default"
    return "default None that documents no value"


CASES = [pytest.param(name, param.name, id=f"{name} {clihelp.long_name(param)}")
         for name, command in COMMANDS.items() for param in _options(command) if _skip_reason(param) is None]
SKIPPED = {f"{name} {clihelp.long_name(param)}": _skip_reason(param)
           for name, command in COMMANDS.items() for param in _options(command) if _skip_reason(param) is not None}


def _comparable(value):
    """A value to compare two library calls by: options by value, item sources by what they hold."""
    if isinstance(value, ItemSource):
        return "ItemSource", value.kind, value.location, value.fingerprint()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return type(value).__name__, tuple((field.name, _comparable(getattr(value, field.name)))
                                           for field in dataclasses.fields(value))
    if isinstance(value, (list, tuple)):
        return tuple(_comparable(item) for item in value)
    if isinstance(value, dict):
        return {key: _comparable(item) for key, item in value.items()}
    if value is None or isinstance(value, (str, int, float, Enum)):
        return value
    return f"<{type(value).__name__}>"  # a progress display or stage reporter: made anew by every run


def _library_call(monkeypatch, name: str, arguments: list[str]):
    """Run ``sdetool NAME ARGUMENTS`` up to its library call; the call's arguments, comparable."""
    module_name, function_name = ENTRY_POINTS[name]
    calls = []

    def stand_in(*args, **kwargs):
        calls.append((args, kwargs))
        raise _Reached

    monkeypatch.setattr(importlib.import_module(module_name), function_name, stand_in)
    try:
        result = CliRunner().invoke(app, [name, *arguments])
    except _Reached:
        args, kwargs = calls[0]
        return _comparable(args), _comparable(kwargs)
    pytest.fail(f"sdetool {name} {' '.join(arguments)} stopped before the library (exit {result.exit_code}): "
                f"{result.output}")


@pytest.fixture(scope="module")
def baselines():
    """The library call of each command with its base arguments alone, made once per command."""
    return {}


@pytest.fixture
def in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative outputs, should anything be written, land here
    return tmp_path


# --- every option accepts its default ------------------------------------------------------------


def test_every_command_names_its_library_entry_point():
    assert set(ENTRY_POINTS) == set(COMMANDS) == set(BASE_ARGUMENTS)


@pytest.mark.parametrize("name", list(COMMANDS))
def test_base_arguments_reach_the_library(name, monkeypatch, in_tmp_path, baselines):
    args, kwargs = _library_call(monkeypatch, name, BASE_ARGUMENTS[name])  # pytest.fail if it stops before
    # every command but models (which lists the backends) passes its inputs and options on
    assert bool(args or kwargs) is (name != "models"), (name, args, kwargs)
    baselines[name] = (args, kwargs)


@pytest.mark.parametrize("name, param_name", CASES)
def test_option_given_its_default_explicitly_changes_nothing(name, param_name, monkeypatch, in_tmp_path, baselines):
    param = next(param for param in COMMANDS[name].params if param.name == param_name)
    words = clihelp.default_words(param)
    if name not in baselines:
        baselines[name] = _library_call(monkeypatch, name, BASE_ARGUMENTS[name])
    explicit = _library_call(monkeypatch, name, [*BASE_ARGUMENTS[name], *words])
    assert explicit == baselines[name], f"sdetool {name} {' '.join(words)} differs from leaving it out"


def test_skipped_options_are_the_ones_without_an_explicit_default():
    """The skip list comes from the rule above, never from a list of names: check the rule on raw attributes."""
    for name, command in COMMANDS.items():
        for param in _options(command):
            label = f"{name} {clihelp.long_name(param)}"
            plain_flag_off = param.is_flag and not param.secondary_opts and not param.default
            undocumented_none = param.default is None and not isinstance(param.show_default, str)
            assert (label in SKIPPED) == (param.required or plain_flag_off or undocumented_none), label
    assert SKIPPED["analyze --quiet"].startswith("plain flag") and SKIPPED["plot --out"].startswith("required")
    covered = {case.id for case in CASES}
    assert {"finetune --model", "finetune --data", "extract --data", "analyze --center", "analyze --l2",
            "analyze --alpha-window", "finetune --freeze-text"} <= covered
    assert len(covered) > len(SKIPPED)


def test_documented_defaults_are_the_library_defaults():
    from sdetool.extract.data.items import DEFAULT_DATA as library_data
    from sdetool.extract.models import DEFAULT_MODEL as library_model

    assert (DEFAULT_MODEL, DEFAULT_DATA) == (library_model, library_data)


def test_finetune_given_its_documented_defaults_runs_as_without_them(monkeypatch, in_tmp_path):
    base = _library_call(monkeypatch, "finetune", ["--out", "runs/x"])
    explicit = _library_call(monkeypatch, "finetune", ["--model", DEFAULT_MODEL, "--data", DEFAULT_DATA,
                                                        "--out", "runs/x"])
    assert explicit == base


def test_finetune_head_still_refuses_data_options(in_tmp_path):
    assert_error(invoke("finetune", "--target", "head", "--data", DEFAULT_DATA, "--out", "run"), 2,
                 "--target head trains on cached pairs")


# --- help ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [None, *COMMANDS], ids=lambda name: name or "sdetool")
def test_every_command_and_option_has_help(name):
    command = COMMANDS[name] if name else ROOT
    assert clihelp.description(command.help) and clihelp.short_description(command)
    for param in command.params:
        assert (getattr(param, "help", "") or "").strip(), f"{name or 'sdetool'}: {param.name} has no help"


def _help(*arguments: str) -> str:
    result = CliRunner().invoke(app, list(arguments), env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    return result.stdout


@pytest.mark.parametrize("name", [None, *COMMANDS], ids=lambda name: name or "sdetool")
def test_help_fits_80_columns_and_names_no_python_types(name):
    prefix = [name] if name else []
    page = _help(*prefix, "--help")
    assert page == _help(*prefix, "-h")
    lines = page.splitlines()
    assert lines[0].startswith("Usage: ") and "[OPTIONS]" in lines[0]
    assert [line for line in lines if len(line) > 80] == []
    assert PYTHON_TYPES.search(page) is None, PYTHON_TYPES.search(page)
    assert len(lines) <= 80, f"{len(lines)} lines: keep the help short and move details to OPTION_DETAILS"
    assert "-h, --help" in page


def test_help_shows_clean_values_defaults_and_panels():
    page = _help("analyze", "--help")
    assert page.startswith("Usage: sdetool analyze [OPTIONS] INPUT...\n")
    assert re.search(r"\n  --noise-estimator \[median\|median-gd\|mppca\|iqr\]\n +Noise level estimator\. "
                     r"\[default: median\]\n", page)
    assert re.search(r"\n  --center / --no-center +\S.*\[default: --center\]\n", page)
    assert re.search(r"\n  --alpha-window FIRST LAST +\S.*\[default: 10 100\]\n", page)
    assert page.index("\nOptions:\n") < page.index("\nBand views:\n")
    assert "json-schema.md" not in page  # the docstring after its form feed is for docs/cli.md only
    assert "KIND INPUT...\n" in _help("plot", "--help")
