"""``analyze``: stream each embedding set once, build its spectrum, partition it, summarise it.

This module wires the pure parts together (sources -> Gram -> spectrum -> metrics) into the result
objects of :mod:`sdetool.results`; it never prints.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from sdetool import bands, metrics, spectrum
from sdetool.devices import check_device, describe, resolve_device
from sdetool.distributed import World, all_reduce_state, current_world
from sdetool.errors import BadInputError
from sdetool.gram import GramAccumulator, GramState
from sdetool.results import SCHEMA, AnalysisReport, CrossAnalysis, SetAnalysis
from sdetool.sources import dtype_name, iter_blocks, open_inputs, prefetch
from sdetool.spatial import REEXTRACT, check_sources, spatial_bands, token_sources

__all__ = ["SCHEMA", "AnalysisOptions", "AnalysisReport", "CrossAnalysis", "Progress", "SetAnalysis", "analyze"]

_BLOCK_BYTES = 32 << 20  # float64 bytes per streamed block


@dataclass(frozen=True)
class AnalysisOptions:
    """Every choice of an analysis (METHOD.md sections 1-5); recorded in the output.

    Attributes
    ----------
    center : bool
        Subtract the column mean (MP theory is for zero-mean noise).
    l2 : bool
        Scale rows to unit norm first.
    noise_estimator : {"median", "median-gd", "mppca", "iqr"}
    edge_level : float
        Probability that pure noise crosses the noise edge; 0 for the bare MP edge.
    strong_rule : {"iqr", "gd"}
    iqr_k : float
        Tukey fence multiplier of the ``iqr`` strong rule.
    energy : {"power", "amplitude"}
    top_k : int
        Leading directions compared across sets (subspace overlap, principal angles).
    sample : int or None
        Analyze a seeded uniform random subset of this many rows.
    seed : int
        Seed of ``sample`` and of the entry sample of the ``iqr`` estimator.
    drop_nonfinite : bool
        Leave out rows holding NaN or Inf instead of refusing the input.
    alpha_window : (int, int)
        1-based index window of the power-law fit.
    block_rows : int or None
        Rows per streamed block (default: about 32 MiB of float64).
    iqr_entries : int
        Entries sampled for the ``iqr`` noise estimator.
    device : str
        Where the Gram is accumulated: ``auto`` (CUDA for large inputs when a GPU is present),
        ``cpu`` (numpy/BLAS), ``cuda`` or ``cuda:N`` (float64 on the GPU through torch).
    bands : int or None
        FITMM SVD bands: split the components into this many contiguous equal-count bands.
    band_starts : tuple of int or None
        Instead of ``bands``: the 0-based component index where each band after the first starts.
    spatial_bands : int or None
        Prism spatial-frequency bands of the sets' stored token grids (``extract --tokens``).
    spatial_smooth, spatial_center, split_image :
        See :class:`sdetool.spatial.SpatialOptions`.
    """

    center: bool = True
    l2: bool = False
    noise_estimator: str = "median"
    edge_level: float = 0.01
    strong_rule: str = "iqr"
    iqr_k: float = 1.5
    energy: str = "power"
    top_k: int = 10
    sample: int | None = None
    seed: int = 0
    drop_nonfinite: bool = False
    alpha_window: tuple[int, int] = (10, 100)
    block_rows: int | None = None
    iqr_entries: int = 1 << 20
    device: str = "auto"
    bands: int | None = None
    band_starts: tuple | None = None
    spatial_bands: int | None = None
    spatial_smooth: bool = False
    spatial_center: str = "channel"
    split_image: int | None = None

    def __post_init__(self) -> None:
        try:
            self.partition_options()
        except ValueError as error:
            raise BadInputError(str(error)) from None
        check_device(self.device)
        checks = [
            (self.top_k >= 1, f"top_k must be >= 1, got {self.top_k}"),
            (self.sample is None or self.sample >= 2, f"sample must be >= 2 rows, got {self.sample}"),
            (self.block_rows is None or self.block_rows >= 1, f"block_rows must be >= 1, got {self.block_rows}"),
            (1 <= self.alpha_window[0] <= self.alpha_window[1],
             f"alpha_window must be 1 <= first <= last, got {tuple(self.alpha_window)}"),
            (self.iqr_entries >= 4, f"iqr_entries must be >= 4, got {self.iqr_entries}"),
            (self.seed >= 0, f"seed must be >= 0, got {self.seed}"),
            (self.edge_level == 0 or self.edge_level >= 1e-10,
             f"edge_level must be 0 or at least 1e-10, got {self.edge_level}"),
            (self.bands is None or self.bands >= 1, f"--bands {self.bands}: the number of bands must be >= 1"),
            (self.bands is None or self.band_starts is None, "--bands and --band-starts: give one of them"),
            (self.split_image is None or self.spatial_bands is not None, "--split-image needs --spatial-bands"),
            (self.spatial_bands is not None or (not self.spatial_smooth and self.spatial_center == "channel"),
             "--smooth and --spatial-center shape the spatial bands: they need --spatial-bands"),
            (self.spatial_bands is None or self.sample is None,
             "--spatial-bands with --sample: the spatial view reads every image's grid, so it would not describe the "
             "sampled rows; analyze the token grids without --sample"),
            (self.band_starts is None or all(b > a for a, b in zip((0, *self.band_starts), self.band_starts)),
             f"--band-starts {','.join(map(str, self.band_starts or ()))}: the starts must be positive and strictly "
             f"increasing (0-based; the first band always starts at 0)"),
        ]
        for ok, message in checks:
            if not ok:
                raise BadInputError(message)
        self.spatial_options()

    def spatial_options(self):
        """The :class:`~sdetool.spatial.SpatialOptions` of ``--spatial-bands``, or None."""
        if self.spatial_bands is None:
            return None
        from sdetool.spatial import SpatialOptions

        return SpatialOptions(self.spatial_bands, self.spatial_smooth, self.spatial_center, self.split_image,
                              drop_nonfinite=self.drop_nonfinite)

    def partition_options(self) -> spectrum.PartitionOptions:
        return spectrum.PartitionOptions(
            noise_estimator=self.noise_estimator,
            edge_level=self.edge_level,
            strong_rule=self.strong_rule,
            iqr_k=self.iqr_k,
            energy=self.energy,
        )

    def to_dict(self) -> dict:
        out = asdict(self)
        out["alpha_window"] = list(self.alpha_window)
        out["band_starts"] = None if self.band_starts is None else list(self.band_starts)
        return out


class Progress:
    """Receives progress of the streaming pass; the default does nothing (the CLI draws a bar)."""

    def start(self, label: str, total_rows: int) -> None:
        """A set of ``total_rows`` rows starts streaming."""

    def advance(self, rows: int) -> None:
        """``rows`` more rows were read."""

    def finish(self) -> None:
        """The set is done."""


# --- the pass ------------------------------------------------------------------------------------


def _block_rows(options: AnalysisOptions, dim: int) -> int:
    return options.block_rows or max(64, _BLOCK_BYTES // (8 * dim))


def _selection(n_rows: int, options: AnalysisOptions) -> np.ndarray | None:
    if options.sample is None or options.sample >= n_rows:
        return None
    rng = np.random.default_rng(options.seed)
    return np.sort(rng.choice(n_rows, size=options.sample, replace=False)).astype(np.int64)


def make_accumulator(dim: int, options: AnalysisOptions, device: str, keep_rows: bool):
    """The accumulator for ``device``: numpy on ``cpu``, torch elsewhere (kept rows stay on the host)."""
    sample_rows = math.ceil(options.iqr_entries / dim) if options.noise_estimator == "iqr" else 0
    common = {"l2": options.l2, "drop_nonfinite": options.drop_nonfinite, "sample_rows": sample_rows,
              "seed": options.seed}
    if device == "cpu" or keep_rows:
        return GramAccumulator(dim=dim, keep_rows=keep_rows, **common)
    from sdetool.gram_torch import TorchGramAccumulator

    return TorchGramAccumulator(dim, device.removeprefix("torch:"), **common)


def stream_state(
    shards: Sequence,
    options: AnalysisOptions,
    *,
    world: World = World(),
    progress: Progress | None = None,
    label: str = "",
    keep_rows: bool = False,
    device: str = "cpu",
) -> GramState:
    """One pass over a set's shards (this rank's share of them) into a global :class:`GramState`."""
    progress = progress or Progress()
    dim = shards[0].shape[1]
    offsets = np.concatenate([[0], np.cumsum([s.shape[0] for s in shards])]).astype(np.int64)
    selection = _selection(int(offsets[-1]), options)
    mine = world.my_share(len(shards))
    accumulator = make_accumulator(dim, options, device, keep_rows)
    progress.start(label, int(sum(shards[i].shape[0] for i in mine)))
    try:
        blocks = iter_blocks([(shards[i], int(offsets[i])) for i in mine], _block_rows(options, dim), selection)
        for block in prefetch(blocks):
            accumulator.update(block.rows, block.positions)
            progress.advance(block.scanned)
    finally:
        progress.finish()
    return all_reduce_state(accumulator.finalize(), world)


def _direct(state: GramState) -> bool:
    return state.rows is not None and state.rows.shape[0] == state.n


def _centred_rows(state: GramState, options: AnalysisOptions) -> np.ndarray:
    return state.rows - state.mean if options.center else state.rows


def _singular_values(state: GramState, options: AnalysisOptions, rank: int) -> tuple[np.ndarray, float]:
    """The ``rank`` leading singular values and the numerical floor below which they are zero.

    The floor is the precision of the computation: ``4 eps max(n, d) s_1`` for a direct SVD and
    ``4 sqrt(eps d) s_1`` through the float64 Gram (its eigenvalues carry ``eps d s_1^2`` errors).
    """
    eps = np.finfo(np.float64).eps
    if rank == 0:  # one centred row (or none left): no components
        return np.zeros(0), 0.0
    if _direct(state):
        values = spectrum.singular_values_direct(_centred_rows(state, options))[:rank]
        return values, 4.0 * eps * max(state.rows.shape) * float(values[0])
    values = spectrum.singular_values_from_gram(state.gram(options.center), rank=rank)
    return values, 4.0 * float(np.sqrt(eps * state.dim)) * float(values[0])


def _top_vectors(state: GramState, options: AnalysisOptions, k: int) -> np.ndarray:
    if k == 0:  # numerical rank 0: no direction
        return np.zeros((state.dim, 0))
    if _direct(state):
        return spectrum.top_right_singular_vectors_direct(_centred_rows(state, options), k)
    return spectrum.top_right_singular_vectors(state.gram(options.center), k)


def _check_usable(state: GramState, options: AnalysisOptions, label: str) -> None:
    if state.nonfinite_rows and not options.drop_nonfinite:
        rows = "1 row holds" if state.nonfinite_rows == 1 else f"{state.nonfinite_rows} rows hold"
        raise BadInputError(
            f"{label}: {rows} NaN or Inf (the first at 0-based row {state.first_nonfinite}); "
            f"--drop-nonfinite analyzes the other rows"
        )
    if not np.isfinite(state.scatter).all():
        raise BadInputError(f"{label}: the float64 Gram overflowed (entries near 1e154 or larger); rescale the rows")


def summarize(state: GramState, options: AnalysisOptions, *, label: str = "", vectors: int = 0):
    """Spectrum, partition and metrics of accumulated statistics.

    Fewer than 2 rows, or a spectrum of numerical rank 0 or 1, give a degenerate partition (see
    :func:`sdetool.spectrum.degenerate_partition`) and null metrics where they are undefined.

    Returns
    -------
    partition : SpectralPartition
    metrics : dict
    top_vectors : ndarray of shape (d, k), or None
        ``k = min(vectors, numerical rank)`` (0 for numerical rank 0); None when ``vectors`` is 0.
    """
    _check_usable(state, options, label)
    n_effective = max(state.n - 1, 0) if options.center else state.n
    rank = min(n_effective, state.dim)
    values, floor = _singular_values(state, options, rank)
    entries = None
    if options.noise_estimator == "iqr" and state.entry_sample is not None:
        entries = state.entry_sample - state.mean if options.center else state.entry_sample
    try:
        part = spectrum.partition_spectrum(values, n_effective, state.dim, options.partition_options(), entries, floor)
    except ValueError as error:
        raise BadInputError(f"{label}: {error}") from None
    if part.numerical_rank < 2:  # a collapsed spectrum: rounding error below the floor must not count as rank
        values = _resolved(part)
    alpha, r2 = metrics.power_law_alpha(values, options.alpha_window)
    window = [options.alpha_window[0], min(options.alpha_window[1], rank)]
    scores = {
        "effective_rank": metrics.effective_rank(values),
        "effective_rank_on": "centered" if options.center else "uncentered",
        "stable_rank": metrics.stable_rank(values),
        "participation_ratio": metrics.participation_ratio(values),
        "power_law_alpha": alpha,
        "power_law_r2": r2,
        "power_law_window": window if window[0] <= window[1] else None,
        "mean_cosine": metrics.mean_cosine(state.unit_sum, state.n - state.zero_rows),
    }
    top = _top_vectors(state, options, min(vectors, part.numerical_rank)) if vectors else None
    return part, scores, top


def cross_analysis(first: SetAnalysis, second: SetAnalysis, top_k: int) -> CrossAnalysis:
    """Hellinger spectral distance always; subspace overlap and modality gap when dimensions match.

    What a degenerate set leaves undefined is None, and ``note`` says why: the Hellinger distance of a
    set without spectral energy (numerical rank 0), the overlap of a set without any direction, the
    modality gap of a set whose rows are all zero (no unit rows).
    """
    paired = first.n_samples == second.n_samples
    empty = [s.key for s in (first, second) if s.partition.numerical_rank == 0]
    hellinger = float("nan") if empty else metrics.hellinger_spectral_distance(first.singular_values,
                                                                                 second.singular_values)
    notes = [f"{_names(empty)} no spectral energy (numerical rank 0): hellinger is null"] if empty else []
    if first.dim != second.dim:
        notes.insert(0, f"dimensions differ ({first.dim} vs {second.dim}): no subspace overlap or gap")
        return CrossAnalysis(first.key, second.key, paired, hellinger, note="; ".join(notes))
    if not paired:
        notes.insert(0, f"row counts differ ({first.n_samples} vs {second.n_samples}): rows are not paired")
    overlap = angles = k = None
    if first.top_vectors is not None and second.top_vectors is not None:
        k = min(top_k, first.top_vectors.shape[1], second.top_vectors.shape[1])
        if k:
            overlap, angles = metrics.subspace_overlap(first.top_vectors[:, :k], second.top_vectors[:, :k])
        else:
            flat = [s.key for s in (first, second) if s.top_vectors.shape[1] == 0]
            notes.append(f"{_names(flat)} no singular direction: subspace_overlap is null")
    pointless = [s.key for s in (first, second) if s.n_samples == s.zero_rows]
    gap = None if pointless else metrics.modality_gap(first.unit_mean, second.unit_mean)
    if pointless:
        notes.append(f"{_names(pointless, 'only zero rows')} (no unit rows to average): modality_gap is null")
    aligned = None
    if first.svd_bands is not None and second.svd_bands is not None:
        aligned = bands.band_alignment(_resolved(first.partition), first.top_vectors, _resolved(second.partition),
                                       second.top_vectors, _edges(first.svd_bands))
    return CrossAnalysis(first.key, second.key, paired, hellinger, k, overlap, angles, gap,
                         "; ".join(notes) or None, aligned)


def _names(keys: list, what: str = "") -> str:
    """``image has`` / ``image and text have`` (followed by ``what`` when given)."""
    subject = " and ".join(keys) + (" has" if len(keys) == 1 else " have")
    return f"{subject} {what}" if what else subject


def _resolved(part: spectrum.SpectralPartition) -> np.ndarray:
    """Singular values with those below the numerical floor set to zero (their size is rounding error)."""
    values = part.singular_values.copy()
    values[part.numerical_rank:] = 0.0
    return values


def _edges(svd_bands) -> np.ndarray:
    return np.array([band.first for band in svd_bands] + [svd_bands[-1].last + 1], dtype=np.int64)


def _check_band_pairs(opened: dict) -> None:
    """Per-band cross-modal alignment needs paired sets of one dimension: refuse others before any work."""
    shapes = {key: (shards[0].shape[1], sum(s.shape[0] for s in shards)) for key, shards in opened.items()}
    (first, (dim, rows)), *others = shapes.items()
    for other, (other_dim, other_rows) in others:
        problem = None
        if other_dim != dim:
            problem = f"dimensions differ ({first}: d = {dim}, {other}: d = {other_dim})"
        elif other_rows != rows:
            problem = f"row counts differ ({first}: {rows}, {other}: {other_rows}): the rows are not paired"
        if problem:
            raise BadInputError(f"--bands with keys {first} and {other}: per-band cross-modal alignment needs "
                                f"paired sets of the same dimension, but {problem}; analyze one --key at a time")


def _svd_bands(part: spectrum.SpectralPartition, options: AnalysisOptions, label: str):
    """The FITMM bands of ``--bands`` / ``--band-starts``; None without them or without any component."""
    if (options.bands is None and options.band_starts is None) or part.singular_values.size == 0:
        return None
    return bands.svd_bands(_resolved(part), _band_edges(part.singular_values.size, options, label), options.energy)


def _band_edges(components: int, options: AnalysisOptions, label: str) -> np.ndarray:
    try:
        return bands.band_edges(components, options.bands, options.band_starts)
    except ValueError as error:
        flag = "--bands" if options.band_starts is None else "--band-starts"
        raise BadInputError(f"{flag}: {label}: {error} (p: its number of singular components, "
                            f"min(n{' - 1' if options.center else ''}, d))") from None


def _prepare_views(opened: dict, options: AnalysisOptions, source: str) -> dict:
    """Refuse band options the inputs cannot meet before any streaming; the token sources per key."""
    if options.bands is not None or options.band_starts is not None:
        if len(opened) > 1:
            _check_band_pairs(opened)
        for key, shards in opened.items():
            rows = min(sum(s.shape[0] for s in shards), options.sample or 1 << 62)
            components = min(rows - int(options.center), shards[0].shape[1])
            if components > 0:  # a set without components (one centred row) reports null bands instead
                _band_edges(components, options, key)
    spatial_options = options.spatial_options()
    if spatial_options is None:
        return {}
    found = {key: token_sources(shards, key) for key, shards in opened.items()}
    if all(sources is None for sources in found.values()):
        raise BadInputError(f"--spatial-bands: {', '.join(found)} of {source} has no patch-token grids; "
                            + REEXTRACT.replace("it", "the store", 1))
    for key, sources in found.items():
        if sources is not None:
            check_sources(sources, spatial_options, key)
    return found


def _spatial_bands(sources, key: str, options: AnalysisOptions, progress):
    if not sources:
        return None
    label = sources[0].label if len(sources) == 1 else f"{key} tokens ({len(sources)} shards)"
    return spatial_bands(sources, options.spatial_options(), progress or Progress(), label)


def analyze(
    inputs: str | Sequence[str],
    keys: Sequence[str] | None = None,
    options: AnalysisOptions | None = None,
    *,
    progress: Progress | None = None,
    local: bool = False,
    vectors: int | None = None,
) -> AnalysisReport:
    """Analyze the singular spectrum of every embedding set of the input.

    Parameters
    ----------
    inputs : str or sequence of str
        One file, or several shards of the same sets (see :mod:`sdetool.sources` for the formats).
    keys : sequence of str, optional
        Sets to analyze, in order (default: all).
    options : AnalysisOptions, optional
    progress : Progress, optional
        Receives streaming progress.
    local : bool
        Analyze in this process alone, even under ``torchrun`` (for a caller that runs on one rank).
    vectors : int, optional
        Leading right singular vectors kept per set as ``top_vectors`` (default: ``top_k`` when there
        are several sets, for the cross-modal section, else none). ``compare`` asks for all of them.

    Returns
    -------
    AnalysisReport
        Under ``torchrun`` every rank returns the same report; each streamed only its own shards.

    Examples
    --------
    >>> report = analyze("builtin:spiked")                          # doctest: +SKIP
    >>> report["embeddings"].to_dict()["bands"]["strong"]["count"]  # doctest: +SKIP
    26
    """
    options = options or AnalysisOptions()
    specs = [inputs] if isinstance(inputs, str) else list(inputs)
    opened = open_inputs(specs, keys)
    world = World() if local else current_world()
    keep_vectors = vectors if vectors is not None else (options.top_k if len(opened) > 1 else 0)
    with_bands = options.bands is not None or options.band_starts is not None
    token_grids = _prepare_views(opened, options, specs[0])
    if with_bands and len(opened) > 1:
        keep_vectors = 1 << 30  # every band's directions, for the per-band alignment
    results: dict[str, SetAnalysis] = {}
    for key, shards in opened.items():
        dim = shards[0].shape[1]
        n_rows = int(sum(s.shape[0] for s in shards))
        label = shards[0].label if len(shards) == 1 else f"{key} ({len(shards)} shards)"
        if n_rows < 1:
            raise BadInputError(f"{label}: has n = 0 rows; there is nothing to analyze")
        n_selected = min(n_rows, options.sample or n_rows)
        keep_rows = n_selected <= dim and not world.distributed  # small: a direct SVD on the host
        device = "cpu" if keep_rows else resolve_device(options.device, n_selected, dim)
        state = stream_state(shards, options, world=world, progress=progress, label=label,
                             keep_rows=keep_rows, device=device)
        part, scores, vectors = summarize(state, options, label=label, vectors=keep_vectors)
        unit_count = max(state.n - state.zero_rows, 1)
        results[key] = SetAnalysis(
            key=key,
            sources=tuple(s.label for s in shards),
            n_rows=n_rows,
            n_samples=state.n,
            dim=dim,
            dtype=dtype_name(shards[0].dtype),
            centered=options.center,
            normalized=options.l2,
            partition=part,
            metrics=scores,
            unit_mean=state.unit_sum / unit_count,
            options=options,
            input_attrs=dict(shards[0].attrs),
            dropped_nonfinite=state.nonfinite_rows,
            zero_rows=state.zero_rows,
            top_vectors=vectors,
            device=describe(device),
            svd_bands=_svd_bands(part, options, label),
            spatial_bands=_spatial_bands(token_grids.get(key), key, options, progress),
        )
    ordered = list(results.values())
    cross = tuple(
        cross_analysis(ordered[i], ordered[j], options.top_k)
        for i in range(len(ordered))
        for j in range(i + 1, len(ordered))
    )
    return AnalysisReport(results, cross)
