"""The singular spectrum and its strong / weak / noise partition (METHOD.md sections 1-3).

Pure functions: arrays in, arrays or frozen result objects out. Conventions: singular values are
sorted descending; ``n`` is the number of rows *after* the degree of freedom taken by centering
(``n - 1`` when the matrix was centred), ``d`` the number of columns, ``p = min(n, d)``,
``q = max(n, d)``, ``beta = p / q``.

Decompositions go through ``numpy.linalg``, which shares numpy's BLAS with the Gram accumulation:
alternating numpy's and scipy's bundled OpenBLAS builds cost about 0.1 s per switch on 2 cores (their
idle threads spin against each other), more than a 256 x 256 SVD itself.

References
----------
Gavish & Donoho (2014) (median noise estimate, optimal hard threshold); Veraart et al. (2016),
NeuroImage 142 (MP-PCA); Johnstone (2001) (Tracy-Widom edge); Benaych-Georges & Nadakuditi (2012)
(spike SNR); Tukey (1977) (fences).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from sdetool.spectral import nulls, rmt
from sdetool.spectral.noiselevel import (NoNoiseBulkError, noise_sigma_deflated_median, noise_sigma_iqr,
                                         noise_sigma_median, noise_sigma_mppca)
from sdetool.spectral.nulls import NULLS, NullInputs

BANDS = ("strong", "weak", "noise")
NOISE_ESTIMATORS = ("median", "median-gd", "mppca", "iqr")
STRONG_RULES = ("iqr", "gd")
ENERGY_KINDS = ("power", "amplitude")

# --- singular values -----------------------------------------------------------------------------


def singular_values_from_gram(gram: np.ndarray, rank: int | None = None) -> np.ndarray:
    """Singular values of ``X`` from ``G = X^T X``: ``sqrt(max(eigvalsh(G), 0))``, descending.

    Parameters
    ----------
    gram : ndarray, shape (d, d)
        Symmetric positive semi-definite Gram matrix (float64 for accuracy).
    rank : int, optional
        Keep only the first ``rank`` values (``min(n, d)``: the rest are zero in exact arithmetic).
    """
    eigenvalues = np.linalg.eigvalsh(gram)[::-1]
    values = np.sqrt(np.clip(eigenvalues, 0.0, None))
    return values if rank is None else values[:rank].copy()


def singular_values_direct(rows: np.ndarray) -> np.ndarray:
    """Singular values of a matrix held in memory (LAPACK gesdd in float64), descending.

    A C-ordered ``n x d`` array is handed to LAPACK as its transpose, which is Fortran-ordered: no copy into
    Fortran order (measured 1.3x faster than ``scipy.linalg.svdvals(rows)`` at 2000 x 12000).
    """
    from scipy.linalg import svdvals

    rows = np.ascontiguousarray(rows, dtype=np.float64)
    return svdvals(rows.T, check_finite=False)


class RowSpaceBasis:
    """The right singular vectors of a wide ``n x d`` matrix (``n <= d``), computed when sliced: ``basis[:, :k]``.

    ``X X^T = U S^2 U^T`` (one ``n x n`` eigendecomposition, on first use) and ``v_i = X^T u_i / ||X^T u_i||``:
    ``O(n^2 d)`` once and ``O(n d k)`` per slice, never a ``d x d`` matrix. The leading vectors, the ones read
    (subspaces, the ddpa deflation), are accurate to ``eps s_1^2 / gap``; a component at the rounding floor
    gets an arbitrary direction, as it has one. Signs as :func:`top_right_singular_vectors`.
    """

    def __init__(self, rows: np.ndarray) -> None:
        self.rows = rows
        self.shape = (rows.shape[1], rows.shape[0])
        self._left: np.ndarray | None = None
        self._done = np.zeros((rows.shape[1], 0))

    def leading(self, k: int) -> np.ndarray:
        k = int(min(max(k, 0), self.shape[1]))
        if k > self._done.shape[1]:
            if self._left is None:
                _, left = np.linalg.eigh(self.rows @ self.rows.T)
                self._left = left[:, ::-1]
            more = self.rows.T @ self._left[:, self._done.shape[1]:k]
            norms = np.linalg.norm(more, axis=0)
            self._done = np.concatenate([self._done, _fix_signs(more / np.where(norms > 0, norms, 1.0))], axis=1)
        return self._done[:, :k]

    def __getitem__(self, index):
        rows, columns = index
        if rows != slice(None) or not isinstance(columns, slice) or columns.step not in (None, 1):
            raise IndexError("a RowSpaceBasis is sliced by leading columns: basis[:, :k] or basis[:, a:b]")
        start, stop, _ = columns.indices(self.shape[1])
        return self.leading(stop)[:, start:stop]


def _fix_signs(vectors: np.ndarray) -> np.ndarray:
    """Make the largest-magnitude entry of each column positive (deterministic output)."""
    pivots = np.argmax(np.abs(vectors), axis=0)
    signs = np.sign(vectors[pivots, np.arange(vectors.shape[1])])
    signs[signs == 0] = 1.0
    return vectors * signs


def top_right_singular_vectors(gram: np.ndarray, k: int) -> np.ndarray:
    """The ``k`` leading right singular vectors of ``X`` from ``G = X^T X``, shape (d, k).

    Signs are fixed so that each vector's largest-magnitude entry is positive.
    """
    d = gram.shape[0]
    k = int(min(max(k, 1), d))
    _, vectors = np.linalg.eigh(gram)  # all of them: LAPACK's subset driver was slower here at every k tried
    return _fix_signs(vectors[:, ::-1][:, :k].copy())


def singular_decomposition(gram: np.ndarray | None = None, rows: np.ndarray | None = None
                           ) -> tuple[np.ndarray, np.ndarray]:
    """Every singular value (descending) and right singular vector of ``X``, from its Gram or its rows.

    One ``eigh`` of ``G = X^T X`` (or one SVD of the rows) instead of separate calls for the values and
    each batch of vectors. Returns values of shape (p,) and vectors of shape (d, p), signs fixed as in
    :func:`top_right_singular_vectors` (for wide rows, ``n <= d``, a :class:`RowSpaceBasis`: sliced by columns,
    ``basis[:, :k]``, it gives the same vectors).
    """
    if rows is not None:
        rows = np.asarray(rows, dtype=np.float64)
        if rows.shape[0] <= rows.shape[1]:  # wide: exact values by LAPACK, vectors through the row Gram
            return singular_values_direct(rows), RowSpaceBasis(rows)
        _, values, vt = np.linalg.svd(rows, full_matrices=False)
        return values, _fix_signs(vt.T.copy())
    eigenvalues, vectors = np.linalg.eigh(gram)
    return np.sqrt(np.clip(eigenvalues[::-1], 0.0, None)), _fix_signs(vectors[:, ::-1])


def top_right_singular_vectors_direct(rows: np.ndarray, k: int) -> np.ndarray:
    """As :func:`top_right_singular_vectors`, from the rows of a matrix held in memory."""
    rows = np.asarray(rows, dtype=np.float64)
    if rows.shape[0] <= rows.shape[1]:
        return RowSpaceBasis(rows).leading(k).copy()
    _, _, vt = np.linalg.svd(rows, full_matrices=False)
    return _fix_signs(vt[: min(k, vt.shape[0])].T.copy())


# --- thresholds and partition --------------------------------------------------------------------


def strong_threshold_iqr(singular_values: np.ndarray, k: float = 1.5) -> float:
    """Tukey's upper fence over the singular values: ``Q3 + k IQR``."""
    q1, q3 = np.percentile(np.asarray(singular_values, dtype=np.float64), [25.0, 75.0])
    return float(q3 + k * (q3 - q1))


