"""From accumulated statistics to a spectrum, its partition under a null, metrics and intervals.

:func:`summarize` is what ``analyze`` reports for one set; :func:`partition_state` is the partition
alone, which the jackknife replicates (``--bootstrap``) and the row subsets (``--scale``) reuse, so
every number comes from one code path. No files, no printing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from sdetool.errors import BadInputError
from sdetool.spectral import metrics, nulls, spectrum
from sdetool.spectral.gram import GramState


@dataclass(frozen=True)
class Sample:
    """How many independent rows a state holds: ``n`` effective rows of the partition and the repetition.

    Repeated rows add no new direction: a matrix of ``k`` distinct rows each repeated ``c`` times has the
    spectrum of the ``k`` distinct rows scaled by ``sqrt(c)``. The partition then treats the distinct rows
    as the sample (``n = k - 1`` after centring) and ``repetition = n_rows / k``.
    """

    rows: int
    distinct: int
    effective: int
    repetition: float

    @property
    def repeated(self) -> bool:
        return self.distinct < self.rows

    def note(self) -> str | None:
        if not self.repeated:
            return None
        return (f"repeated rows: {self.rows:,} rows but only {self.distinct:,} distinct; the partition treats the "
                f"distinct rows as the sample (n = {self.effective:,}), since repeats add no direction")


def sample_of(state: GramState, center: bool, distinct: int | None = None) -> Sample:
    """The :class:`Sample` of a state (``distinct`` overrides the state's own distinct-row count)."""
    distinct = distinct if distinct is not None else state.distinct_rows
    distinct = state.n if distinct is None or distinct <= 0 else min(distinct, state.n)
    effective = max(distinct - int(center), 0)
    repetition = state.n / distinct if distinct else 1.0
    return Sample(state.n, distinct, effective, repetition)


def _direct(state: GramState) -> bool:
    return state.rows is not None and state.rows.shape[0] == state.n


def _centred_rows(state: GramState, center: bool) -> np.ndarray:
    return state.rows - state.mean if center else state.rows


def singular_values(state: GramState, center: bool, rank: int, with_vectors: bool = False):
    """The ``rank`` leading singular values, the numerical floor below which they are zero, and (with
    ``with_vectors``) every right singular vector from the same decomposition, else None.

    The floor is the precision of the computation: ``4 eps max(n, d) s_1`` for a direct SVD and
    ``4 sqrt(eps d) s_1`` through the float64 Gram (its eigenvalues carry ``eps d s_1^2`` errors).
    """
    eps = np.finfo(np.float64).eps
    if rank == 0:  # one centred row (or none left): no components
        return np.zeros(0), 0.0, None
    direct = _direct(state)
    vectors = None
    if with_vectors:
        values, vectors = (spectrum.singular_decomposition(rows=_centred_rows(state, center)) if direct
                           else spectrum.singular_decomposition(gram=state.gram(center)))
        values = values[:rank]
    elif direct:
        values = spectrum.singular_values_direct(_centred_rows(state, center))[:rank]
    else:
        values = spectrum.singular_values_from_gram(state.gram(center), rank=rank)
    floor = 4.0 * (eps * max(state.rows.shape) if direct else float(np.sqrt(eps * state.dim))) * float(values[0])
    return values, floor, vectors


def top_vectors(state: GramState, center: bool, k: int) -> np.ndarray:
    """The ``k`` leading right singular vectors, shape (d, k)."""
    if k == 0:  # numerical rank 0: no direction
        return np.zeros((state.dim, 0))
    if _direct(state):
        return spectrum.top_right_singular_vectors_direct(_centred_rows(state, center), k)
    return spectrum.top_right_singular_vectors(state.gram(center), k)


def check_usable(state: GramState, options, label: str) -> None:
    """Refuse non-finite rows (unless dropped) and an overflowed Gram, naming the input."""
    if state.nonfinite_rows and not options.drop_nonfinite:
        rows = "1 row holds" if state.nonfinite_rows == 1 else f"{state.nonfinite_rows} rows hold"
        raise BadInputError(
            f"{label}: {rows} NaN or Inf (the first at 0-based row {state.first_nonfinite}); "
            f"--drop-nonfinite analyzes the other rows"
        )
    if not state.row_space and not np.isfinite(state.scatter).all():
        raise BadInputError(f"{label}: the float64 Gram overflowed (entries near 1e154 or larger); rescale the rows")


# --- the null's inputs -------------------------------------------------------------------------------


def null_inputs(state: GramState, options, sample: Sample, permuted: np.ndarray | None = None,
                basis: np.ndarray | None = None) -> nulls.NullInputs:
    """What ``options.null`` needs from a state: column variances, the vectors, permuted samples.

    Variances are per effective distinct row: ``diag(X^T X) / (repetition n)``. ``permuted`` reuses
    permuted top values computed before (the jackknife replicates share the full data's); ``basis``
    holds every right singular vector when the caller has them (``ddpa``).
    """
    null = options.null
    if null == "mp":
        return nulls.NullInputs(repetition=sample.repetition)
    variances = np.clip(state.column_energy(options.center), 0.0, None) / max(sample.repetition * sample.effective, 1)
    vectors = None
    if null == "ddpa":
        basis = basis if basis is not None else top_vectors(state, options.center, state.dim)
        vectors = (lambda k: basis[:, :k])  # the leading k right singular vectors

    tops, rows = (None, 0) if null != "permutation" else permuted_tops(state, options, permuted)
    return nulls.NullInputs(variances=variances, vectors=vectors, permuted_tops=tops, permuted_rows=rows,
                            repetition=sample.repetition)


def permuted_tops(state: GramState, options, known: tuple | None = None) -> tuple[np.ndarray, int]:
    """``(top values, rows)`` of ``options.null_repeats`` column permutations of the state's row sample.

    The sample's repeated rows are dropped first (a permutation would make them distinct).
    """
    if known is not None:
        return known
    if state.entry_sample is None or state.entry_sample.shape[0] < 2:
        raise BadInputError("the permutation null needs a row sample of at least 2 rows (--null-rows)")
    rows = np.unique(state.entry_sample, axis=0)
    if rows.shape[0] < 2:
        return np.zeros(options.null_repeats), rows.shape[0]
    tops = nulls.permuted_top_values(rows, options.null_repeats, options.seed, center=options.center)
    return tops, rows.shape[0]


# --- the partition of one state ----------------------------------------------------------------------


@dataclass(frozen=True)
class StatePartition:
    """A state's partition with what it was computed from."""

    partition: spectrum.SpectralPartition
    sample: Sample
    rank: int  # components: min(n - 1, d) (n - 1 when centred)
    permuted: tuple | None = None  # (tops, rows) of the permutation null, for the replicates
    vectors: np.ndarray | None = None  # every right singular vector (d, p), when the null needed them


def partition_state(state: GramState, options, label: str = "", *, distinct: int | None = None,
                    permuted: tuple | None = None) -> StatePartition:
    """Spectrum and partition of a state under ``options`` (its null, estimator, rule, energy)."""
    sample = sample_of(state, options.center, distinct)
    rank = min(max(state.n - int(options.center), 0), state.dim)
    values, floor, basis = singular_values(state, options.center, rank, with_vectors=options.null == "ddpa")
    entries = None
    if options.noise_estimator == "iqr" and state.entry_sample is not None:
        entries = state.entry_sample - state.mean if options.center else state.entry_sample
    if options.null == "permutation" and permuted is None and rank >= 2:
        permuted = permuted_tops(state, options)
    try:
        inputs = null_inputs(state, options, sample, permuted, basis) if rank >= 2 else None
        part = spectrum.partition_spectrum(values, sample.effective, state.dim, options.partition_options(), entries,
                                           floor, inputs)
    except ValueError as error:
        raise BadInputError(f"{label}: {error}") from None
    return StatePartition(part, sample, rank, permuted, basis)


def resolved_values(part: spectrum.SpectralPartition) -> np.ndarray:
    """Singular values with those below the numerical floor set to zero (their size is rounding error)."""
    values = part.singular_values.copy()
    values[part.numerical_rank:] = 0.0
    return values


def set_metrics(part: spectrum.SpectralPartition, state: GramState, options) -> dict:
    """The scalar metrics of METHOD.md section 4, on the values above the numerical floor."""
    values = resolved_values(part)
    above = values[:part.numerical_rank]  # the power law is fitted where the values are not rounding error
    alpha, r2 = metrics.power_law_alpha(above, options.alpha_window) if above.size else (math.nan, math.nan)
    window = [options.alpha_window[0], min(options.alpha_window[1], part.numerical_rank)]
    return {
        "effective_rank": metrics.effective_rank(values),
        "effective_rank_on": "centered" if options.center else "uncentered",
        "stable_rank": metrics.stable_rank(values),
        "participation_ratio": metrics.participation_ratio(values),
        "power_law_alpha": alpha,
        "power_law_r2": r2,
        "power_law_window": window if window[0] <= window[1] else None,
        "mean_cosine": metrics.mean_cosine(state.unit_sum, state.n - state.zero_rows),
    }


def summarize(state: GramState, options, *, label: str = "", vectors: int = 0):
    """Spectrum, partition and metrics of accumulated statistics.

    Fewer than 2 rows, or a spectrum of numerical rank 0 or 1, give a degenerate partition (see
    :func:`sdetool.spectral.spectrum.degenerate_partition`) and null metrics where they are undefined.

    Returns
    -------
    result : StatePartition
    metrics : dict
    top_vectors : ndarray of shape (d, k), or None
        ``k = min(vectors, numerical rank)`` (0 for numerical rank 0); None when ``vectors`` is 0.
    """
    check_usable(state, options, label)
    result = partition_state(state, options, label)
    scores = set_metrics(result.partition, state, options)
    k = min(vectors, result.partition.numerical_rank)
    if not vectors:
        top = None
    elif result.vectors is not None:
        top = result.vectors[:, :k].copy()
    else:
        top = top_vectors(state, options.center, k)
    return result, scores, top


# --- intervals (--bootstrap: the delete-a-block jackknife) ---------------------------------------------


def _statistics(part: spectrum.SpectralPartition) -> dict:
    """The statistics that get intervals: band shares and counts, the edge, the effective rank."""
    values = {f"{name}.energy_share": float(part.shares[i]) for i, name in enumerate(spectrum.BANDS)}
    values.update({f"{name}.count": float(np.sum(part.labels == i)) for i, name in enumerate(spectrum.BANDS)})
    values["edge"] = float(part.edge)
    values["effective_rank"] = metrics.effective_rank(resolved_values(part))
    return values


def intervals(state: GramState, full: StatePartition, options, label: str = "") -> dict:
    """Jackknife intervals ``{statistic: Interval}`` of the statistics of :func:`_statistics`.

    Each replicate is the state without one block, partitioned as the whole state was (same null; the
    permutation null reuses the whole state's permuted samples, the repetition of rows is assumed the
    same in every block).
    """
    from sdetool.spectral.jackknife import jackknife_interval

    if not state.blocks:
        return {}
    estimates = _statistics(full.partition)
    replicates = {name: [] for name in estimates}
    for block in state.blocks:
        rest = replace(state.without(block), entry_sample=state.entry_sample)  # the iqr estimator's entries
        distinct = max(round(rest.n / full.sample.repetition), 1)
        part = partition_state(rest, options, label, distinct=distinct, permuted=full.permuted).partition
        for name, value in _statistics(part).items():
            replicates[name].append(value)
    components = full.partition.singular_values.size
    ranges = {name: (0.0, 1.0) if name.endswith("energy_share") else (0.0, float(components)) for name in estimates}
    ranges["edge"] = (0.0, math.inf)
    sizes = [block.n for block in state.blocks]  # hash blocks hold unequal numbers of rows
    return {name: jackknife_interval(estimates[name], replicates[name], options.ci_level, ranges[name], sizes)
            for name in estimates}
