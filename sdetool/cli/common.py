"""What every command module shares: the app, the error boundary, exit codes, option enums and
shared options. It imports nothing of sdetool's library (commands reach it through :mod:`sdetool.api`).
"""

from __future__ import annotations

import functools
import os
import sys
from enum import Enum

import typer
from rich.console import Console
from rich.markup import escape

from sdetool import __version__
from sdetool.cli.help import HelpGroup
from sdetool.errors import SdetoolError, TrainingError, TrainingInterrupted

app = typer.Typer(
    name="sdetool",
    cls=HelpGroup,
    help="See, measure and repair the spectral structure of embeddings (strong / weak / noise subspaces).",
    epilog="Run 'sdetool COMMAND -h' for the options of a command.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help is plain text from sdetool.cli.help; option help holds brackets, not markup
    context_settings={"help_option_names": ["-h", "--help"]},
)

# The defaults the library applies when the option is left out, as the CLI documents them (show_default);
# given explicitly they mean the same thing (tests/cli/test_cli_defaults.py).
DEFAULT_MODEL = "builtin:lit-fmnist"
DEFAULT_DATA = "builtin:fashion-mnist"

EXIT_OK, EXIT_CHECK_FAILED, EXIT_BAD_INPUT, EXIT_INTERNAL = 0, 1, 2, 3
EXIT_TRAINING_FAILED = 4  # a NaN loss: the inputs were fine, the optimisation was not


def stderr_console() -> Console:
    return Console(stderr=True, highlight=False)


def _print_error(message: str, kind: str = "error") -> None:
    if os.environ.get("RANK", "0") != "0":  # under torchrun every rank fails alike: rank 0 speaks
        return
    stderr_console().print(f"[bold red]sdetool: {kind}:[/] {escape(message)}", soft_wrap=True)


def fail(message: str, code: int = EXIT_BAD_INPUT) -> None:
    """Print one error line on stderr and exit (inside a command)."""
    _print_error(message)
    raise typer.Exit(code)


def handles_errors(command):
    """Turn library errors into one-line messages and exit code 2 (the CLI's one error boundary)."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            result = command(*args, **kwargs)
            _leave_process_group(wait=True)
            return result
        except typer.Exit:
            raise
        except TrainingInterrupted as error:
            fail(str(error), 130)
        except TrainingError as error:
            fail(str(error), EXIT_TRAINING_FAILED)
        except SdetoolError as error:
            fail(str(error))
        except KeyboardInterrupt:
            fail("interrupted; no output was written", 130)
        except MemoryError:
            fail("out of memory; try a smaller --block-rows or --sample", EXIT_BAD_INPUT)
        except Exception as error:  # the last resort: never exit 1 (a failed check) with a traceback
            if os.environ.get("SDETOOL_DEBUG"):
                raise
            _print_error(f"{type(error).__name__}: {error} (a bug: please report it; SDETOOL_DEBUG=1 shows the "
                         f"traceback)", kind="internal error")
            raise typer.Exit(EXIT_INTERNAL) from None
        finally:
            _leave_process_group(wait=False)  # after an error: leave without waiting for ranks that may be gone

    return wrapper


def _leave_process_group(wait: bool) -> None:
    """Under torchrun: wait for every rank (after success), then leave the process group.

    A rank that exits while still in the group can abort at exit ("terminate called without an active
    exception"), turning a finished job into a failed one.
    """
    if "torch.distributed" not in sys.modules:
        return
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if wait:
            dist.barrier()
        dist.destroy_process_group()


def finish_checks(outcomes, console: Console) -> None:
    """Print the failed ``--fail-if`` checks on stderr and exit 1 when there is one."""
    from sdetool import api

    api.render_checks(outcomes, console)
    if any(outcome.failed for outcome in outcomes):
        raise typer.Exit(EXIT_CHECK_FAILED)


class NoiseEstimator(str, Enum):
    median = "median"
    median_gd = "median-gd"
    mppca = "mppca"
    iqr = "iqr"


class Null(str, Enum):
    ddpa = "ddpa"
    dpa = "dpa"
    mp = "mp"
    permutation = "permutation"


NULL_PANEL = "Noise null, sample size and uncertainty"


def null_option():
    return typer.Option(Null.ddpa, "--null", help="Noise null that places the noise edge.", rich_help_panel=NULL_PANEL)


def null_repeats_option():
    return typer.Option(10, "--null-repeats", metavar="R", help="permutation: column permutations.", min=1,
                        rich_help_panel=NULL_PANEL)


def null_rows_option():
    return typer.Option(10000, "--null-rows", metavar="N", help="permutation: rows of the permuted sample.", min=2,
                        rich_help_panel=NULL_PANEL)


class StrongRule(str, Enum):
    iqr = "iqr"
    gd = "gd"


class SpatialCenter(str, Enum):
    channel = "channel"
    image = "image"
    none = "none"


def _index_list(text: str | None, option: str) -> tuple | None:
    """``"10,50"`` -> ``(10, 50)``; anything else is refused naming the option."""
    if text is None:
        return None
    from sdetool.errors import BadInputError

    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise BadInputError(f"{option} {text!r}: expected comma-separated integers, e.g. 10,50") from None


class Energy(str, Enum):
    power = "power"
    amplitude = "amplitude"


def _version(value: bool) -> None:
    if value:
        typer.echo(f"sdetool {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """See, measure and repair the spectral structure of embeddings (strong / weak / noise subspaces)."""


class Precision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


class StoreDtype(str, Enum):
    float32 = "float32"
    float16 = "float16"
