"""Figures of results: matplotlib ``Figure`` objects from the documents sdetool writes.

Plot code never fits or estimates anything: it draws the numbers it is given (singular values, the
noise edge and strong threshold, band shares, training records). The one curve it evaluates, the
Marchenko-Pastur density, is a closed form of the noise level the analysis reported.

Figures are built without ``pyplot`` (no global state, no display needed: headless by construction).
Colours are the Okabe-Ito colour-blind-safe palette, and a band always has the same colour:
strong blue, weak orange, noise grey.
"""

from __future__ import annotations

import os

import numpy as np

from sdetool.spectral import rmt
from sdetool.spectral.spectrum import BANDS

BAND_COLOURS = {"strong": "#0072B2", "weak": "#E69F00", "noise": "#999999"}
SERIES_COLOURS = ("#000000", "#D55E00", "#009E73", "#CC79A7", "#56B4E9", "#F0E442")
LINE_STYLES = ("-", "--", ":", "-.")
SPACING = 1.5  # distance between the bars of bands_figure
FORMATS = ("png", "svg", "pdf")


def _figure(width: float, height: float):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def series_colour(index: int) -> str:
    return SERIES_COLOURS[index % len(SERIES_COLOURS)]


def band_runs(bands: list[str]) -> list[tuple[str, int, int]]:
    """Contiguous runs ``(band, first index (1-based), length)`` of per-component band names (pure)."""
    runs = []
    for position, band in enumerate(bands, start=1):
        if runs and runs[-1][0] == band:
            runs[-1] = (band, runs[-1][1], runs[-1][2] + 1)
        else:
            runs.append((band, position, 1))
    return runs


# --- spectrum ------------------------------------------------------------------------------------


def spectrum_figure(series: list[tuple[str, dict]], *, loglog: bool = False, title: str | None = None):
    """Singular values with the noise edge and strong threshold, the bands, and the MP density.

    Parameters
    ----------
    series : list of (label, set document)
        Analysis set objects (``sdetool.analysis/1``: ``singular_values``, ``noise``, ``strong_rule``,
        ``components.band``, ``n_effective``, ``dim``), drawn as overlays in order.
    loglog : bool
        Logarithmic index axis too.

    Returns
    -------
    matplotlib.figure.Figure
        Axes: ``spectrum`` (one line per series, then its edge and threshold lines), ``bands`` (a
        ribbon per series), ``mp`` (eigenvalue histograms against the MP density).
    """
    figure = _figure(12, 5.2)
    grid = figure.add_gridspec(2, 2, width_ratios=(2.1, 1), height_ratios=(5, 0.35 + 0.3 * len(series)))
    main = figure.add_subplot(grid[0, 0], label="spectrum")
    ribbon = figure.add_subplot(grid[1, 0], sharex=main, label="bands")
    density = figure.add_subplot(grid[:, 1], label="mp")
    positive = False
    for position, (label, document) in enumerate(series):
        colour = series_colour(position)
        values = np.asarray(document["singular_values"], dtype=np.float64)
        index = np.arange(1, values.size + 1)
        shown = values > 0
        positive = positive or bool(shown.any())
        main.plot(index[shown], values[shown], color=colour, lw=1.6, label=label)
        edge, threshold = document["noise"]["edge"], document["strong_rule"]["threshold"]
        if edge is not None:
            main.axhline(edge, color=colour, ls="--", lw=0.9, label=f"noise edge {edge:.4g}")
        if threshold is not None:
            main.axhline(threshold, color=colour, ls=":", lw=1.2, label=f"strong threshold {threshold:.4g}")
        for band, first, length in band_runs(document["components"]["band"]):
            ribbon.broken_barh([(first - 0.5, length)], (position - 0.4, 0.8), facecolors=BAND_COLOURS[band])
            if len(series) == 1:  # one spectrum: its bands shaded behind it too
                main.axvspan(first - 0.5, first - 0.5 + length, color=BAND_COLOURS[band], alpha=0.12, lw=0)
        _mp_panel(density, values, document, colour, label)
    if positive:
        main.set_yscale("log")
    else:  # a collapsed set: nothing to draw on a log axis
        main.text(0.5, 0.5, "every singular value is zero (the set has collapsed)", transform=main.transAxes,
                  ha="center", va="center", color="#555555")
    if loglog:
        main.set_xscale("log")
    main.set_ylabel("singular value (embedding units)")
    main.set_title(title or "Singular spectrum: noise edge (dashed), strong threshold (dotted)", fontsize="medium")
    from matplotlib.patches import Patch

    handles, labels = main.get_legend_handles_labels()
    handles += [Patch(facecolor=BAND_COLOURS[band], label=f"{band} band") for band in BANDS]
    main.legend(handles=handles, fontsize="small", loc="upper right", ncol=2 if len(series) > 2 else 1)
    main.tick_params(labelbottom=False)
    main.grid(True, which="major", alpha=0.3)
    ribbon.set_yticks(range(len(series)), [label for label, _ in series], fontsize="small")
    ribbon.set_ylim(len(series) - 0.5, -0.5)
    ribbon.set_xlabel("component index (by singular value, descending)")
    return figure


