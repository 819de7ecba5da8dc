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

from sdetool.cli.common import (NULL_PANEL, Energy, NoiseEstimator, Null, SpatialCenter, StrongRule, app, finish_checks,
                                handles_errors, null_option, null_repeats_option, null_rows_option, stderr_console)
from sdetool.cli.help import HelpCommand
from sdetool.cli.progress import progress_for

ANALYZED_PANEL, BANDS_PANEL = "Inputs analyzed here (as in analyze)", "Band views (inputs analyzed here)"

# What --help leaves out for brevity: docs/cli.md adds it to each option (see sdetool.cli.docs).
OPTION_DETAILS = {
    "compare": {
        "BEFORE [AFTER]": "Two of: analysis reports (analyze --json), stores or other analyze inputs (analyzed here), "
                          "fine-tuning runs (folder or eval.json: their state after training). One fine-tuning run "
                          "alone: its before against its after.",
        "--key": "Default: every set on both sides.",
        "--fail-if": "EXPR is PATH OP NUMBER on the JSON comparison, e.g. 'bands.noise.energy_share.delta > 0'.",
        "--quiet": "Errors and failed checks still print.",
        "--noise-estimator": "As analyze --noise-estimator.",
        "--edge-level": "The probability that pure noise crosses the noise edge; 0 for the bare Marchenko-Pastur edge.",
        "--energy": "power: the sum of s^2; amplitude: the sum of s.",
        "--bands": "FITMM SVD bands, as analyze --bands.",
        "--spatial-bands": "Prism bands of the inputs' token grids, as analyze --spatial-bands.",
        "--spatial-center": "As analyze --spatial-center.",
        "--null": "As analyze --null: the noise null of the inputs analyzed here.",
        "--equal-n": "Two inputs both analyzed here (stores, arrays, runs with exported embeddings) are analyzed at "
                     "the same n, a seeded subsample of the larger: band shares depend on n. Reports whose n differ "
                     "by more than 10% get a note and n_mismatch: true.",
    },
    "plot": {
        "KIND": "spectrum: singular values, noise edge, strong threshold, bands, MP density; energy: cumulative "
                "energy; bands: stacked energy shares before and after (the energy-redistribution figure); training: "
                "loss and batch band shares over the steps; tokens: the spatial-frequency band energy of token grids "
                "per model (the Prism figure); scale: band shares against the number of rows n; layers: band "
                "shares, effective rank, numerical rank and dimension against depth, from stores of extract --layers "
                "(or their reports), one per model or before and after.",
        "INPUT": "Analysis reports, stores (analyzed here), fine-tuning runs (folder or eval.json; for training: "
                 "metrics.jsonl) or, for bands, comparisons (compare --json). Embedding files may be named "
                 "(NAME=PATH, as for analyze).",
        "--label": "Default: from the file names.",
        "--title": "Default: what the figure shows.",
        "--drop-nonfinite": "Of the inputs analyzed here.",
        "--spatial-bands": "Of the stores analyzed here.",
        "--spatial-center": "As analyze --spatial-center.",
        "--scale": "Default: 128, 256, 512, ... below the store's row count. Reports must hold a scale list "
                   "(analyze --scale).",
    },
    "reproduce": {
        "--out": "It receives README.md, the figures, stores, runs and reports.",
        "--quick": "100 steps for the model runs and 200 for the heads: under 3 minutes on 2 cores.",
        "--head-steps": "The heads train on noisy embeddings.",
        "--noise-share": "The share of the image energy that the noise added in the second experiment carries; 0 "
                         "leaves that experiment out.",
        "--resume": "Finished steps are kept.",
        "--seeds": "The first seed's models embed the held-out pairs through extract --model run:; the others' "
                   "held-out embeddings are those their runs export. The README gives mean ± sd over the seeds.",
        "--null": "Every store is analyzed under this null (analysis/<name>.json) and under mp "
                  "(analysis/<name>-mp.json), and the fine-tuning runs' batch partition uses it.",
        "--bootstrap": "Each analysis gets jackknife intervals over R blocks of rows, and the band shares of "
                       "256-row subsets (a training batch).",
    },
}


