"""``analyze``: stream each embedding set once, build its spectrum, partition it, summarise it.

This module wires the pure parts together (sources -> Gram -> spectrum -> metrics) into the result
objects of :mod:`sdetool.analysis.report`; it never prints.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from sdetool.analysis.options import AnalysisOptions
from sdetool.analysis.report import SCHEMA, AnalysisReport, CrossAnalysis, SetAnalysis
from sdetool.analysis.spatial import REEXTRACT, check_sources, spatial_bands, token_sources
from sdetool.errors import BadInputError
from sdetool.io.arrays import array_inputs, is_array_input
from sdetool.io.sources import dtype_name, iter_blocks, open_inputs, prefetch
from sdetool.runtime.devices import describe, resolve_device
from sdetool.runtime.distributed import World, all_reduce_state, current_world, on_main
from sdetool.spectral import bands, metrics, spectrum
from sdetool.spectral.gram import GramAccumulator, GramState
from sdetool.spectral.scaling import SubsetAccumulators, check_sizes, scale_entries
from sdetool.spectral.summary import intervals, partition_state, resolved_values, summarize

__all__ = ["SCHEMA", "AnalysisOptions", "AnalysisReport", "CrossAnalysis", "Progress", "SetAnalysis", "analyze"]

_BLOCK_BYTES = 32 << 20  # float64 bytes per streamed block


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


def make_accumulator(dim: int, options: AnalysisOptions, device: str, keep_rows: bool, capacity: int = 0):
    """The accumulator for ``device``: numpy on ``cpu``, torch elsewhere (kept rows stay on the host).

    Jackknife blocks (``--bootstrap``) are kept by the numpy accumulator only.
    """
    common = {"l2": options.l2, "drop_nonfinite": options.drop_nonfinite, "sample_rows": options.sample_rows(dim),
              "seed": options.seed}
    if device == "cpu" or keep_rows or options.bootstrap:
        return GramAccumulator(dim=dim, row_space=keep_rows, blocks=options.bootstrap or 0, capacity=capacity, **common)
    from sdetool.spectral.gram_torch import TorchGramAccumulator

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
) -> tuple[GramState, dict]:
    """One pass over a set's shards (this rank's share of them) into a global :class:`GramState`.

    Returns the state and, with ``options.scale``, the states of the row subsets ``{(size, repeat): state}``
    accumulated in the same pass (else an empty dict).
    """
    progress = progress or Progress()
    dim = shards[0].shape[1]
    offsets = np.concatenate([[0], np.cumsum([s.shape[0] for s in shards])]).astype(np.int64)
    selection = _selection(int(offsets[-1]), options)
    mine = world.my_share(len(shards))
    rows_here = int(selection.size if selection is not None else sum(shards[i].shape[0] for i in mine))
    accumulator = make_accumulator(dim, options, device, keep_rows, capacity=rows_here if keep_rows else 0)
    subsets = None
    if options.scale:
        subsets = SubsetAccumulators(int(offsets[-1]), dim, options, selection, keep_rows=not world.distributed)
    progress.start(label, int(sum(shards[i].shape[0] for i in mine)))
    try:
        blocks = iter_blocks([(shards[i], int(offsets[i])) for i in mine], _block_rows(options, dim), selection)
        for block in prefetch(blocks):
            accumulator.update(block.rows, block.positions)
            if subsets is not None:
                subsets.update(block.rows, block.positions)
            progress.advance(block.scanned)
    finally:
        progress.finish()
    states = subsets.states() if subsets is not None else {}
    return all_reduce_state(accumulator.finalize(), world), {k: all_reduce_state(v, world) for k, v in states.items()}


def check_memory(label: str, n: int, dim: int, row_space: bool, options: AnalysisOptions, vectors: bool,
                 ranks: int = 1) -> None:
    """Refuse, before reading, an analysis whose path (chosen from the shape) cannot fit in memory, with the
    numbers: what it needs, what is available, and what would fit. Under torchrun rank 0 decides for all (its
    node's memory shared by the ranks on it)."""
    import os

    from sdetool.runtime.memory import LIMIT_VARIABLE, available_memory, size_text
    from sdetool.spectral.gram import largest_rows_fitting, memory_needed

    plan = {"blocks": options.bootstrap or 0, "vectors": vectors, "block_rows": _block_rows(options, dim)}
    need = memory_needed(n, dim, row_space=row_space, **plan)
    room = available_memory()
    if room is None:
        return
    room //= max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1)) if ranks > 1 else 1
    if need <= room:
        return
    distributed = ranks > 1
    fitting = 0 if distributed else largest_rows_fitting(dim, room, **plan)
    reading = 2 * min(plan["block_rows"], n) * dim * 8
    if row_space:
        what = f"the row-space analysis of {n:,} x {dim:,} rows (n <= d: the rows and their SVD)"
    else:
        what = f"the {dim:,} x {dim:,} float64 Gram of a {n:,} x {dim:,} set (d x d, whatever n)"
    if reading > need / 2:
        advice = f"most of it is the read buffer: a smaller --block-rows (now {plan['block_rows']:,} rows) fits"
    elif fitting:
        advice = (f"--sample {fitting:,} (or fewer) analyzes that many rows in the row space, which fits"
                  + ("; --bootstrap adds a copy of the rows" if plan["blocks"] else ""))
    elif distributed:
        advice = "under torchrun every rank holds the d x d Gram: run one process (n <= d uses the rows) or a larger machine"
    else:
        advice = f"not even 2 rows of width {dim:,} fit: use fewer dimensions or a machine with more memory"
    raise BadInputError(f"{label}: {what} needs about {size_text(need)}, but about {size_text(room)} is available; "
                        f"{advice} ({LIMIT_VARIABLE}=SIZE overrides the memory found)")


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
        aligned = bands.band_alignment(resolved_values(first.partition), first.top_vectors, resolved_values(second.partition),
                                       second.top_vectors, _edges(first.svd_bands))
    return CrossAnalysis(first.key, second.key, paired, hellinger, k, overlap, angles, gap,
                         "; ".join(notes) or None, aligned)


def _names(keys: list, what: str = "") -> str:
    """``image has`` / ``image and text have`` (followed by ``what`` when given)."""
    subject = " and ".join(keys) + (" has" if len(keys) == 1 else " have")
    return f"{subject} {what}" if what else subject


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
    return bands.svd_bands(resolved_values(part), _band_edges(part.singular_values.size, options, label), options.energy)


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
        One file, or several shards of the same sets (see :mod:`sdetool.io.sources` for the formats).
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
    if is_array_input(inputs):  # arrays and tensors (a notebook): the same pass as a .npy file of them
        specs, opened = ["array"], array_inputs(inputs, keys)
        if options.spatial_bands:
            raise BadInputError("--spatial-bands: reads token grids from a store; arrays have none")
    else:
        specs = [inputs] if isinstance(inputs, str) else list(inputs)
        opened = open_inputs(specs, keys)
    world = World() if local else current_world()
    keep_vectors = vectors if vectors is not None else (options.top_k if len(opened) > 1 else 0)
    with_bands = options.bands is not None or options.band_starts is not None
    token_grids = _prepare_views(opened, options, specs[0])
    if with_bands and len(opened) > 1:
        keep_vectors = 1 << 30  # every band's directions, for the per-band alignment
    for key, shards in opened.items():
        if options.scale:
            check_sizes(options.scale, min(_rows(shards), options.sample or _rows(shards)), _label(key, shards))
    results = {key: _analyze_set(key, shards, options, world, progress, keep_vectors, token_grids.get(key))
               for key, shards in opened.items()}
    ordered = list(results.values())
    cross = tuple(
        cross_analysis(ordered[i], ordered[j], options.top_k)
        for i in range(len(ordered))
        for j in range(i + 1, len(ordered))
    )
    return AnalysisReport(results, cross)


def _rows(shards) -> int:
    return int(sum(s.shape[0] for s in shards))


def _label(key: str, shards) -> str:
    return shards[0].label if len(shards) == 1 else f"{key} ({len(shards)} shards)"


def _analyze_set(key: str, shards, options: AnalysisOptions, world: World, progress, keep_vectors: int,
                 token_grids) -> SetAnalysis:
    """Stream one set, partition it (and its subsets and jackknife replicates), and assemble its result."""
    dim, n_rows, label = shards[0].shape[1], _rows(shards), _label(key, shards)
    if n_rows < 1:
        raise BadInputError(f"{label}: has n = 0 rows; there is nothing to analyze")
    n_selected = min(n_rows, options.sample or n_rows)
    keep_rows = n_selected <= dim and not world.distributed  # wide: the row space, a direct SVD on the host
    on_main(world, lambda: check_memory(label, n_selected, dim, keep_rows, options,
                                        vectors=options.null == "ddpa" or keep_vectors > 0, ranks=world.size))
    device = "cpu" if keep_rows or options.bootstrap else resolve_device(options.device, n_selected, dim)
    state, subsets = stream_state(shards, options, world=world, progress=progress, label=label,
                                  keep_rows=keep_rows, device=device)
    result, scores, vectors = summarize(state, options, label=label, vectors=keep_vectors)
    part = result.partition
    scale = None
    if subsets:
        parts = {k: partition_state(s, options, f"{label} subset of {k[0]} rows").partition for k, s in subsets.items()}
        scale = scale_entries(parts, options.scale, options.repeats)
    unit_count = max(state.n - state.zero_rows, 1)
    return SetAnalysis(
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
        spatial_bands=_spatial_bands(token_grids, key, options, progress),
        distinct_rows=result.sample.distinct,
        intervals=intervals(state, result, options, label) or None,
        scale=scale,
    )