def mp_shape(document: dict) -> tuple[int, float]:
    """``(p, q)``: the dimensions of the noise matrix whose MP law the analysis used (pure).

    Full rank: ``(min(n, d), max(n, d))``. A rank-deficient matrix had its noise estimated in its
    ``r``-dimensional column space, so ``p = r``, and ``q`` is read back from the reported MP edge
    ``sigma (sqrt(q) + sqrt(p))``: the plot draws the law the analysis used, it fits nothing.
    """
    n, d = int(document["n_effective"]), int(document["dim"])
    noise = document["noise"]
    rank = noise.get("numerical_rank") or min(n, d)
    if rank >= min(n, d) or not noise.get("mp_edge") or not noise.get("sigma"):
        return min(n, d), float(max(n, d))
    return rank, float((noise["mp_edge"] / noise["sigma"] - np.sqrt(rank)) ** 2)


def _mp_panel(axes, values: np.ndarray, document: dict, colour: str, label: str) -> None:
    """Eigenvalues in noise units (s^2 / (q sigma^2)) against the MP density of the reported sigma."""
    sigma = document["noise"]["sigma"]
    if not sigma or sigma <= 0:
        return
    small, large = mp_shape(document)
    beta = small / large
    eigenvalues = values[:small] ** 2 / (large * sigma**2)
    lower, upper = rmt.marchenko_pastur_support(beta)
    right = 2.0 * upper
    inside = eigenvalues[eigenvalues <= right]
    bins = np.linspace(0.0, right, 60)
    counts, _ = np.histogram(inside, bins=bins)
    # density over all components, so that the MP curve (mass 1 over the bulk) is comparable
    axes.stairs(counts / (small * np.diff(bins)), bins, color=colour, lw=1.3,
                label=f"{label}: {eigenvalues.size - inside.size} beyond {right:.2g}")
    grid = np.linspace(max(lower, 1e-9), upper, 400)
    axes.plot(grid, rmt.marchenko_pastur_pdf(grid, beta), color=colour, ls="--", lw=1.0)
    axes.set_xlabel("eigenvalue s² / (q σ²), q = max(n, d) (noise units)")
    axes.set_ylabel("density")
    axes.set_title("Eigenvalues against the MP density (dashed)", fontsize="medium")
    axes.legend(fontsize="small", loc="upper right")


# --- cumulative energy ---------------------------------------------------------------------------