def strong_threshold_gd(sigma: float, n: int, d: int) -> float:
    """Gavish-Donoho optimal hard threshold for known noise: ``lambda*(beta) sqrt(q) sigma``."""
    q = max(n, d)
    return rmt.gavish_donoho_lambda(min(n, d) / q) * math.sqrt(q) * sigma


def partition(singular_values: np.ndarray, edge: float, threshold: float) -> np.ndarray:
    """Band index per component: 0 strong (``s > max(threshold, edge)``), 1 weak, 2 noise (``s <= edge``)."""
    values = np.asarray(singular_values, dtype=np.float64)
    labels = np.full(values.shape, 1, dtype=np.int8)
    labels[values <= edge] = 2
    labels[values > max(threshold, edge)] = 0
    return labels


def energy_shares(singular_values: np.ndarray, labels: np.ndarray, energy: str = "power") -> np.ndarray:
    """Share of the total energy in each band, shape (3,) ordered as :data:`BANDS`.

    ``power`` weighs a component by ``s_i^2`` (its variance), ``amplitude`` by ``s_i``.
    """
    weights = component_weights(singular_values, energy)
    total = weights.sum()
    if not np.isfinite(total):  # a diverged batch: no shares to give
        return np.full(len(BANDS), np.nan)
    if total <= 0:
        return np.zeros(len(BANDS))
    return np.array([weights[labels == band].sum() / total for band in range(len(BANDS))])


