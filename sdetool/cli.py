"""The ``sdetool`` command line: parse -> one library call -> render. Exit codes: 0 ok, 1 a ``--fail-if``
check failed, 2 bad input or usage. Heavy modules are imported inside the commands so that
``sdetool --help`` is instant.
"""

from __future__ import annotations

import functools
import os
import sys
from enum import Enum
from typing import List, Optional, Tuple

import typer
from rich.console import Console
from rich.markup import escape

from sdetool import __version__
from sdetool.clihelp import HelpCommand, HelpGroup
from sdetool.errors import SdetoolError, TrainingError, TrainingInterrupted
from sdetool.progressbar import progress_for

app = typer.Typer(
    name="sdetool",
    cls=HelpGroup,
    help="See, measure and repair the spectral structure of embeddings (strong / weak / noise subspaces).",
    epilog="Run 'sdetool COMMAND -h' for the options of a command.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help is plain text from sdetool.clihelp; option help holds brackets, not markup
    context_settings={"help_option_names": ["-h", "--help"]},
)

# The defaults the library applies when the option is left out, as the CLI documents them (show_default);
# given explicitly they mean the same thing (tests/test_cli_defaults.py).
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
    from sdetool import report

    report.render_checks(outcomes, console)
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


# What --help leaves out for brevity: docs/cli.md adds it to each option (see sdetool.clidocs).
OPTION_DETAILS = {
    "analyze": {
        "INPUT": "A store gives every set it holds (or those of --key). Several files are shards of the same sets, "
                 "analyzed as one matrix.",
        "--key": "Two or more sets add the cross-modal section.",
        "--csv": "Columns: key, index, singular value, band, energy share, snr.",
        "--noise-estimator": "median: the median singular value, deflated of the signal components; median-gd: the "
                             "plain Gavish-Donoho median; mppca: Veraart's MP-PCA; iqr: the IQR of the entries / 1.349.",
        "--edge-level": "The nominal probability that pure noise crosses the noise edge (its Tracy-Widom margin); 0 for "
                        "the bare edge. Measured on pure Gaussian noise under mp: 1.4 % of draws at 0.01 with sigma "
                        "known, 1.8-2.6 % with it estimated, 18 % at 0 (docs/method.md).",
        "--strong-rule": "iqr: the Tukey fence Q3 + k IQR of the singular values (k: --iqr-k); gd: Gavish-Donoho.",
        "--energy": "power: the sum of s^2; amplitude: the sum of s.",
        "--top-k": "Their subspace overlap is reported for each pair of sets.",
        "--seed": "It draws the rows of --sample and the iqr estimator's sample of entries.",
        "--alpha-window": "The power law is fitted to the singular values FIRST to LAST.",
        "--device": "Where the float64 Gram matrix is accumulated; auto: a GPU for large inputs when one is present.",
        "--fail-if": "EXPR is PATH OP NUMBER on the JSON report, e.g. 'bands.noise.energy_share > 0.85'; with several "
                     "sets, each set is checked.",
        "--quiet": "Errors and failed checks still print.",
        "--bands": "The components split into K contiguous equal-count bands: energy share, effective rank and, "
                   "with two paired sets, per-band alignment.",
        "--band-starts": "Instead of --bands: 10,50 gives the bands [0,10) [10,50) [50,p).",
        "--spatial-bands": "Prism bands of the stored patch-token grids (extract --tokens): K equal-width radial "
                           "bands of the 2-D spectrum.",
        "--smooth": "The squares of the raised-cosine masks sum to one.",
        "--spatial-center": "channel: each channel's mean over all grids; image: each grid's own means (no zero "
                            "frequency); none: nothing.",
        "--split-image": "The energies of its band components go into the JSON report.",
        "--split-out": "One (K, h, w, c) array per set.",
        "--null": "ddpa (default): independent columns with the matrix's own variances (generalized "
                  "Marchenko-Pastur edge), deflated so that strong components do not hide weaker ones; dpa: the same "
                  "without deflation; mp: one noise level for every entry (the paper's reading; --noise-estimator "
                  "gives it); permutation: Horn's parallel analysis on column-permuted row samples. See "
                  "docs/method.md section 3a for the evidence behind the default.",
        "--null-repeats": "The permutation null measures the mean top singular value of R column-permuted "
                          "samples (plus 1.645 standard errors) against the one the generalized law predicts, and "
                          "corrects the dpa edge by that ratio.",
        "--null-rows": "A seeded uniform sample of rows (all rows when there are fewer); its edge is carried to n "
                       "rows by the generalized law.",
        "--scale": "For each size N, --repeats seeded random subsets of N rows are partitioned like the whole set, "
                   "in the same pass: the JSON's scale list gives the mean and sd of each band's share and count.",
        "--repeats": "Subsets per --scale size.",
        "--bootstrap": "Intervals by the delete-a-block jackknife: the rows split into R hash blocks whose partial "
                       "sums the single pass keeps (memory R d^2); each statistic is recomputed without each block. "
                       "Adds energy_share_ci and count_ci to every band, noise.edge_ci and "
                       "metrics.effective_rank_ci. (A row bootstrap would repeat rows, which shifts the noise bulk.)",
        "--ci-level": "Coverage of the --bootstrap intervals.",
    },
    "extract": {
        "--out": "Its work folder OUT.partial/ holds the finished chunks until the end, so that a run that stops "
                 "resumes where it was.",
        "--model": "hf:ORG/NAME or hf:/folder (CLIP, SigLIP...), st:/folder (a text encoder), open_clip:ARCH@WEIGHTS "
                   "or builtin:lit-fmnist.",
        "--images": "A captions.jsonl beside them pairs each image with a caption.",
        "--manifest": "Image paths are relative to the manifest's folder.",
        "--data": "builtin:fashion-mnist: the test split; builtin:fashion-mnist:train: the train split.",
        "--id-col": "Default: 'id' when the manifest has it, else the row number.",
        "--image-col": "Default: the first of image, path, file, filepath, image_path, filename that the manifest has.",
        "--text-col": "Default: the first of text, caption, sentence, title that the manifest has.",
        "--precision": "Embeddings are stored as float32 unless --store-dtype float16.",
        "--num-workers": "DataLoader workers that decode and preprocess images; default: one per spare core, at "
                         "most 8; 0: in this process.",
        "--device": "auto: a GPU when one is present.",
        "--normalize": "Default: store what the model outputs.",
        "--tokens": "Written as /<key>/tokens (n, h, w, c) float16; analyze --spatial-bands reads it.",
        "--strict": "Default: an unreadable item is recorded in /<key>/failed and the run goes on.",
    },
}