def energy_figure(series: list[tuple[str, dict]], *, title: str | None = None):
    """Cumulative energy share against component index, with each series' band boundaries.

    ``series`` as in :func:`spectrum_figure` (``components.energy_share`` is drawn, cumulated).
    """
    figure = _figure(8, 4.8)
    axes = figure.add_subplot(label="energy")
    for position, (label, document) in enumerate(series):
        colour = series_colour(position)
        shares = np.asarray(document["components"]["energy_share"], dtype=np.float64)
        cumulative = 100.0 * np.cumsum(shares)
        axes.plot(np.arange(1, shares.size + 1), cumulative, color=colour, lw=1.6, label=label,
                  drawstyle="steps-post")
        strong = document["bands"]["strong"]["count"]
        weak = document["bands"]["weak"]["count"]
        for boundary, style in ((strong, "--"), (strong + weak, ":")):
            if 0 < boundary < shares.size:
                axes.axvline(boundary + 0.5, color=colour, ls=style, lw=0.9)
    axes.set_xscale("log")
    axes.set_ylim(0, 101)
    axes.set_xlabel("component index (log)")
    axes.set_ylabel("cumulative energy share (%)")
    axes.set_title(title or "Cumulative energy: end of strong band (dashed), of weak band (dotted)",
                   fontsize="medium")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize="small", loc="lower right")
    return figure


# --- bands ---------------------------------------------------------------------------------------


def _share_labels(axes, x: float, width: float, shares: list[float]) -> None:
    """Percentages on the segments; those too thin for their text go beside the bar, spread apart."""
    tops = np.cumsum([100.0 * share for share in shares])
    beside = []
    for band, share, top in zip(BANDS, shares, tops):
        middle = top - 50.0 * share
        text = f"{100 * share:.1f}%" if share >= 0.001 or share == 0 else f"{100 * share:.2g}%"
        if share >= 0.06:
            axes.text(x, middle, text, ha="center", va="center", fontsize="small",
                      color="white" if band == "strong" else "black")
        else:
            beside.append((middle, f"{band} {text}"))
    ceiling = 97.0
    for middle, text in reversed(beside):  # from the top down, each at least 5 points below the last
        y = min(middle, ceiling)
        axes.text(x + 0.55 * width, y, text, ha="left", va="center", fontsize="x-small")
        ceiling = y - 5.0


def bands_figure(states: list[tuple[str, dict]], *, title: str | None = None):
    """The energy-redistribution figure: stacked strong/weak/noise shares per state, one panel per set.

    Parameters
    ----------
    states : list of (label, {set key: {band: energy share (0..1)}})
        In order (before first). A set missing from a state leaves its bar out.

    Returns
    -------
    matplotlib.figure.Figure
        One axes per set key, labelled with the key; bar heights are the shares in percent.
    """
    keys = list(dict.fromkeys(key for _, sets in states for key in sets))
    figure = _figure(max(4.0, 1.6 + 1.6 * len(states)) * len(keys) + 0.8, 4.8)
    width = 0.55
    for column, key in enumerate(keys):
        axes = figure.add_subplot(1, len(keys), column + 1, label=f"bands:{key}")
        labels = []
        for position, (label, sets) in enumerate((label, sets) for label, sets in states if key in sets):
            x = SPACING * position  # room beside each bar for the labels of thin segments
            shares = [float(sets[key][band] or 0.0) for band in BANDS]
            bottom = 0.0
            for band, share in zip(BANDS, shares):
                axes.bar(x, 100.0 * share, width, bottom=bottom, color=BAND_COLOURS[band], edgecolor="white",
                         label=band if position == 0 else None)
                bottom += 100.0 * share
            _share_labels(axes, x, width, shares)
            labels.append(label)
        axes.set_xticks([SPACING * i for i in range(len(labels))], labels)
        axes.set_xlim(-0.6, SPACING * (len(labels) - 1) + 1.2)
        axes.set_ylim(0, 100)
        axes.set_ylabel("energy share (%)")
        axes.set_title(f"{key}", fontsize="medium")
        if column == len(keys) - 1:
            axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize="small", title="band",
                        title_fontsize="small")
    figure.suptitle(title or "Energy in the strong / weak / noise subspaces", fontsize="medium")
    return figure


# --- spatial-frequency bands (Prism) -------------------------------------------------------------


