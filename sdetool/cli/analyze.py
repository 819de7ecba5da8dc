"""``sdetool analyze``: the spectrum, bands, metrics and gates of embedding sets."""

from __future__ import annotations

from typing import List, Optional, Tuple

import typer
from rich.console import Console

from sdetool.cli.common import (NULL_PANEL, Energy, NoiseEstimator, Null, SpatialCenter, StrongRule, _index_list, app,
                                finish_checks, handles_errors, null_option, null_repeats_option, null_rows_option,
                                stderr_console)
from sdetool.cli.help import HelpCommand
from sdetool.cli.progress import progress_for

# What --help leaves out for brevity: docs/cli.md adds it to each option (see sdetool.cli.docs).
OPTION_DETAILS = {
    "analyze": {
        "INPUT": "A store gives every set it holds (or those of --key). Several files are shards of the same sets, "
                 "analyzed as one matrix; a folder is its files, in natural name order. NAME=PATH makes PATH (a file "
                 "or folder of one set) the set NAME: 'image=img_emb/ text=text_emb/' reads clip-retrieval's output "
                 "as two sets with the cross-modal section (given as plain shards, they are refused: two modalities "
                 "would merge).",
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
}


@app.command(cls=HelpCommand, short_help="Spectrum of embedding sets: strong / weak / noise bands, metrics.")
@handles_errors
def analyze(
    inputs: List[str] = typer.Argument(
        ..., metavar="INPUT", show_default=False,
        help="Embeddings: .h5 store, FILE.h5:/dataset, .npy, .npz, .pt, .safetensors, a folder of them, "
             "NAME=PATH (a named set) or builtin:spiked.",
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
    from sdetool import api
    from sdetool.api import AnalysisOptions
    from sdetool.api import analyze as run_analysis
    from sdetool.api import current_world, report_paths
    from sdetool.errors import BadInputError

    parsed_checks = [api.parse_check(text) for text in fail_if or []]
    api.check_paths(parsed_checks, report_paths())
    api.check_output_path(json_path, "--json")
    api.check_output_path(csv_path, "--csv")
    api.check_output_path(split_out, "--split-out")
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
    outcomes = api.evaluate_checks(parsed_checks, document)  # a bad path is bad input: refuse before writing
    if json_path:
        api.write_json(document, json_path)
    if csv_path:
        api.write_csv(result.to_frame(), csv_path)
    if split_out:
        api.write_npz(result.split_arrays(), split_out)
    if not quiet:
        api.render_analysis(document, console_err if "-" in (json_path, csv_path) else Console())
    finish_checks(outcomes, console_err)