@app.command(cls=HelpCommand, short_help="Spectrum of embedding sets: strong / weak / noise bands, metrics.")
@handles_errors
def analyze(
    inputs: List[str] = typer.Argument(
        ..., metavar="INPUT", show_default=False,
        help="Embeddings: .h5 store, FILE.h5:/dataset, .npy, .npz, .pt, .safetensors or builtin:spiked.",
    ),
    key: Optional[List[str]] = typer.Option(
        None, "--key", "-k", metavar="NAME", help="Set to analyze (repeatable; default: all)."),
    json_path: Optional[str] = typer.Option(None, "--json", help="Write the JSON report here ('-': stdout).", metavar="PATH"),
    csv_path: Optional[str] = typer.Option(
        None, "--csv", help="Write the per-component table here ('-': stdout).", metavar="PATH"),
    center: bool = typer.Option(True, "--center/--no-center", help="Subtract column means first."),
    l2: bool = typer.Option(False, "--l2/--no-l2", help="Scale rows to unit norm first."),
    noise_estimator: NoiseEstimator = typer.Option(NoiseEstimator.median, "--noise-estimator", help="Noise level estimator."),
    edge_level: float = typer.Option(
        0.01, "--edge-level", help="Noise-edge margin (Tracy-Widom).", min=0.0, max=0.5),
    strong_rule: StrongRule = typer.Option(StrongRule.iqr, "--strong-rule", help="Strong threshold rule."),
    iqr_k: float = typer.Option(1.5, "--iqr-k", help="Fence multiplier of the iqr rule.", min=0.0),
    energy: Energy = typer.Option(Energy.power, "--energy", help="Band energy: sum of s^2 or of s."),
    top_k: int = typer.Option(10, "--top-k", help="Directions compared across sets.", min=1),
    sample: Optional[int] = typer.Option(None, "--sample", help="Analyze a seeded random subset of N rows.", metavar="N", min=2),
    seed: int = typer.Option(0, "--seed", help="Seed of the random samples."),
    drop_nonfinite: bool = typer.Option(False, "--drop-nonfinite", help="Leave out rows with NaN or Inf (else refused)."),
    alpha_window: Tuple[int, int] = typer.Option(
        (10, 100), "--alpha-window", metavar="FIRST LAST", help="Power-law fit window (1-based)."),
    block_rows: Optional[int] = typer.Option(
        None, "--block-rows", metavar="N", help="Rows per streamed block (default: ~32 MiB).", min=1),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="Device: auto, cpu, cuda or cuda:N."),
    fail_if: Optional[List[str]] = typer.Option(
        None, "--fail-if", help="Exit 1 when EXPR holds (repeatable).", metavar="EXPR"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress and no tables."),
    bands: Optional[int] = typer.Option(
        None, "--bands", help="Also K equal-count SVD bands (FITMM).", metavar="K", rich_help_panel="Band views"),
    band_starts: Optional[str] = typer.Option(
        None, "--band-starts", help="SVD bands at 0-based start indices, e.g. 10,50.", metavar="I,J,..",
        rich_help_panel="Band views"),
    spatial_bands: Optional[int] = typer.Option(
        None, "--spatial-bands", help="Also K spatial-frequency bands of token grids.", metavar="K",
        rich_help_panel="Band views"),
    smooth: bool = typer.Option(False, "--smooth", help="Raised-cosine band masks instead of hard ones.",
                                rich_help_panel="Band views"),
    spatial_center: SpatialCenter = typer.Option(
        SpatialCenter.channel, "--spatial-center", help="Means removed before the FFT.", rich_help_panel="Band views"),
    split_image: Optional[int] = typer.Option(
        None, "--split-image", help="Also split this 0-based image into its bands.", metavar="I",
        rich_help_panel="Band views"),
    split_out: Optional[str] = typer.Option(
        None, "--split-out", help="Write the --split-image components here (.npz).", metavar="PATH",
        rich_help_panel="Band views"),
    null: Null = null_option(),
    null_repeats: int = null_repeats_option(),
    null_rows: int = null_rows_option(),
    scale: Optional[str] = typer.Option(
        None, "--scale", metavar="N1,N2,..", help="Also band shares of random subsets of these sizes.",
        rich_help_panel=NULL_PANEL),
    repeats: int = typer.Option(10, "--repeats", metavar="R", help="Subsets per --scale size.", min=1,
                                rich_help_panel=NULL_PANEL),
    bootstrap: Optional[int] = typer.Option(
        None, "--bootstrap", metavar="R", help="Jackknife intervals over R blocks of rows.", min=2,
        rich_help_panel=NULL_PANEL),
    ci_level: float = typer.Option(0.9, "--ci-level", help="Coverage of the --bootstrap intervals (0 to 1).",
                                   rich_help_panel=NULL_PANEL),
) -> None:
    """Spectrum of embedding sets: strong / weak / noise bands under a noise null, energy shares, metrics.

    With --bands or --spatial-bands, also the FITMM SVD bands and the Prism spatial-frequency bands.
    \f
    The fields of the JSON report are described in docs/json-schema.md, the method behind each number in
    docs/method.md.
    """
    from sdetool import checks, report
    from sdetool.analysis import AnalysisOptions, analyze as run_analysis
    from sdetool.distributed import current_world
    from sdetool.errors import BadInputError
    from sdetool.results import report_paths

    parsed_checks = [checks.parse_check(text) for text in fail_if or []]
    checks.check_paths(parsed_checks, report_paths())
    report.check_output_path(json_path, "--json")
    report.check_output_path(csv_path, "--csv")
    report.check_output_path(split_out, "--split-out")
    if split_out == "-":
        raise BadInputError("--split-out -: the split is binary (.npz); give a file path")
    if split_out is not None and split_image is None:
        raise BadInputError("--split-out needs --split-image (the image to split)")
    if json_path == "-" and csv_path == "-":
        raise BadInputError("--json - and --csv -: only one of them can go to stdout")
    options = AnalysisOptions(
        center=center, l2=l2, noise_estimator=noise_estimator.value, edge_level=edge_level,
        strong_rule=strong_rule.value, iqr_k=iqr_k, energy=energy.value, top_k=top_k, sample=sample,
        seed=seed, drop_nonfinite=drop_nonfinite, alpha_window=tuple(alpha_window), block_rows=block_rows,
        device=device, bands=bands, band_starts=_index_list(band_starts, "--band-starts"), spatial_bands=spatial_bands,
        spatial_smooth=smooth, spatial_center=spatial_center.value, split_image=split_image, null=null.value,
        null_repeats=null_repeats, null_rows=null_rows, scale=_index_list(scale, "--scale"), repeats=repeats,
        bootstrap=bootstrap, ci_level=ci_level,
    )
    world = current_world()
    console_err = stderr_console()
    # A bar only on a terminal: in logs it would only leave blank lines behind.
    progress = progress_for(console_err, quiet, main=world.is_main)
    result = run_analysis(inputs, key, options, progress=progress)
    if not world.is_main:
        return
    document = result.to_dict()
    outcomes = checks.evaluate(parsed_checks, document)  # a bad path is bad input: refuse before writing
    if json_path:
        report.write_json(document, json_path)
    if csv_path:
        report.write_csv(result.to_frame(), csv_path)
    if split_out:
        report.write_npz(result.split_arrays(), split_out)
    if not quiet:
        report.render_analysis(document, console_err if "-" in (json_path, csv_path) else Console())
    finish_checks(outcomes, console_err)