def component_weights(singular_values: np.ndarray, energy: str = "power") -> np.ndarray:
    """Per-component energy: ``s_i^2`` (``power``) or ``s_i`` (``amplitude``)."""
    values = np.asarray(singular_values, dtype=np.float64)
    if energy == "power":
        return values * values
    if energy == "amplitude":
        return values.copy()
    raise ValueError(f"energy must be one of {ENERGY_KINDS}, got {energy!r}")


def component_snr(singular_values: np.ndarray, sigma: float, n: int, d: int) -> np.ndarray:
    """Signal strength behind each singular value, in units of ``sigma sqrt(q)`` (BBP inversion).

    NaN for values inside the bulk (no signal interpretation) or when ``sigma`` is zero.
    """
    values = np.asarray(singular_values, dtype=np.float64)
    q = max(n, d)
    if sigma <= 0:
        return np.full(values.shape, np.nan)
    return rmt.spike_strength(values / (sigma * math.sqrt(q)), min(n, d) / q)


# --- the whole partition -------------------------------------------------------------------------


@dataclass(frozen=True)
class PartitionOptions:
    """Choices of METHOD.md sections 2-3; every one is recorded in the output.

    Attributes
    ----------
    null : {"ddpa", "dpa", "mp", "permutation"}
        What pure noise looks like, and so where the noise band ends (:mod:`sdetool.spectral.nulls`): ``mp`` one
        noise level for every entry (the paper's reading); ``dpa`` independent columns of the matrix's
        own variances (generalized Marchenko-Pastur); ``ddpa`` the same with deflation (the default:
        see docs/method.md for the evidence); ``permutation`` column-permuted row samples.
    noise_estimator : {"median", "median-gd", "mppca", "iqr"}
        ``median``: deflated median (:func:`noise_sigma_deflated_median`); ``median-gd``: the plain
        Gavish-Donoho median; ``mppca``: Veraart et al.; ``iqr``: IQR of the entries.
    edge_level : float
        Probability that pure noise crosses the noise edge (Tracy-Widom margin); 0 for the bare MP edge.
    strong_rule : {"iqr", "gd"}
    iqr_k : float
        Tukey fence multiplier of the ``iqr`` strong rule.
    energy : {"power", "amplitude"}
    """

    noise_estimator: str = "median"
    edge_level: float = 0.01
    strong_rule: str = "iqr"
    iqr_k: float = 1.5
    energy: str = "power"
    null: str = "ddpa"

    def __post_init__(self) -> None:
        _one_of("null", self.null, NULLS)
        _one_of("noise_estimator", self.noise_estimator, NOISE_ESTIMATORS)
        _one_of("strong_rule", self.strong_rule, STRONG_RULES)
        _one_of("energy", self.energy, ENERGY_KINDS)
        if not (0.0 <= self.edge_level <= 0.5):
            raise ValueError(f"edge_level must be in [0, 0.5], got {self.edge_level!r}")
        if not (self.iqr_k >= 0 and math.isfinite(self.iqr_k)):
            raise ValueError(f"iqr_k must be a finite number >= 0, got {self.iqr_k!r}")


def _one_of(name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}; got {value!r}")


@dataclass(frozen=True)
class SpectralPartition:
    """The MP/IQR partition of one spectrum. Arrays have one entry per component (length ``p``).

    ``numerical_rank`` counts the values above the numerical floor; the noise level and edge were
    estimated on those alone (``n x numerical_rank``) when it is below ``p``.

    ``sigma`` is the single noise level of the estimator and ``mp_edge`` its bare Marchenko-Pastur edge
    (``mp_ks``: the Kolmogorov-Smirnov distance of the bulk from that law); ``edge`` is the edge of
    ``options.null`` in use. ``repetition`` is ``n / distinct rows`` when rows repeat (``n`` is then the
    distinct rows' effective count and every edge is in the units of the matrix given).

    A *degenerate* spectrum (numerical rank 0 or 1, no components at all, or no noise bulk for
    ``mppca``) has no noise level to measure: ``sigma``, ``edge``, ``mp_edge`` and ``threshold`` are
    NaN, every component is in the noise band (nothing was shown to stand above noise), and ``note``
    says why (:attr:`partitioned` is False). ``note`` is None for a partitioned spectrum.
    """

    singular_values: np.ndarray
    n: int
    d: int
    sigma: float
    edge: float
    mp_edge: float
    threshold: float
    labels: np.ndarray
    shares: np.ndarray
    snr: np.ndarray
    options: PartitionOptions
    signal_rank: int | None = None
    numerical_rank: int | None = None
    note: str | None = None
    mp_ks: float = float("nan")
    repetition: float = 1.0
    mp_ks_limit: float = nulls.KS_FIT_LIMIT

    @property
    def partitioned(self) -> bool:
        """Whether a noise level, edge and threshold were estimated (False for a degenerate spectrum)."""
        return math.isfinite(self.edge)

    @property
    def counts(self) -> dict[str, int]:
        return {name: int((self.labels == i).sum()) for i, name in enumerate(BANDS)}

    @property
    def component_shares(self) -> np.ndarray:
        """Each component's share of the total energy (``power`` or ``amplitude``, as the options say).

        NaN for every component of a spectrum without energy (numerical rank 0): 0 / 0.
        """
        weights = component_weights(self.singular_values, self.options.energy)
        if self.numerical_rank == 0:
            return np.full(weights.shape, np.nan)
        total = weights.sum()
        return weights / total if total > 0 else weights

    def band_names(self) -> list[str]:
        return [BANDS[i] for i in self.labels]