def tokens_figure(series: list[tuple[str, dict]], *, title: str | None = None):
    """The Prism figure: each model's token-grid energy per spatial-frequency band, side by side.

    Parameters
    ----------
    series : list of (label, ``spatial_bands`` object of an analysis set)
        All with the same number of bands.

    Returns
    -------
    matplotlib.figure.Figure
        One axes ``tokens``: per band (low frequency left) a group of bars, one per series in order,
        height the mean share over images in percent, error bar its standard deviation, and a dashed
        line at the share a spatially white grid of that shape would have.
    """
    bands = len(series[0][1]["bands"])
    figure = _figure(max(5.0, 1.2 + bands * (0.5 + 0.35 * len(series))), 4.4)
    axes = figure.add_subplot(1, 1, 1, label="tokens")
    width = 0.8 / len(series)
    for position, (label, view) in enumerate(series):
        shares = [100.0 * (band["energy_share"] or 0.0) for band in view["bands"]]
        spread = [100.0 * (band["energy_share_std"] or 0.0) for band in view["bands"]]
        x = np.arange(bands) + (position - (len(series) - 1) / 2) * width
        grid = "x".join(str(size) for size in view["grid"])
        axes.bar(x, shares, width * 0.92, yerr=spread, capsize=2, color=series_colour(position),
                 label=f"{label} ({grid}x{view['channels']})", error_kw={"elinewidth": 0.8, "ecolor": "#444444"})
        white = [100.0 * (band.get("white_noise_share") or 0.0) for band in view["bands"]]
        axes.hlines(white, x - width * 0.46, x + width * 0.46, colors="#999999", linestyles="--", linewidth=1.2,
                    label="white noise on that grid" if position == 0 else None)
    edges = series[0][1]["bands"]
    axes.set_xticks(np.arange(bands), [f"{band['low']:.2g}-{band['high']:.2g}" for band in edges])
    axes.set_xlabel("radial spatial frequency (1 = the grid's highest)")
    axes.set_ylabel("energy share (%), mean ± std over images")
    axes.set_ylim(0, 100)
    axes.legend(fontsize="small")
    axes.set_title(title or "Token-grid energy per spatial-frequency band", fontsize="medium")
    return figure


# --- training ------------------------------------------------------------------------------------


def training_figure(runs: list[tuple[str, list[dict]]], *, title: str | None = None):
    """Loss and the batch band shares over steps, per run (``metrics.jsonl`` records).

    Returns
    -------
    matplotlib.figure.Figure
        Axes ``loss`` (total loss, solid; its InfoNCE part, dashed, when it differs) and one
        ``shares:<key>`` axes per embedding set logged (``<key>_shares``), band colour by band,
        line style by run, logarithmic share axis.
    """
    keys = sorted({name[: -len("_shares")] for _, records in runs for record in records for name in record
                   if name.endswith("_shares")})
    figure = _figure(4.6 * (1 + len(keys)), 4.4)
    loss = figure.add_subplot(1, 1 + len(keys), 1, label="loss")
    for position, (label, records) in enumerate(runs):
        steps = np.array([record["step"] for record in records])
        colour = series_colour(position)
        loss.plot(steps, [record["loss"] for record in records], color=colour, lw=1.4, label=f"{label} loss")
        if any(record.get("infonce") != record["loss"] for record in records if "infonce" in record):
            loss.plot(steps, [record.get("infonce", np.nan) for record in records], color=colour, ls="--", lw=1.0,
                      label=f"{label} InfoNCE term")
    loss.set_xlabel("step")
    loss.set_ylabel("loss (InfoNCE in nats, plus spectral terms)")
    loss.set_title("Training loss", fontsize="medium")
    loss.legend(fontsize="small")
    loss.grid(True, alpha=0.3)
    for column, key in enumerate(keys):
        axes = figure.add_subplot(1, 1 + len(keys), column + 2, label=f"shares:{key}")
        for position, (label, records) in enumerate(runs):
            logged = [record for record in records if f"{key}_shares" in record]
            steps = np.array([record["step"] for record in logged])
            shares = np.array([record[f"{key}_shares"] for record in logged], dtype=np.float64).reshape(-1, len(BANDS))
            for band_index, band in enumerate(BANDS):
                axes.plot(steps, 100.0 * shares[:, band_index], color=BAND_COLOURS[band],
                          ls=LINE_STYLES[position % len(LINE_STYLES)], lw=1.3, label=f"{label} {band}")
        axes.set_yscale("log")
        axes.set_xlabel("step")
        axes.set_ylabel("batch energy share (%, log)")
        axes.set_title(f"{key}: band shares of the training batches", fontsize="medium")
        axes.legend(fontsize="x-small", ncol=len(runs))
        axes.grid(True, which="both", alpha=0.3)
    if title:
        figure.suptitle(title, fontsize="medium")
    return figure


