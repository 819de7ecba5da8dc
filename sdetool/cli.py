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
from sdetool.errors import SdetoolError, TrainingError, TrainingInterrupted
from sdetool.progressbar import progress_for

app = typer.Typer(
    name="sdetool",
    help="See, measure and repair the spectral structure of embeddings (strong / weak / noise subspaces).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)

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


@app.command()
@handles_errors
def analyze(
    inputs: List[str] = typer.Argument(
        ...,
        metavar="INPUT",
        help="Embeddings: an sdetool .h5 store, FILE.h5:/dataset, .npy, .npz, .pt, .safetensors or builtin:spiked. "
        "Several files are shards of the same sets, analyzed as one matrix.",
        show_default=False,
    ),
    key: Optional[List[str]] = typer.Option(
        None, "--key", "-k", help="Embedding set to analyze (repeatable; default: every set). Two or more add the cross-modal section."
    ),
    json_path: Optional[str] = typer.Option(None, "--json", help="Write the JSON report here ('-' for stdout).", metavar="PATH"),
    csv_path: Optional[str] = typer.Option(
        None, "--csv", help="Write the per-component table (index, singular value, band, energy share, snr) here.", metavar="PATH"
    ),
    center: bool = typer.Option(True, "--center/--no-center", help="Subtract the column mean before the spectrum."),
    l2: bool = typer.Option(False, "--l2/--no-l2", help="Scale every row to unit norm before the spectrum."),
    noise_estimator: NoiseEstimator = typer.Option(
        NoiseEstimator.median, "--noise-estimator", help="Noise level: median (median singular value, deflated of the signal components), median-gd "
        "(plain Gavish-Donoho median), mppca (Veraart MP-PCA), or iqr (IQR of the entries / 1.349)."
    ),
    edge_level: float = typer.Option(
        0.01, "--edge-level", help="Probability that pure noise crosses the noise edge (Tracy-Widom margin); 0 for the bare MP edge.", min=0.0, max=0.5
    ),
    strong_rule: StrongRule = typer.Option(
        StrongRule.iqr, "--strong-rule", help="Strong threshold: iqr (Tukey fence Q3 + k IQR of the singular values) or gd (Gavish-Donoho)."
    ),
    iqr_k: float = typer.Option(1.5, "--iqr-k", help="Fence multiplier k of the iqr strong rule.", min=0.0),
    energy: Energy = typer.Option(Energy.power, "--energy", help="Band energy: power (sum of s^2) or amplitude (sum of s)."),
    top_k: int = typer.Option(10, "--top-k", help="Leading directions compared across sets (subspace overlap).", min=1),
    sample: Optional[int] = typer.Option(None, "--sample", help="Analyze a seeded random subset of N rows.", metavar="N", min=2),
    seed: int = typer.Option(0, "--seed", help="Seed of --sample and of the iqr estimator's entry sample."),
    drop_nonfinite: bool = typer.Option(False, "--drop-nonfinite", help="Leave out rows holding NaN or Inf instead of refusing the input."),
    alpha_window: Tuple[int, int] = typer.Option((10, 100), "--alpha-window", help="1-based index window FIRST LAST of the power-law fit."),
    block_rows: Optional[int] = typer.Option(None, "--block-rows", help="Rows per streamed block (default: about 32 MiB of float64).", min=1),
    device: str = typer.Option(
        "auto", "--device", help="Where the float64 Gram is accumulated: auto (a GPU for large inputs when present), cpu, cuda or cuda:N."
    ),
    fail_if: Optional[List[str]] = typer.Option(
        None, "--fail-if", help="Exit 1 when this holds, e.g. 'bands.noise.energy_share > 0.85' (repeatable).", metavar="EXPR"
    ),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no tables (errors and failed checks still print)."),
    bands: Optional[int] = typer.Option(
        None, "--bands", help="FITMM SVD bands: split the components into K contiguous equal-count bands (energy share, "
        "effective rank; with two paired sets, per-band alignment).", metavar="K", rich_help_panel="Band views"),
    band_starts: Optional[str] = typer.Option(
        None, "--band-starts", help="SVD bands at given 0-based start indices instead, e.g. 10,50 for [0,10) [10,50) [50,p).",
        metavar="I,J,..", rich_help_panel="Band views"),
    spatial_bands: Optional[int] = typer.Option(
        None, "--spatial-bands", help="Prism spatial-frequency bands of the stored patch-token grids (extract --tokens): "
        "K equal-width radial bands of the 2-D spectrum.", metavar="K", rich_help_panel="Band views"),
    smooth: bool = typer.Option(False, "--smooth", help="Raised-cosine band masks (their squares sum to one) instead of hard ones.",
                                rich_help_panel="Band views"),
    spatial_center: SpatialCenter = typer.Option(
        SpatialCenter.channel, "--spatial-center", help="Before the FFT subtract each channel's mean over all grids "
        "(channel), each grid's own means (image: no zero frequency), or nothing.", rich_help_panel="Band views"),
    split_image: Optional[int] = typer.Option(
        None, "--split-image", help="Also split this 0-based image into its band components (energies in the JSON).",
        metavar="I", rich_help_panel="Band views"),
    split_out: Optional[str] = typer.Option(
        None, "--split-out", help="Write the --split-image components here (.npz, one (K, h, w, c) array per set).",
        metavar="PATH", rich_help_panel="Band views"),
) -> None:
    """Spectrum of embedding sets: MP/IQR partition into strong / weak / noise bands, energy shares, metrics.

    With --bands or --spatial-bands, also the FITMM SVD bands and the Prism spatial-frequency bands.
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
        spatial_smooth=smooth, spatial_center=spatial_center.value, split_image=split_image,
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


@app.command()
@handles_errors
def extract(
    out: str = typer.Option(..., "--out", "-o", help="The HDF5 store to write (its work folder OUT.partial/ holds finished "
                            "chunks until the end).", metavar="PATH"),
    model: str = typer.Option("builtin:lit-fmnist", "--model", "-m", help="hf:ORG/NAME or hf:/folder (CLIP, SigLIP...), "
                              "st:/folder (text encoder), open_clip:ARCH@WEIGHTS, or builtin:lit-fmnist. See 'sdetool models'."),
    images: Optional[str] = typer.Option(None, "--images", help="A folder of images (recursive; a captions.jsonl beside "
                                         "them pairs each with a caption).", metavar="FOLDER"),
    texts: Optional[str] = typer.Option(None, "--texts", help="A UTF-8 text file, one item per line.", metavar="FILE"),
    manifest: Optional[str] = typer.Option(None, "--manifest", help="A CSV/TSV, JSONL or Parquet table of items "
                                           "(image paths relative to it).", metavar="FILE"),
    data: Optional[str] = typer.Option(None, "--data", help="Built-in data: builtin:fashion-mnist (test split, the default "
                                       "when no source is given) or builtin:fashion-mnist:train.", metavar="NAME"),
    id_col: Optional[str] = typer.Option(None, "--id-col", help="Manifest column of item ids (default: 'id', else the row number)."),
    image_col: Optional[str] = typer.Option(None, "--image-col", help="Manifest column of image paths (default: image, path, file...)."),
    text_col: Optional[str] = typer.Option(None, "--text-col", help="Manifest column of texts (default: text, caption...)."),
    device: str = typer.Option("auto", "--device", help="auto (a GPU when present), cpu, cuda or cuda:N."),
    precision: Precision = typer.Option(Precision.fp32, "--precision", help="Compute precision (autocast); embeddings are "
                                        "stored float32 unless --store-dtype float16."),
    store_dtype: StoreDtype = typer.Option(StoreDtype.float32, "--store-dtype", help="Precision of the stored embeddings."),
    batch_size: int = typer.Option(64, "--batch-size", "-b", help="Items per model call.", min=1),
    num_workers: Optional[int] = typer.Option(None, "--num-workers", help="DataLoader workers decoding and preprocessing "
                                              "images (default: one per spare core, at most 8; 0: in this process).", min=0),
    normalize: bool = typer.Option(False, "--normalize/--no-normalize", help="L2-normalise embeddings before storing "
                                   "(default: store what the model outputs)."),
    tokens: bool = typer.Option(False, "--tokens", help="Also store the vision tower's patch-token grid, "
                                "/<key>/tokens (n, h, w, c) float16."),
    strict: bool = typer.Option(False, "--strict", help="Stop at the first unreadable item instead of recording it in /<key>/failed."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output made from another model or data."),
    chunk_items: int = typer.Option(2048, "--chunk-items", help="Items per resumable chunk.", min=1),
    json_path: Optional[str] = typer.Option(None, "--json", help="Write the summary as JSON here ('-' for stdout).", metavar="PATH"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no summary table."),
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


@app.command()
@handles_errors
def models(
    json_path: Optional[str] = typer.Option(None, "--json", help="Write the list as JSON here ('-' for stdout).", metavar="PATH"),
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
        hint = f" (see '{context.command_path} --help')" if context is not None else ""
        _print_error(error.format_message() + hint)
        sys.exit(getattr(error, "exit_code", EXIT_BAD_INPUT))
    sys.exit(code if isinstance(code, int) else 0)


from sdetool import cli_finetune, cli_results  # noqa: E402  (their import registers finetune, compare, plot, reproduce)

COMMAND_MODULES = (cli_finetune, cli_results)

if __name__ == "__main__":  # pragma: no cover
    main()
