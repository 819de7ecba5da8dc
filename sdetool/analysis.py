"""``analyze``: stream each embedding set once, build its spectrum, partition it, summarise it.

This module wires the pure parts together (sources -> Gram -> spectrum -> metrics) into the result
objects of :mod:`sdetool.results`; it never prints.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from sdetool import metrics, spectrum
from sdetool.devices import check_device, describe, resolve_device
from sdetool.distributed import World, all_reduce_state, current_world
from sdetool.errors import BadInputError
from sdetool.gram import GramAccumulator, GramState
from sdetool.results import SCHEMA, AnalysisReport, CrossAnalysis, SetAnalysis
from sdetool.sources import dtype_name, iter_blocks, open_inputs, prefetch

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
        ]
        for ok, message in checks:
            if not ok:
                raise BadInputError(message)

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
    if _direct(state):
        values = spectrum.singular_values_direct(_centred_rows(state, options))[:rank]
        return values, 4.0 * eps * max(state.rows.shape) * float(values[0])
    values = spectrum.singular_values_from_gram(state.gram(options.center), rank=rank)
    return values, 4.0 * float(np.sqrt(eps * state.dim)) * float(values[0])


def _top_vectors(state: GramState, options: AnalysisOptions, k: int) -> np.ndarray:
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
    if state.n < 2:
        dropped = f" after dropping {state.nonfinite_rows} non-finite rows" if state.nonfinite_rows else ""
        raise BadInputError(f"{label}: has {state.n} usable rows{dropped}; at least 2 are needed")
    if not np.isfinite(state.scatter).all():
        raise BadInputError(f"{label}: the float64 Gram overflowed (entries near 1e154 or larger); rescale the rows")


def summarize(state: GramState, options: AnalysisOptions, *, label: str = "", vectors: int = 0):
    """Spectrum, partition and metrics of accumulated statistics.

    Returns
    -------
    partition : SpectralPartition
    metrics : dict
    top_vectors : ndarray of shape (d, k), or None
        ``k = min(vectors, numerical rank)``; None when ``vectors`` is 0.
    """
    _check_usable(state, options, label)
    n_effective = state.n - 1 if options.center else state.n
    rank = min(n_effective, state.dim)
    values, floor = _singular_values(state, options, rank)
    entries = None
    if options.noise_estimator == "iqr":
        entries = state.entry_sample - state.mean if options.center else state.entry_sample
    try:
        part = spectrum.partition_spectrum(values, n_effective, state.dim, options.partition_options(), entries, floor)
    except ValueError as error:
        raise BadInputError(f"{label}: {error}") from None
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
    """Hellinger spectral distance always; subspace overlap and modality gap when dimensions match."""
    paired = first.n_samples == second.n_samples
    hellinger = metrics.hellinger_spectral_distance(first.singular_values, second.singular_values)
    if first.dim != second.dim:
        return CrossAnalysis(first.key, second.key, paired, hellinger,
                             note=f"dimensions differ ({first.dim} vs {second.dim}): no subspace overlap or gap")
    overlap = angles = None
    k = None
    if first.top_vectors is not None and second.top_vectors is not None:
        k = min(top_k, first.top_vectors.shape[1], second.top_vectors.shape[1])
        overlap, angles = metrics.subspace_overlap(first.top_vectors[:, :k], second.top_vectors[:, :k])
    gap = metrics.modality_gap(first.unit_mean, second.unit_mean)
    note = None if paired else f"row counts differ ({first.n_samples} vs {second.n_samples}): rows are not paired"
    return CrossAnalysis(first.key, second.key, paired, hellinger, k, overlap, angles, gap, note)


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
    results: dict[str, SetAnalysis] = {}
    for key, shards in opened.items():
        dim = shards[0].shape[1]
        n_rows = int(sum(s.shape[0] for s in shards))
        label = shards[0].label if len(shards) == 1 else f"{key} ({len(shards)} shards)"
        if n_rows < 2:
            raise BadInputError(f"{label}: has n = {n_rows} rows; at least 2 are needed")
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
        )
    ordered = list(results.values())
    cross = tuple(
        cross_analysis(ordered[i], ordered[j], options.top_k)
        for i in range(len(ordered))
        for j in range(i + 1, len(ordered))
    )
    return AnalysisReport(results, cross)