class Precision(str, Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    bf16 = "bf16"


class StoreDtype(str, Enum):
    float32 = "float32"
    float16 = "float16"


@app.command(cls=HelpCommand, short_help="Embed images and/or texts with a model into an HDF5 store.")
@handles_errors
def extract(
    out: str = typer.Option(..., "--out", "-o", help="The HDF5 store to write.", metavar="PATH"),
    model: str = typer.Option(DEFAULT_MODEL, "--model", "-m", metavar="SPEC",
                              help="The model ('sdetool models' lists them)."),
    images: Optional[str] = typer.Option(None, "--images", help="A folder of images (recursive).", metavar="FOLDER"),
    texts: Optional[str] = typer.Option(None, "--texts", help="A UTF-8 text file, one item per line.", metavar="FILE"),
    manifest: Optional[str] = typer.Option(None, "--manifest", help="A CSV/TSV, JSONL or Parquet table of items.",
                                           metavar="FILE"),
    data: Optional[str] = typer.Option(None, "--data", help="Built-in data (when no other source).",
                                       metavar="NAME", show_default=DEFAULT_DATA),
    id_col: Optional[str] = typer.Option(None, "--id-col", metavar="COLUMN", help="Manifest column of item ids."),
    image_col: Optional[str] = typer.Option(None, "--image-col", metavar="COLUMN", help="Manifest column of image paths."),
    text_col: Optional[str] = typer.Option(None, "--text-col", metavar="COLUMN", help="Manifest column of texts."),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N."),
    precision: Precision = typer.Option(Precision.fp32, "--precision", help="Compute precision (autocast)."),
    store_dtype: StoreDtype = typer.Option(StoreDtype.float32, "--store-dtype", help="Precision of the stored embeddings."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", help="Items per model call.", min=1),
    num_workers: Optional[int] = typer.Option(None, "--num-workers", metavar="N", min=0,
                                              help="Image decoding workers (default: spare cores)."),
    normalize: bool = typer.Option(False, "--normalize/--no-normalize", help="L2-normalise first."),
    tokens: bool = typer.Option(False, "--tokens", help="Also store the vision tower's patch-token grid."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first unreadable item."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an output of another model or data."),
    chunk_items: int = typer.Option(2048, "--chunk-items", help="Items per resumable chunk.", min=1),
    json_path: Optional[str] = typer.Option(None, "--json", help="Write the summary as JSON here ('-': stdout).",
                                            metavar="PATH"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress and no summary table."),
) -> None:
    """Embed images and/or texts with a model into an HDF5 store (resumable; data-parallel under torchrun)."""
    from sdetool import report
    from sdetool.data.items import open_source
    from sdetool.distributed import current_world
    from sdetool.extract import ExtractOptions, extract as run_extract

    report.check_output_path(json_path, "--json")
    options = ExtractOptions(device=device, precision=precision.value, batch_size=batch_size, num_workers=num_workers,
                             normalize=normalize, store_dtype=store_dtype.value, tokens=tokens, strict=strict,
                             overwrite=overwrite, chunk_items=chunk_items)
    options.validate()
    source = open_source(images=images, texts=texts, manifest_path=manifest, data=data, columns=(id_col, image_col, text_col))
    world = current_world()
    console_err = stderr_console()
    progress = progress_for(console_err, quiet, "items", main=world.is_main)
    try:
        result = run_extract(model, source, out, options, progress=progress)
    except KeyboardInterrupt:
        from sdetool.checkpoint import incomplete_message

        kept = incomplete_message(out)
        fail(f"interrupted; {kept.split(': ', 1)[1] if kept else 'nothing was written'}", 130)
    if not world.is_main:
        return
    if json_path:
        report.write_json(result.to_dict(), json_path)
    if not quiet:
        report.render_extract(result.to_dict(), console_err if json_path == "-" else Console())


@app.command(cls=HelpCommand, short_help="List the model backends and whether each can load here.")
@handles_errors
def models(
    json_path: Optional[str] = typer.Option(None, "--json", help="Write the list as JSON here ('-': stdout).", metavar="PATH"),
) -> None:
    """List the model backends and built-in models, and whether each can load here."""
    from sdetool import report
    from sdetool.models import backend_status

    rows = backend_status()
    if json_path:
        report.check_output_path(json_path, "--json")
        report.write_json({"models": rows}, json_path)
    if json_path != "-":
        report.render_models(rows, Console())


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


from sdetool import cli_finetune, cli_results  # noqa: E402  (their import registers finetune, compare, plot, reproduce)

COMMAND_MODULES = (cli_finetune, cli_results)

if __name__ == "__main__":  # pragma: no cover
    main()
