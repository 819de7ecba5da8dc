"""The results commands of the ``sdetool`` CLI: ``compare``, ``plot`` and ``reproduce``.

Registered on :data:`sdetool.cli.app` when :mod:`sdetool.cli` is imported; same conventions (parse ->
one library call -> render; errors -> exit codes in :func:`sdetool.cli.handles_errors`).
"""

from __future__ import annotations

import os
from enum import Enum
from typing import List, Optional

import typer
from rich.console import Console
from rich.markup import escape

from sdetool.cli import (Energy, NoiseEstimator, SpatialCenter, StrongRule, app, finish_checks, handles_errors,
                         stderr_console)
from sdetool.progressbar import progress_for


@app.command()
@handles_errors
def compare(
    inputs: List[str] = typer.Argument(
        ..., metavar="BEFORE [AFTER]", show_default=False,
        help="Two of: analysis reports (analyze --json), stores or other analyze inputs (analyzed here), fine-tuning "
        "runs (folder or eval.json: their state after training). One fine-tuning run alone: its before against its after.",
    ),
    key: Optional[List[str]] = typer.Option(None, "--key", "-k", help="Embedding set to compare (repeatable; default: every set on both sides)."),
    json_path: Optional[str] = typer.Option(None, "--json", help="Write the comparison as JSON here ('-' for stdout).", metavar="PATH"),
    fail_if: Optional[List[str]] = typer.Option(
        None, "--fail-if", help="Exit 1 when this holds, e.g. 'bands.noise.energy_share.delta > 0' (repeatable).", metavar="EXPR"
    ),
    center: bool = typer.Option(True, "--center/--no-center", help="Inputs analyzed here: subtract the column mean first."),
    noise_estimator: NoiseEstimator = typer.Option(NoiseEstimator.median, "--noise-estimator", help="Inputs analyzed here: the noise level estimator (as in analyze)."),
    strong_rule: StrongRule = typer.Option(StrongRule.iqr, "--strong-rule", help="Inputs analyzed here: the strong threshold rule (as in analyze)."),
    edge_level: float = typer.Option(0.01, "--edge-level", help="Inputs analyzed here: Tracy-Widom level of the noise edge (as in analyze).", min=0.0, max=0.5),
    iqr_k: float = typer.Option(1.5, "--iqr-k", help="Inputs analyzed here: fence multiplier of the iqr strong rule.", min=0.0),
    energy: Energy = typer.Option(Energy.power, "--energy", help="Inputs analyzed here: band energy, power (s^2) or amplitude (s)."),
    sample: Optional[int] = typer.Option(None, "--sample", help="Inputs analyzed here: a seeded random subset of N rows.", metavar="N", min=2),
    seed: int = typer.Option(0, "--seed", help="Seed of --sample."),
    drop_nonfinite: bool = typer.Option(False, "--drop-nonfinite", help="Inputs analyzed here: leave out rows holding NaN or Inf."),
    bands: Optional[int] = typer.Option(None, "--bands", help="Inputs analyzed here: also K FITMM SVD bands (as in analyze).",
                                        metavar="K", rich_help_panel="Band views"),
    spatial_bands: Optional[int] = typer.Option(
        None, "--spatial-bands", help="Inputs analyzed here: also K spatial-frequency bands of their token grids (as in "
        "analyze).", metavar="K", rich_help_panel="Band views"),
    smooth: bool = typer.Option(False, "--smooth", help="Smooth spatial band masks (as in analyze).", rich_help_panel="Band views"),
    spatial_center: SpatialCenter = typer.Option(SpatialCenter.channel, "--spatial-center", help="Centring before the "
                                                 "FFT (as in analyze).", rich_help_panel="Band views"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No tables (errors and failed checks still print)."),
) -> None:
    """Before/after: band counts and energy shares with their change, metrics, accuracy, strong-subspace angles.

    With --bands / --spatial-bands (or reports that hold them): the change of each SVD or spatial band's share.
    """
    from sdetool import checks, report
    from sdetool.analysis import AnalysisOptions
    from sdetool.compare import compare as run_compare, compare_paths

    parsed_checks = [checks.parse_check(text) for text in fail_if or []]
    checks.check_paths(parsed_checks, compare_paths())
    report.check_output_path(json_path, "--json")
    options = AnalysisOptions(center=center, noise_estimator=noise_estimator.value, strong_rule=strong_rule.value,
                              edge_level=edge_level, iqr_k=iqr_k, energy=energy.value, sample=sample, seed=seed,
                              drop_nonfinite=drop_nonfinite, bands=bands, spatial_bands=spatial_bands,
                              spatial_smooth=smooth, spatial_center=spatial_center.value)
    console_err = stderr_console()
    progress = progress_for(console_err, quiet)
    document = run_compare(inputs, key, options, progress).to_dict()
    outcomes = checks.evaluate(parsed_checks, document)
    if json_path:
        report.write_json(document, json_path)
    if not quiet:
        report.render_compare(document, console_err if json_path == "-" else Console())
    finish_checks(outcomes, console_err)


class PlotKind(str, Enum):
    spectrum = "spectrum"
    energy = "energy"
    bands = "bands"
    training = "training"
    tokens = "tokens"


@app.command()
@handles_errors
def plot(
    kind: PlotKind = typer.Argument(..., help="spectrum: singular values, edge, threshold, bands, MP density; energy: "
                                    "cumulative energy; bands: stacked energy shares (before/after); training: loss and "
                                    "batch band shares over steps; tokens: spatial-frequency band energy of token grids "
                                    "per model (the Prism figure).", show_default=False),
    inputs: List[str] = typer.Argument(
        ..., metavar="INPUT...", show_default=False,
        help="Analysis reports, stores (analyzed here), fine-tuning runs (folder, eval.json; training: metrics.jsonl) "
        "or, for bands, comparisons (compare --json). Overlaid in order.",
    ),
    out: str = typer.Option(..., "--out", "-o", help="The figure to write: .png, .svg or .pdf.", metavar="PATH"),
    key: Optional[List[str]] = typer.Option(None, "--key", "-k", help="Embedding set to draw (repeatable; default: every set)."),
    label: Optional[List[str]] = typer.Option(None, "--label", help="Series labels in order (repeatable; default: from the file names)."),
    title: Optional[str] = typer.Option(None, "--title", help="Figure title (default: what the figure shows)."),
    loglog: bool = typer.Option(False, "--loglog", help="spectrum: logarithmic index axis too."),
    dpi: int = typer.Option(150, "--dpi", help="Resolution of PNG output.", min=20, max=1200),
    drop_nonfinite: bool = typer.Option(False, "--drop-nonfinite", help="Inputs analyzed here: leave out rows holding NaN or Inf."),
    spatial_bands: int = typer.Option(4, "--spatial-bands", help="tokens: K spatial-frequency bands of stores analyzed here.",
                                      metavar="K", min=1),
    smooth: bool = typer.Option(False, "--smooth", help="tokens: smooth band masks (as in analyze)."),
    spatial_center: SpatialCenter = typer.Option(SpatialCenter.channel, "--spatial-center", help="tokens: centring "
                                                 "before the FFT (as in analyze)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar and no confirmation line."),
) -> None:
    """Draw a figure from results: spectrum, energy, bands (the energy-redistribution figure), training or tokens."""
    from sdetool.analysis import AnalysisOptions
    from sdetool.figures import PlotOptions, plot as run_plot

    console_err = stderr_console()
    progress = progress_for(console_err, quiet)
    options = PlotOptions(keys=tuple(key or ()), labels=tuple(label or ()), loglog=loglog, title=title,
                          analysis=AnalysisOptions(drop_nonfinite=drop_nonfinite, **(
                              {"spatial_bands": spatial_bands, "spatial_smooth": smooth,
                               "spatial_center": spatial_center.value} if kind == PlotKind.tokens else {})), dpi=dpi)
    result = run_plot(kind.value, inputs, out, options, progress)
    if not quiet:
        console_err.print(f"wrote {escape(result['out'])} ({kind.value}: {escape(', '.join(result['series']))})")


class StageReporter:
    """The reproduction's stages as lines on stderr, and a progress bar per long step on a terminal."""

    def __init__(self, console: Console, quiet: bool) -> None:
        self._console, self._quiet = console, quiet

    def stage(self, number: int, total: int, text: str) -> None:
        if not self._quiet:
            self._console.print(f"[bold][{number}/{total}][/] {escape(text)}")

    def progress(self, unit: str):
        return progress_for(self._console, self._quiet, unit)


@app.command()
@handles_errors
def reproduce(
    out: str = typer.Option(..., "--out", "-o", help="The results folder (README.md, figures, stores, runs, reports).", metavar="FOLDER"),
    quick: bool = typer.Option(False, "--quick", help="A first look: fewer steps (100 model, 200 head; under 3 minutes on 2 cores)."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Steps of the built-in model's runs (default 500; --quick 100).", min=1),
    head_steps: Optional[int] = typer.Option(None, "--head-steps", help="Steps of the heads' runs on noisy embeddings (default 500; --quick 200).", min=1),
    seed: int = typer.Option(0, "--seed", help="Seed of every fine-tuning run."),
    noise_share: float = typer.Option(0.5, "--noise-share", help="Share of the image energy the added noise carries in "
                                      "the second experiment (0: leave it out).", min=0.0, max=0.95),
    device: str = typer.Option("auto", "--device", help="auto (a GPU when present), cpu, cuda or cuda:N."),
    resume: bool = typer.Option(False, "--resume", help="Continue a reproduction in --out (finished steps are kept)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a reproduction in --out."),
    json_path: Optional[str] = typer.Option(None, "--json", help="Write the summary as JSON here ('-' for stdout).", metavar="PATH"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No stage lines or progress bars."),
) -> None:
    """The SDE experiment end to end, offline: extract, analyze, fine-tune (SDE and InfoNCE), compare, plot, README."""
    from sdetool import report
    from sdetool.reproduce import ReproduceOptions, reproduce as run_reproduce

    report.check_output_path(json_path, "--json")
    options = ReproduceOptions(quick=quick, steps=steps, head_steps=head_steps, seed=seed, noise_share=noise_share,
                               device=device, resume=resume, overwrite=overwrite)
    console_err = stderr_console()
    result = run_reproduce(out, options, StageReporter(console_err, quiet)).to_dict()
    if json_path:
        report.write_json(result, json_path)
    if not quiet:
        console_err.print(f"wrote {escape(os.path.join(out, 'README.md'))} in {result['total_seconds'] / 60:.1f} min")