def partition_spectrum(
    singular_values: np.ndarray,
    n: int,
    d: int,
    options: PartitionOptions = PartitionOptions(),
    entries: np.ndarray | None = None,
    floor: float = 0.0,
    inputs: NullInputs | None = None,
) -> SpectralPartition:
    """Estimate the noise level, the noise edge and the strong threshold, and split the spectrum.

    Parameters
    ----------
    singular_values : ndarray, shape (p,)
        Descending singular values of the (centred) ``n x d`` matrix.
    n, d : int
        Effective rows (``n - 1`` if centred) and columns.
    options : PartitionOptions
    entries : ndarray, optional
        A sample of (centred) matrix entries; required by the ``iqr`` noise estimator.
    floor : float
        Values at or below it are numerically zero (below the precision of the computation). When
        there are such values the matrix is rank-deficient at working precision: its ``m`` nonzero
        values are partitioned as an ``n x m`` matrix (the noise lives in its column space) and the
        zero ones go to the noise band.
    inputs : NullInputs, optional
        What the ``dpa``, ``ddpa`` and ``permutation`` nulls need (column variances, vectors, permuted
        samples), and the rows' repetition (``n`` is then the distinct rows' effective count).

    Returns
    -------
    SpectralPartition
        Degenerate (see :class:`SpectralPartition`: NaN noise level, edge and threshold, every
        component noise, a ``note``) when fewer than two values lie above ``floor`` (``p`` may be 0:
        one centred row has no components) or when ``mppca`` finds no noise bulk.
    """
    values = np.asarray(singular_values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"singular_values must be a 1-D array, got shape {values.shape}")
    if n < 0 or d < 1:
        raise ValueError(f"need n >= 0 and d >= 1, got n={n}, d={d}")
    rank = int(np.sum(values > floor))
    if rank < 2:
        return degenerate_partition(values, n, d, options, rank, _rank_note(rank, values.size))
    inputs = inputs or NullInputs()
    columns = d if rank >= min(n, d) else rank  # rank-deficient: the noise lives in the column space
    try:
        part = _partition_full_rank(values[:rank], n, (columns, d), options, entries, inputs)
    except NoNoiseBulkError as error:
        return degenerate_partition(values, n, d, options, rank, f"{error}, {_NO_ESTIMATE}")
    if rank == values.size:
        return part
    extra = values.size - rank
    labels = np.concatenate([part.labels, np.full(extra, 2, dtype=np.int8)])
    return dataclasses.replace(
        part,
        singular_values=values,
        d=d,
        labels=labels,
        shares=energy_shares(values, labels, options.energy),
        snr=np.concatenate([part.snr, np.full(extra, np.nan)]),
        numerical_rank=rank,
    )


def _partition_full_rank(values, n, dims, options, entries, inputs: NullInputs) -> SpectralPartition:
    """The partition of ``values`` (all above the floor). ``dims``: (columns of the noise model, the matrix's d).

    With repeated rows the values are those of the distinct rows scaled by ``sqrt(repetition)``: the
    partition runs on the distinct rows' spectrum and its edges are scaled back.
    """
    scale = math.sqrt(inputs.repetition)
    part = _partition_unscaled(values / scale, n, dims, options, entries, inputs)
    if scale == 1.0:
        return part
    return dataclasses.replace(part, singular_values=values, edge=part.edge * scale, mp_edge=part.mp_edge * scale,
                               threshold=part.threshold * scale, repetition=inputs.repetition)


