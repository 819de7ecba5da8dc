"""``analyze``: stream each embedding set once, build its spectrum, partition it, summarise it.

This module wires the pure parts together (sources -> Gram -> spectrum -> metrics) and defines the
result objects; it never prints. Every result has ``to_dict()`` (the JSON contract,
``docs/json-schema.md``) and the per-set result a pandas ``to_frame()`` of its components.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from sdetool import __version__, metrics, spectrum
from sdetool.distributed import World, all_reduce_state, current_world
from sdetool.errors import BadInputError
from sdetool.gram import GramAccumulator, GramState
from sdetool.sources import dtype_name, iter_blocks, open_inputs, prefetch

SCHEMA = "sdetool.analysis/1"
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
    noise_estimator : {"median", "mppca", "iqr"}
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

    def __post_init__(self) -> None:
        try:
            self.partition_options()
        except ValueError as error:
            raise BadInputError(str(error)) from None
        checks = [
            (self.top_k >= 1, f"top_k must be >= 1, got {self.top_k}"),
            (self.sample is None or self.sample >= 2, f"sample must be >= 2 rows, got {self.sample}"),
            (self.block_rows is None or self.block_rows >= 1, f"block_rows must be >= 1, got {self.block_rows}"),
            (1 <= self.alpha_window[0] <= self.alpha_window[1],
             f"alpha_window must be 1 <= first <= last, got {tuple(self.alpha_window)}"),
            (self.iqr_entries >= 4, f"iqr_entries must be >= 4, got {self.iqr_entries}"),
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


def _clean(value):
    """JSON-safe: NaN/Inf -> None, numpy scalars -> Python."""
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _clean_list(values) -> list:
    return [_clean(v) for v in np.asarray(values).tolist()]


@dataclass(frozen=True)
class SetAnalysis:
    """The analysis of one embedding set (all its shards as one matrix)."""

    key: str
    sources: tuple[str, ...]
    n_rows: int
    n_samples: int
    dim: int
    dtype: str
    centered: bool
    normalized: bool
    partition: spectrum.SpectralPartition
    metrics: dict
    unit_mean: np.ndarray
    options: AnalysisOptions
    input_attrs: dict = field(default_factory=dict)
    dropped_nonfinite: int = 0
    zero_rows: int = 0
    top_vectors: np.ndarray | None = None

    @property
    def singular_values(self) -> np.ndarray:
        return self.partition.singular_values

    def to_dict(self) -> dict:
        """The ``sdetool.analysis/1`` object of this set (see ``docs/json-schema.md``)."""
        part = self.partition
        options = part.options
        weights = spectrum.component_weights(part.singular_values, options.energy)
        bands = {}
        for index, name in enumerate(spectrum.BANDS):
            members = part.labels == index
            bands[name] = {
                "count": int(members.sum()),
                "energy_share": _clean(part.shares[index]),
                "first_index": int(np.argmax(members)) + 1 if members.any() else None,
            }
        return {
            "schema": SCHEMA,
            "source": self.sources[0] if len(self.sources) == 1 else list(self.sources),
            "shards": list(self.sources),
            "key": self.key,
            "n_samples": self.n_samples,
            "n_rows": self.n_rows,
            "dim": self.dim,
            "dtype": self.dtype,
            "centered": self.centered,
            "normalized": self.normalized,
            "input_normalized": _clean(self.input_attrs.get("normalized")),
            "modality": self.input_attrs.get("modality"),
            "model": self.input_attrs.get("model"),
            "sample": self.options.sample,
            "dropped_nonfinite": self.dropped_nonfinite,
            "zero_rows": self.zero_rows,
            "n_effective": part.n,
            "beta": _clean(min(part.n, part.d) / max(part.n, part.d)),
            "singular_values": _clean_list(part.singular_values),
            "noise": {
                "estimator": options.noise_estimator,
                "sigma": _clean(part.sigma),
                "edge": _clean(part.edge),
                "edge_level": options.edge_level,
                "mp_edge": _clean(part.mp_edge),
                "signal_rank": part.signal_rank,
            },
            "strong_rule": {
                "name": options.strong_rule,
                "threshold": _clean(part.threshold),
                "iqr_k": options.iqr_k if options.strong_rule == "iqr" else None,
            },
            "energy": options.energy,
            "bands": bands,
            "components": {
                "band": part.band_names(),
                "energy_share": _clean_list(weights / weights.sum() if weights.sum() > 0 else weights),
                "snr": _clean_list(part.snr),
            },
            "metrics": {name: _clean(value) for name, value in self.metrics.items()},
            "options": self.options.to_dict(),
            "sdetool_version": __version__,
        }

    def to_frame(self):
        """Per-component table: index (1-based), singular_value, band, energy_share, snr."""
        import pandas as pd

        part = self.partition
        weights = spectrum.component_weights(part.singular_values, part.options.energy)
        total = weights.sum()
        return pd.DataFrame(
            {
                "key": self.key,
                "index": np.arange(1, part.singular_values.size + 1),
                "singular_value": part.singular_values,
                "band": part.band_names(),
                "energy_share": weights / total if total > 0 else weights,
                "snr": part.snr,
            }
        )


@dataclass(frozen=True)
class CrossAnalysis:
    """Cross-modal comparison of two sets (rows paired when ``paired``)."""

    a: str
    b: str
    paired: bool
    hellinger: float
    top_k: int | None = None
    subspace_overlap: float | None = None
    principal_angles: np.ndarray | None = None
    modality_gap: float | None = None
    note: str | None = None

    @property
    def name(self) -> str:
        return f"{self.a}~{self.b}"

    def to_dict(self) -> dict:
        angles = None if self.principal_angles is None else _clean_list(np.degrees(self.principal_angles))
        return {
            "a": self.a,
            "b": self.b,
            "paired": self.paired,
            "hellinger": _clean(self.hellinger),
            "top_k": self.top_k,
            "subspace_overlap": _clean(self.subspace_overlap),
            "subspace_distance": None if self.subspace_overlap is None else _clean(1.0 - self.subspace_overlap),
            "principal_angles_deg": angles,
            "modality_gap": _clean(self.modality_gap),
            "note": self.note,
        }


@dataclass(frozen=True)
class AnalysisReport:
    """All analysed sets, in the order asked for, and every pairwise cross-modal comparison."""

    sets: dict
    cross: tuple = ()

    def __getitem__(self, key: str) -> SetAnalysis:
        return self.sets[key]

    def to_dict(self) -> dict:
        """One set: the set object itself. Several: ``{"schema", "sets": {key: ...}, "cross": {...}}``."""
        if len(self.sets) == 1 and not self.cross:
            return next(iter(self.sets.values())).to_dict()
        return {
            "schema": SCHEMA,
            "sets": {key: result.to_dict() for key, result in self.sets.items()},
            "cross": {pair.name: pair.to_dict() for pair in self.cross},
            "sdetool_version": __version__,
        }

    def to_frame(self):
        """The per-component tables of every set, stacked."""
        import pandas as pd

        return pd.concat([result.to_frame() for result in self.sets.values()], ignore_index=True)


# --- the pass ------------------------------------------------------------------------------------


def _block_rows(options: AnalysisOptions, dim: int) -> int:
    return options.block_rows or max(64, _BLOCK_BYTES // (8 * dim))


def _selection(n_rows: int, options: AnalysisOptions) -> np.ndarray | None:
    if options.sample is None or options.sample >= n_rows:
        return None
    rng = np.random.default_rng(options.seed)
    return np.sort(rng.choice(n_rows, size=options.sample, replace=False)).astype(np.int64)


def stream_state(
    shards: Sequence,
    options: AnalysisOptions,
    *,
    world: World = World(),
    progress: Progress | None = None,
    label: str = "",
    keep_rows: bool = False,
) -> GramState:
    """One pass over a set's shards (this rank's share of them) into a global :class:`GramState`."""
    progress = progress or Progress()
    dim = shards[0].shape[1]
    offsets = np.concatenate([[0], np.cumsum([s.shape[0] for s in shards])]).astype(np.int64)
    selection = _selection(int(offsets[-1]), options)
    mine = world.my_share(len(shards))
    accumulator = GramAccumulator(
        dim=dim,
        l2=options.l2,
        drop_nonfinite=options.drop_nonfinite,
        keep_rows=keep_rows and not world.distributed,
        sample_rows=math.ceil(options.iqr_entries / dim) if options.noise_estimator == "iqr" else 0,
        seed=options.seed,
    )
    progress.start(label, int(sum(shards[i].shape[0] for i in mine)))
    try:
        blocks = iter_blocks([(shards[i], int(offsets[i])) for i in mine], _block_rows(options, dim), selection)
        for block in prefetch(blocks):
            accumulator.update(block.rows, block.positions)
            progress.advance(block.scanned)
    finally:
        progress.finish()
    return all_reduce_state(accumulator.finalize(), world)


def _singular_values(state: GramState, options: AnalysisOptions, rank: int) -> np.ndarray:
    if state.rows is not None and state.rows.shape[0] == state.n:
        rows = state.rows - state.mean if options.center else state.rows
        return spectrum.singular_values_direct(rows)[:rank]
    return spectrum.singular_values_from_gram(state.gram(options.center), rank=rank)


def _top_vectors(state: GramState, options: AnalysisOptions, k: int) -> np.ndarray:
    if state.rows is not None and state.rows.shape[0] == state.n:
        rows = state.rows - state.mean if options.center else state.rows
        return spectrum.top_right_singular_vectors_direct(rows, k)
    return spectrum.top_right_singular_vectors(state.gram(options.center), k)


def summarize(state: GramState, options: AnalysisOptions, *, label: str = "", need_vectors: bool = False):
    """Spectrum, partition and metrics of accumulated statistics.

    Returns
    -------
    partition : SpectralPartition
    metrics : dict
    top_vectors : ndarray of shape (d, k), or None
    """
    if state.nonfinite_rows and not options.drop_nonfinite:
        raise BadInputError(
            f"{label}: {state.nonfinite_rows} rows hold NaN or Inf (first at row {state.first_nonfinite}); "
            f"--drop-nonfinite analyzes the other rows"
        )
    if state.n < 2:
        dropped = f" after dropping {state.nonfinite_rows} non-finite rows" if state.nonfinite_rows else ""
        raise BadInputError(f"{label}: has {state.n} usable rows{dropped}; at least 2 are needed")
    n_effective = state.n - 1 if options.center else state.n
    rank = min(n_effective, state.dim)
    values = _singular_values(state, options, rank)
    entries = None
    if options.noise_estimator == "iqr":
        entries = state.entry_sample - state.mean if options.center else state.entry_sample
    part = spectrum.partition_spectrum(values, n_effective, state.dim, options.partition_options(), entries)
    alpha, r2 = metrics.power_law_alpha(values, options.alpha_window)
    scores = {
        "effective_rank": metrics.effective_rank(values),
        "effective_rank_on": "centered" if options.center else "uncentered",
        "stable_rank": metrics.stable_rank(values),
        "participation_ratio": metrics.participation_ratio(values),
        "power_law_alpha": alpha,
        "power_law_r2": r2,
        "power_law_window": [options.alpha_window[0], min(options.alpha_window[1], rank)],
        "mean_cosine": metrics.mean_cosine(state.unit_sum, state.n - state.zero_rows),
    }
    vectors = _top_vectors(state, options, options.top_k) if need_vectors else None
    return part, scores, vectors


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
    world = current_world()
    need_vectors = len(opened) > 1
    results: dict[str, SetAnalysis] = {}
    for key, shards in opened.items():
        dim = shards[0].shape[1]
        n_rows = int(sum(s.shape[0] for s in shards))
        label = shards[0].label if len(shards) == 1 else f"{key} ({len(shards)} shards)"
        if n_rows < 2:
            raise BadInputError(f"{label}: has n = {n_rows} rows; at least 2 are needed")
        n_selected = min(n_rows, options.sample or n_rows)
        state = stream_state(shards, options, world=world, progress=progress, label=label,
                             keep_rows=n_selected <= dim)
        part, scores, vectors = summarize(state, options, label=label, need_vectors=need_vectors)
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
        )
    ordered = list(results.values())
    cross = tuple(
        cross_analysis(ordered[i], ordered[j], options.top_k)
        for i in range(len(ordered))
        for j in range(i + 1, len(ordered))
    )
    return AnalysisReport(results, cross)