# --- output --------------------------------------------------------------------------------------


def scale_figure(series: list[tuple[str, dict]], *, title: str | None = None):
    """Band energy shares against the number of rows n: one panel per band, one line per series.

    Parameters
    ----------
    series : list of (label, set document)
        Analysis set objects with ``scale`` (``analyze --scale``): per size, the mean and sd of each band's
        share over the subsets. The whole set's share is drawn at its own n as a hollow marker.

    Returns
    -------
    matplotlib.figure.Figure
        Axes labelled ``strong``, ``weak`` and ``noise``.
    """
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

    figure = _figure(12, 4.2)
    axes = figure.subplots(1, len(BANDS), sharex=True)
    ticks = sorted({row["n"] for _, document in series for row in document["scale"]}
                   | {document["n_samples"] for _, document in series})
    for column, band in enumerate(BANDS):
        panel = axes[column]
        panel.set_label(band)
        for position, (label, document) in enumerate(series):
            colour = series_colour(position)
            sizes = [row["n"] for row in document["scale"]]
            means = [_percent(row["bands"][band]["energy_share"]["mean"]) for row in document["scale"]]
            spreads = [_percent(row["bands"][band]["energy_share"]["sd"]) for row in document["scale"]]
            panel.errorbar(sizes, means, yerr=_share_bars(means, spreads), color=colour, marker="o", ms=4, lw=1.4,
                           capsize=3, label=label)
            whole = document["bands"][band]["energy_share"]
            if whole is not None:
                panel.plot([document["n_samples"]], [100 * whole], marker="o", ms=7, mfc="none", color=colour)
        panel.set_xscale("log")
        panel.xaxis.set_major_locator(FixedLocator(ticks))
        panel.xaxis.set_minor_locator(NullLocator())
        panel.xaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:,.0f}"))
        panel.tick_params(axis="x", labelrotation=45, labelsize="small")
        panel.set_xlabel("rows n (log)")
        panel.set_title(f"{band} band", fontsize="medium", color=BAND_COLOURS[band])
        panel.grid(True, alpha=0.3)
    axes[0].set_ylabel("energy share (%), mean ± sd over subsets")
    axes[-1].legend(fontsize="small", loc="best")
    figure.suptitle(title or "Band shares against n (hollow: the whole set)", fontsize="medium")
    return figure


def _share_bars(means: list, spreads: list) -> np.ndarray:
    """Error bars of ``mean +- sd`` for shares in percent, cut at 0 and 100 (a share cannot leave them)."""
    means, spreads = np.asarray(means, dtype=np.float64), np.asarray(spreads, dtype=np.float64)
    return np.array([np.minimum(spreads, means), np.minimum(spreads, 100.0 - means)])


def _percent(value):
    return float("nan") if value is None else 100.0 * value


def figure_format(path: str) -> str:
    """The format a path's extension names (png, svg or pdf); ValueError otherwise."""
    extension = os.path.splitext(path)[1].lower().lstrip(".")
    if extension not in FORMATS:
        raise ValueError(f"{path}: expected a .png, .svg or .pdf file name")
    return extension


def save_figure(figure, path: str, dpi: int = 150) -> None:
    """Write a figure atomically, in the format its extension names."""
    from sdetool.io.atomic import atomic_path

    kind = figure_format(path)
    with atomic_path(path) as temporary:
        # no creation dates: the same results give the same file
        metadata = {"svg": {"Date": None}, "pdf": {"CreationDate": None}}.get(kind)
        from matplotlib import rc_context

        with rc_context({"svg.hashsalt": "sdetool"}):  # SVG element ids are random otherwise
            figure.savefig(temporary, format=kind, dpi=dpi, metadata=metadata)