def _noise_sigma(values, n, d, options, entries) -> tuple[float, int | None]:
    """The estimator's single noise level, and the signal rank it found (None when it finds none)."""
    signal_rank = None
    if options.noise_estimator == "median":
        sigma, signal_rank = noise_sigma_deflated_median(values, n, d, options.edge_level)
    elif options.noise_estimator == "median-gd":
        sigma = noise_sigma_median(values, n, d)
    elif options.noise_estimator == "mppca":
        sigma, signal_rank = noise_sigma_mppca(values, n, d)
    else:
        if entries is None:
            raise ValueError("the iqr noise estimator needs a sample of matrix entries")
        sigma = noise_sigma_iqr(entries)
    return sigma, signal_rank


def _partition_unscaled(values, n, dims, options, entries, inputs: NullInputs) -> SpectralPartition:
    d, full_d = dims
    sigma, signal_rank = _noise_sigma(values, n, d, options, entries)
    level = options.edge_level
    mp_edge = rmt.noise_edge(sigma, max(n, 2), d, level)
    if options.null == "mp":
        edge, unit = mp_edge, sigma
    else:
        found = nulls.null_edge(options.null, sigma, values, n, full_d, level, inputs)
        edge, signal_rank = found.edge, found.found
        unit = nulls.equivalent_sigma(edge, n, full_d, level)  # the SNRs and the gd rule read the edge in use
    if options.strong_rule == "iqr":
        threshold = strong_threshold_iqr(values, options.iqr_k)
    else:
        threshold = strong_threshold_gd(unit, n, d)
    labels = partition(values, edge, threshold)
    snr = component_snr(values, unit, n, d)
    snr[labels == 2] = np.nan
    return SpectralPartition(
        singular_values=values,
        n=n,
        d=d,
        sigma=float(sigma),
        edge=float(edge),
        mp_edge=float(sigma * (math.sqrt(n) + math.sqrt(d))),
        threshold=float(threshold),
        labels=labels,
        shares=energy_shares(values, labels, options.energy),
        snr=snr,
        options=options,
        signal_rank=signal_rank,
        numerical_rank=values.size,
        mp_ks=nulls.bulk_ks_distance(values[values <= mp_edge], sigma, n, d),
        mp_ks_limit=nulls.ks_fit_limit(int(np.sum(values <= mp_edge))),
    )


_NO_ESTIMATE = (
    "so the noise level, the noise edge and the strong threshold are null and every component is in the noise "
    "band (none can be shown to stand above noise)"
)
_NO_ENERGY = "; the energy shares are null (no energy to share)"


def _rank_note(rank: int, components: int) -> str:
    """Why a spectrum of numerical rank 0 or 1 (or without components) is not partitioned."""
    if components == 0:
        return f"no singular components (p = 0): there is no spectrum to partition, {_NO_ESTIMATE}{_NO_ENERGY}"
    if rank == 0:
        return (f"numerical rank 0: every singular value is zero at working precision: there is no spectrum to "
                f"partition, {_NO_ESTIMATE}{_NO_ENERGY}")
    return f"numerical rank 1: one nonzero singular value cannot be set against a noise bulk, {_NO_ESTIMATE}"


def degenerate_partition(
    singular_values: np.ndarray, n: int, d: int, options: PartitionOptions, rank: int, note: str
) -> SpectralPartition:
    """The partition of a spectrum without a measurable noise level: every component noise.

    Noise is the null hypothesis of section 3: a component is signal only when it stands above the
    noise edge, and without a noise level there is no edge to stand above. ``sigma``, the edges, the
    threshold and the SNRs are NaN; the energy shares are NaN when the spectrum has no energy (0 / 0),
    else all of it is in the noise band.

    Parameters
    ----------
    singular_values : ndarray, shape (p,)
        Descending; ``p`` may be 0.
    n, d : int
        Effective rows and columns, as for :func:`partition_spectrum`.
    options : PartitionOptions
    rank : int
        The numerical rank (values above the floor).
    note : str
        Why no partition could be made (recorded as ``note``).
    """
    values = np.asarray(singular_values, dtype=np.float64)
    labels = np.full(values.shape, 2, dtype=np.int8)
    shares = energy_shares(values, labels, options.energy) if rank > 0 else np.full(len(BANDS), np.nan)
    nan = float("nan")
    return SpectralPartition(
        singular_values=values, n=n, d=d, sigma=nan, edge=nan, mp_edge=nan, threshold=nan, labels=labels,
        shares=shares, snr=np.full(values.shape, np.nan), options=options, signal_rank=None,
        numerical_rank=rank, note=note,
    )