@app.command(cls=HelpCommand, short_help="Before/after: band shares and their change, metrics, accuracy.")
@handles_errors
def compare(
    inputs: List[str] = typer.Argument(..., metavar="BEFORE [AFTER]", show_default=False,
                                       help="Reports, stores or fine-tuning runs."),
    key: Optional[List[str]] = typer.Option(None, "--key", "-k", metavar="NAME",
                                            help="Set to compare (repeatable; default: all)."),
    json_path: Optional[str] = typer.Option(None, "--json", help="Write the comparison as JSON here ('-': stdout).",
                                            metavar="PATH"),
    fail_if: Optional[List[str]] = typer.Option(None, "--fail-if", help="Exit 1 when EXPR holds (repeatable).",
                                                metavar="EXPR"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress and no tables."),
    center: bool = typer.Option(True, "--center/--no-center", help="Subtract column means first.",
                                rich_help_panel=ANALYZED_PANEL),
    noise_estimator: NoiseEstimator = typer.Option(NoiseEstimator.median, "--noise-estimator",
                                                   help="Noise level estimator.", rich_help_panel=ANALYZED_PANEL),
    strong_rule: StrongRule = typer.Option(StrongRule.iqr, "--strong-rule", help="Strong threshold rule.",
                                           rich_help_panel=ANALYZED_PANEL),
    edge_level: float = typer.Option(0.01, "--edge-level", help="Noise-edge margin (Tracy-Widom).", min=0.0, max=0.5,
                                     rich_help_panel=ANALYZED_PANEL),
    iqr_k: float = typer.Option(1.5, "--iqr-k", help="Fence multiplier of the iqr rule.", min=0.0,
                                rich_help_panel=ANALYZED_PANEL),
    energy: Energy = typer.Option(Energy.power, "--energy", help="Band energy: sum of s^2 or of s.",
                                  rich_help_panel=ANALYZED_PANEL),
    sample: Optional[int] = typer.Option(None, "--sample", help="A seeded random subset of N rows.", metavar="N", min=2,
                                         rich_help_panel=ANALYZED_PANEL),
    seed: int = typer.Option(0, "--seed", help="Seed of --sample.", rich_help_panel=ANALYZED_PANEL),
    drop_nonfinite: bool = typer.Option(False, "--drop-nonfinite", help="Leave out rows with NaN or Inf.",
                                        rich_help_panel=ANALYZED_PANEL),
    bands: Optional[int] = typer.Option(None, "--bands", help="Also K equal-count SVD bands.", metavar="K",
                                        rich_help_panel=BANDS_PANEL),
    spatial_bands: Optional[int] = typer.Option(None, "--spatial-bands", help="Also K spatial-frequency bands.",
                                                metavar="K", rich_help_panel=BANDS_PANEL),
    smooth: bool = typer.Option(False, "--smooth", help="Raised-cosine band masks.", rich_help_panel=BANDS_PANEL),
    spatial_center: SpatialCenter = typer.Option(SpatialCenter.channel, "--spatial-center",
                                                 help="Means removed before the FFT.", rich_help_panel=BANDS_PANEL),
    null: Null = null_option(),
    null_repeats: int = null_repeats_option(),
    null_rows: int = null_rows_option(),
    equal_n: bool = typer.Option(True, "--equal-n/--no-equal-n", help="Analyse both sides at the same n.",
                                 rich_help_panel=NULL_PANEL),
) -> None:
    """Before/after: band counts and energy shares with their change, metrics, accuracy, strong-subspace angles.

    With --bands / --spatial-bands (or reports that hold them): the change of each SVD or spatial band's share.
    \f
    Every number of one side is set against the other's as {before, after, delta}; docs/method.md, section 7.
    """
    from sdetool import api
    from sdetool.api import AnalysisOptions
    from sdetool.api import compare as run_compare
    from sdetool.api import compare_paths

    parsed_checks = [api.parse_check(text) for text in fail_if or []]
    api.check_paths(parsed_checks, compare_paths())
    api.check_output_path(json_path, "--json")
    options = AnalysisOptions(center=center, noise_estimator=noise_estimator.value, strong_rule=strong_rule.value,
                              edge_level=edge_level, iqr_k=iqr_k, energy=energy.value, sample=sample, seed=seed,
                              drop_nonfinite=drop_nonfinite, bands=bands, spatial_bands=spatial_bands,
                              spatial_smooth=smooth, spatial_center=spatial_center.value, null=null.value,
                              null_repeats=null_repeats, null_rows=null_rows)
    console_err = stderr_console()
    progress = progress_for(console_err, quiet)
    document = run_compare(inputs, key, options, progress, equal_n=equal_n).to_dict()
    outcomes = api.evaluate_checks(parsed_checks, document)
    if json_path:
        api.write_json(document, json_path)
    if not quiet:
        api.render_compare(document, console_err if json_path == "-" else Console())
    finish_checks(outcomes, console_err)


class PlotKind(str, Enum):
    spectrum = "spectrum"
    energy = "energy"
    bands = "bands"
    training = "training"
    tokens = "tokens"
    scale = "scale"
    layers = "layers"


@app.command(cls=HelpCommand, short_help="Draw a figure: spectrum, energy, bands, training, tokens, scale or layers.")
@handles_errors
def plot(
    kind: PlotKind = typer.Argument(..., metavar="KIND", show_default=False,
                                    help="The figure: spectrum, energy, bands, training, tokens, scale or layers."),
    inputs: List[str] = typer.Argument(..., metavar="INPUT", show_default=False,
                                       help="Reports, stores, runs or comparisons, overlaid in order."),
    out: str = typer.Option(..., "--out", "-o", help="The figure to write: .png, .svg or .pdf.", metavar="PATH"),
    key: Optional[List[str]] = typer.Option(None, "--key", "-k", metavar="NAME",
                                            help="Set to draw (repeatable; default: all)."),
    label: Optional[List[str]] = typer.Option(None, "--label", metavar="TEXT", help="Series labels in order (repeatable)."),
    title: Optional[str] = typer.Option(None, "--title", metavar="TEXT", help="Figure title."),
    loglog: bool = typer.Option(False, "--loglog", help="spectrum: a logarithmic index axis too."),
    dpi: int = typer.Option(150, "--dpi", help="Resolution of PNG output.", min=20, max=1200),
    drop_nonfinite: bool = typer.Option(False, "--drop-nonfinite", help="Leave out rows with NaN or Inf."),
    spatial_bands: int = typer.Option(4, "--spatial-bands", help="tokens: K spatial-frequency bands.", metavar="K", min=1),
    smooth: bool = typer.Option(False, "--smooth", help="tokens: raised-cosine band masks."),
    spatial_center: SpatialCenter = typer.Option(SpatialCenter.channel, "--spatial-center",
                                                 help="tokens: means removed before the FFT."),
    null: Null = typer.Option(Null.ddpa, "--null", help="Noise null of the stores analyzed here."),
    scale: Optional[str] = typer.Option(None, "--scale", metavar="N1,N2,..",
                                        help="scale: subset sizes of stores analyzed here."),
    repeats: int = typer.Option(10, "--repeats", metavar="R", help="scale: subsets per size.", min=1),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress and no confirmation line."),
) -> None:
    """Draw a figure from results: spectrum, energy, bands (the energy-redistribution figure), training, tokens
    or scale (band shares against n)."""
    from sdetool.api import AnalysisOptions, PlotOptions
    from sdetool.api import plot as run_plot
    from sdetool.cli.common import _index_list

    console_err = stderr_console()
    progress = progress_for(console_err, quiet)
    views = {"spatial_bands": spatial_bands, "spatial_smooth": smooth, "spatial_center": spatial_center.value} \
        if kind == PlotKind.tokens else {}
    analysis = AnalysisOptions(drop_nonfinite=drop_nonfinite, null=null.value, scale=_index_list(scale, "--scale"),
                               repeats=repeats, **views)
    options = PlotOptions(keys=tuple(key or ()), labels=tuple(label or ()), loglog=loglog, title=title,
                          analysis=analysis, dpi=dpi)
    result = run_plot(kind.value, inputs, out, options, progress)
    if not quiet:
        console_err.print(f"wrote {escape(result['out'])} ({kind.value}: {escape(', '.join(result['series']))})")


class StageReporter:
    """The reproduction's stages as lines on stderr, and the progress of each long step (a bar on a terminal,
    plain lines elsewhere)."""

    def __init__(self, console: Console, quiet: bool) -> None:
        self._console, self._quiet = console, quiet

    def stage(self, number: int, total: int, text: str) -> None:
        if not self._quiet:
            self._console.print(f"[bold][{number}/{total}][/] {escape(text)}", soft_wrap=True)

    def progress(self, unit: str):
        return progress_for(self._console, self._quiet, unit)


@app.command(cls=HelpCommand, short_help="The SDE experiment end to end, offline, into one folder.")
@handles_errors
def reproduce(
    out: str = typer.Option(..., "--out", "-o", help="The results folder.", metavar="FOLDER"),
    quick: bool = typer.Option(False, "--quick", help="A first look: fewer steps (minutes)."),
    steps: Optional[int] = typer.Option(None, "--steps", metavar="N", min=1,
                                        help="Model run steps (default: 500; --quick: 100)."),
    head_steps: Optional[int] = typer.Option(None, "--head-steps", metavar="N", min=1,
                                             help="Head run steps (default: 500; --quick: 200)."),
    seed: int = typer.Option(0, "--seed", help="Seed of every fine-tuning run."),
    noise_share: float = typer.Option(0.5, "--noise-share", help="Noise share of the image energy.", min=0.0, max=0.95),
    device: str = typer.Option("auto", "--device", metavar="DEVICE", help="auto, cpu, cuda or cuda:N."),
    resume: bool = typer.Option(False, "--resume", help="Continue a reproduction in --out."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a reproduction in --out."),
    json_path: Optional[str] = typer.Option(None, "--json", help="Write the summary as JSON here ('-': stdout).",
                                            metavar="PATH"),
    seeds: int = typer.Option(1, "--seeds", metavar="K", min=1, help="Fine-tuning runs per loss (seeds --seed, +1, ...)."),
    null: Null = typer.Option(Null.ddpa, "--null", help="Noise null of the analyses (each also under mp)."),
    bootstrap: int = typer.Option(20, "--bootstrap", metavar="R", min=2, help="Jackknife blocks of the intervals."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No stage lines and no progress."),
) -> None:
    """The SDE experiment end to end, offline: extract, analyze, fine-tune (SDE and InfoNCE), compare, plot, README."""
    from sdetool import api
    from sdetool.api import ReproduceOptions
    from sdetool.api import reproduce as run_reproduce

    api.check_output_path(json_path, "--json")
    options = ReproduceOptions(quick=quick, steps=steps, head_steps=head_steps, seed=seed, noise_share=noise_share,
                               device=device, resume=resume, overwrite=overwrite, seeds=seeds, null=null.value,
                               bootstrap=bootstrap)
    console_err = stderr_console()
    result = run_reproduce(out, options, StageReporter(console_err, quiet)).to_dict()
    if json_path:
        api.write_json(result, json_path)
    if not quiet:
        console_err.print(f"wrote {escape(os.path.join(out, 'README.md'))} in {result['total_seconds'] / 60:.1f} min",
                          soft_wrap=True)
