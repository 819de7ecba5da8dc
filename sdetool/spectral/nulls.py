"""Noise nulls: where the noise bulk of a singular spectrum ends (METHOD.md sections 3 and 3b).

Four nulls, each a rule for the *noise edge* (the largest singular value pure noise reaches):

- ``mp``: one noise level ``sigma`` for every entry (Marchenko-Pastur with a Tracy-Widom margin;
  :func:`sdetool.spectral.rmt.noise_edge`), the paper's literal reading;
- ``dpa``: the generalized Marchenko-Pastur edge of noise whose columns have the matrix's own column
  variances ``t_j`` (deterministic parallel analysis, Dobriban & Owen 2019), with the same relative
  Tracy-Widom margin;
- ``ddpa``: ``dpa`` with deflation: each component found is removed from the column variances before
  the edge is computed again, so that strong components do not hide weaker ones (their DDPA);
- ``permutation``: Horn's parallel analysis (Buja & Eyuboglu 1992): the columns of a row sample are
  permuted independently, which keeps each column's distribution and destroys every correlation.

Pure numpy and scipy: arrays in, numbers out.

Conventions: ``n`` is the number of effective rows (``n - 1`` after centring), ``d`` the number of
columns, and the column variances are ``t_j = (X^T X)_jj / n`` of the centred matrix, so that the
eigenvalues of ``X^T X / n`` are the ones the generalized law describes.

References
----------
Silverstein & Bai (1995), J. Multivariate Anal. 54; Bai & Silverstein (1998), Ann. Probab. 26 (the upper
edge as the minimum of the inverse Stieltjes transform); Dobriban & Owen (2019), JRSS-B 81(1) 163-183;
Horn (1965), Psychometrika 30; Buja & Eyuboglu (1992), Multivariate Behav. Res. 27; Johnstone (2001).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from sdetool.spectral import rmt

NULLS = ("mp", "dpa", "ddpa", "permutation")
KS_FIT_LIMIT = 0.1  # a bulk farther than this (Kolmogorov-Smirnov) from the fitted single-sigma law does not fit it


def ks_fit_limit(bulk_size: int) -> float:
    """The KS distance above which a bulk of ``bulk_size`` values does not fit one MP law.

    :data:`KS_FIT_LIMIT`, or the 1 % critical value of an iid sample, ``1.63 / sqrt(m)``, when that is
    larger: a small bulk fluctuates more (pure noise of 31 x 16 has a median distance of 0.10).
    """
    return max(KS_FIT_LIMIT, 1.63 / math.sqrt(max(bulk_size, 1)))


# --- the generalized Marchenko-Pastur edge -------------------------------------------------------


def generalized_mp_edge(variances, n: int) -> float:
    """Upper edge of the eigenvalue bulk of ``X^T X / n`` for noise with independent columns of variances ``t_j``.

    The edge is ``b = min over m in (-1 / max t, 0) of z(m) = -1/m + (1/n) sum_j t_j / (1 + t_j m)``
    (the inverse of the Stieltjes transform of the limit law, Silverstein & Bai 1995); ``z`` is convex
    there, so the minimum is the root of ``z'(m) = 1/m^2 - (1/n) sum_j t_j^2 / (1 + t_j m)^2``. For
    equal variances ``t`` it is ``t (1 + sqrt(d / n))^2``, the Marchenko-Pastur edge.

    Parameters
    ----------
    variances : array_like, shape (d,)
        Column variances ``t_j >= 0`` (zero columns add nothing).
    n : int
        Effective number of rows.

    Returns
    -------
    float
        The edge in eigenvalue units of ``X^T X / n``; 0 when every variance is 0.
    """
    t = np.asarray(variances, dtype=np.float64)
    if t.ndim != 1 or n < 1:
        raise ValueError(f"need a 1-D array of variances and n >= 1, got shape {t.shape} and n={n}")
    t = t[t > 0]
    if t.size == 0:
        return 0.0
    scale = float(t.max())
    r = t / scale  # in units of the largest variance; m = -x / scale with x in (0, 1)
    x = _edge_root(r, n)
    value = 1.0 / x + float(np.sum(r / (1.0 - r * x))) / n  # z(m) in units of the largest variance
    return scale * value


def _edge_root(r: np.ndarray, n: int) -> float:
    """The root in (0, 1) of ``x^2 sum_j (r_j / (1 - r_j x))^2 = n`` (``z'(m) = 0``; ``max r = 1``).

    Newton's method on ``h(x) = log(x^2 S(x) / n)``, ``S(x) = sum_j (r_j / (1 - r_j x))^2``: ``h`` rises
    from ``-inf`` at 0 to ``+inf`` at the pole 1 and is nearly linear in the log, so a few steps reach
    the root; a bracket kept by the signs of ``h`` catches a step that leaves it (bisection). The edge
    is the minimum of ``z`` there, so its error is second order in the root's: 1e-10 relative is ample.
    """
    tiny = 1e-15
    low, high = tiny, 1.0 - tiny

    def h_and_slope(x: float) -> tuple[float, float]:
        ratio = r / (1.0 - r * x)
        square = float(ratio @ ratio)
        cube = float(ratio @ (ratio * ratio))
        return 2.0 * math.log(x) + math.log(square) - math.log(n), 2.0 / x + 2.0 * cube / square

    if h_and_slope(high)[0] <= 0:  # only reached for a huge n: the root hugs the pole
        return high
    x = 1.0 - 1.0 / (1.0 + math.sqrt(len(r) / n))  # the root for equal variances: a close start
    for _ in range(200):
        value, slope = h_and_slope(x)
        if value < 0:
            low = x
        else:
            high = x
        step = x - value / slope
        if not low < step < high:
            step = 0.5 * (low + high)
        if abs(step - x) <= 1e-10 * x or high - low <= 1e-15:
            return step
        x = step
    return x


def edge_margin(n: int, d: int, level: float) -> float:
    """The relative Tracy-Widom margin of the edge: ``noise_edge(1, n, d, level) / (sqrt(n) + sqrt(d))``.

    For one noise level this is exactly the ratio of the ``mp`` null's edge to the bare
    Marchenko-Pastur edge; the ``dpa`` family applies the same ratio to the generalized edge.
    """
    return rmt.noise_edge(1.0, max(n, 2), d, level) / (math.sqrt(n) + math.sqrt(d))


def dpa_edge(variances, n: int, d: int, level: float = 0.01) -> float:
    """Singular-value noise edge of the ``dpa`` null: ``sqrt(n b) * edge_margin(n, d, level)``.

    ``b`` is :func:`generalized_mp_edge` of the column variances; for equal variances ``sigma^2`` this
    equals :func:`sdetool.spectral.rmt.noise_edge` with that ``sigma``.
    """
    return math.sqrt(n * generalized_mp_edge(variances, n)) * edge_margin(n, d, level)


# --- deflation (DDPA) ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Deflation:
    """The outcome of :func:`deflated_edge`.

    Attributes
    ----------
    edge : float
        The singular-value edge after the last deflation (the one in use).
    found : int
        Components above their edge, removed one by one from the column variances.
    edges : tuple of float
        The edge at every step (``found + 1`` values; the first is the ``dpa`` edge).
    """

    edge: float
    found: int
    edges: tuple


def deflated_edge(singular_values, variances, n: int, d: int, vectors: Callable[[int], np.ndarray],
                  level: float = 0.01, max_found: int | None = None) -> Deflation:
    """The ``ddpa`` edge: deflate components above the ``dpa`` edge one at a time until none is.

    A component above the edge is removed from the column variances, and the edge is computed again
    from what is left. What is removed is the component's *signal* energy, not its observed ``s_i^2``
    (in the spirit of Dobriban & Owen's DDPA+): an observed singular value carries noise energy too,
    about a whole bulk edge's worth for a component near the edge, and removing it would lower the edge
    by more than the gap to the next noise value, so that deflation walks into the bulk (measured on 32
    planted spikes near the detection threshold: 383 of 384 components "found"). The signal energy is
    the BBP inversion (:func:`sdetool.spectral.rmt.spike_strength`) in units of the noise level left once the
    component is gone (:func:`signal_energy`): after ``k`` components the variances are
    ``t_j - sum_{i<=k} x_i^2 q sigma_i^2 v_ij^2 / n``.

    Parameters
    ----------
    singular_values : ndarray, shape (p,)
        Descending singular values of the centred matrix.
    variances : ndarray, shape (d,)
        Its column variances ``t_j``.
    n, d : int
    vectors : callable
        ``vectors(k)`` gives the ``k`` leading right singular vectors, shape (d, k).
    level : float
    max_found : int, optional
        At most this many components are deflated (default ``p - 1``).
    """
    values = np.asarray(singular_values, dtype=np.float64)
    residual = np.asarray(variances, dtype=np.float64).copy()
    limit = values.size - 1 if max_found is None else min(max_found, values.size - 1)
    edges = [dpa_edge(residual, n, d, level)]
    found, basis = 0, None
    while found < limit and values[found] > edges[-1]:
        if basis is None or basis.shape[1] <= found:
            basis = vectors(min(values.size, max(2 * found + 2, 8)))
        weights = basis[:, found] ** 2 / n
        residual -= signal_energy(values[found], residual, weights, (n, d), level) * weights
        np.clip(residual, 0.0, None, out=residual)
        found += 1
        edges.append(dpa_edge(residual, n, d, level))
    return Deflation(edge=float(edges[-1]), found=found, edges=tuple(float(e) for e in edges))


def signal_energy(value: float, variances: np.ndarray, weights: np.ndarray, shape: tuple, level: float) -> float:
    """The signal part ``x^2 q sigma^2`` of an observed singular value (BBP inversion).

    ``sigma`` is the noise level whose single-sigma edge is the ``dpa`` edge of the variances without the
    whole component (``variances - value^2 weights``, ``weights = v_j^2 / n``): with the component's
    own energy still in the variances, a strong component would inflate the noise level it is measured
    against. 0 when the value lies inside that noise level's bulk.
    """
    n, d = shape
    without = np.clip(variances - value * value * weights, 0.0, None)
    sigma = equivalent_sigma(dpa_edge(without, n, d, level), n, d, level)
    q = max(n, d)
    if not sigma > 0:
        return float(value) ** 2
    strength = float(rmt.spike_strength(value / (sigma * math.sqrt(q)), min(n, d) / q))
    return strength * strength * q * sigma * sigma if math.isfinite(strength) else 0.0


# --- permutation (Horn's parallel analysis) ----------------------------------------------------------


def permuted_top_values(rows, repeats: int, seed: int = 0, center: bool = True) -> np.ndarray:
    """Top singular value of the row sample after permuting each column independently, per repeat.

    Parameters
    ----------
    rows : ndarray, shape (m, d)
        A uniform sample of rows.
    repeats : int
        ``R`` independent permutations.
    seed : int
    center : bool
        Centre the sample first (as the analysis does).

    Returns
    -------
    ndarray, shape (R,)
    """
    sample = np.asarray(rows, dtype=np.float64)
    if sample.ndim != 2 or sample.shape[0] < 2:
        raise ValueError(f"need a (m >= 2, d) row sample, got shape {sample.shape}")
    if center:
        sample = sample - sample.mean(axis=0)
    generator = np.random.default_rng(seed)
    tops = np.empty(repeats)
    for repeat in range(repeats):
        permuted = generator.permuted(sample, axis=0)  # an independent permutation of each column
        tops[repeat] = _top_singular_value(permuted)
    return tops


def _top_singular_value(matrix: np.ndarray) -> float:
    small = matrix @ matrix.T if matrix.shape[0] < matrix.shape[1] else matrix.T @ matrix
    top = np.linalg.eigvalsh(small)[-1]
    return float(math.sqrt(max(top, 0.0)))


def permutation_edge(top_values, sample_rows: int, n: int, variances, level: float = 0.01) -> float:
    """The ``permutation`` null's singular-value edge for ``n`` rows, from a sample of ``sample_rows`` rows.

    The permuted top values measure where the top of pure noise with these columns lies at the sample's
    size ``m - 1`` (centred): their mean top eigenvalue, raised by 1.645 standard errors (a one-sided
    95 % upper bound, so that a few permutations do not lower the edge by chance), is set against the
    mean the generalized law predicts there, ``b(m - 1) mean_top_margin(m - 1, d)^2``. That ratio
    corrects the ``dpa`` edge for what the law does not model (finite size, the entries' distribution).
    From a sample smaller than the matrix the correction is carried to ``n`` rows as a finite-size
    effect: its logarithm shrinks with the relative Tracy-Widom scale (:func:`tracy_widom_scale`).

    Not the empirical ``1 - level`` quantile of the ``R`` values: a real top value exceeds the largest
    of ``R`` exchangeable ones with probability ``1 / (R + 1)`` (9 % for the default 10), and carrying a
    sample's quantile to ``n`` rows by ``b(n) / b(m)`` kept the sample's fluctuation; measured 5-15 % of
    pure-noise draws flagged with the whole matrix as the sample and up to 45 % (20,000 x 64,
    heteroscedastic, a 2,000-row sample).

    Parameters
    ----------
    top_values : array_like, shape (R,)
        Top singular values of the permuted samples (:func:`permuted_top_values`).
    sample_rows : int
        Rows of each permuted sample (before centring).
    n : int
        Effective rows of the matrix.
    variances : array_like, shape (d,)
        Column variances ``t_j`` of the matrix (``d`` is their count).
    level : float
    """
    tops = np.asarray(top_values, dtype=np.float64)
    t = np.asarray(variances, dtype=np.float64)
    d, sample_n = t.size, max(sample_rows - 1, 1)
    eigen = tops * tops / sample_n
    measured = float(np.mean(eigen))
    if eigen.size > 1:
        error = float(np.std(eigen, ddof=1)) / math.sqrt(eigen.size)
    else:  # one permutation: the Tracy-Widom spread of one top value
        error = measured * TW1_SD * tracy_widom_scale(sample_n, d)
    predicted = generalized_mp_edge(t, sample_n) * mean_top_margin(sample_n, d) ** 2
    correction = (measured + _UPPER_Z * error) / predicted if measured > 0 and predicted > 0 else 1.0
    carried = 1.0 if sample_n == n else tracy_widom_scale(n, d) / tracy_widom_scale(sample_n, d)
    return correction ** (carried / 2) * math.sqrt(n * generalized_mp_edge(t, n)) * edge_margin(n, d, level)


TW1_MEAN = -1.2065335745820  # mean and standard deviation of the Tracy-Widom law of order 1
TW1_SD = 1.2680340580
_UPPER_Z = 1.6448536269514722  # one-sided 95 % normal quantile


def _johnstone(n: int, d: int) -> tuple[float, float]:
    """Johnstone's (2001) centring ``mu`` and scale ``s`` of the top eigenvalue of ``n x d`` unit white noise."""
    root_n, root_d = math.sqrt(max(n - 1, 1)), math.sqrt(d)
    return (root_n + root_d) ** 2, (root_n + root_d) * (1.0 / root_n + 1.0 / root_d) ** (1.0 / 3.0)


def tracy_widom_scale(n: int, d: int) -> float:
    """The Tracy-Widom scale of the top eigenvalue relative to its centring, ``s / mu`` (falls with n)."""
    centre, spread = _johnstone(n, d)
    return spread / centre


def mean_top_margin(n: int, d: int) -> float:
    """The expected top singular value of ``n x d`` unit white noise relative to ``sqrt(n) + sqrt(d)``.

    ``sqrt(mu + s E[TW1]) / (sqrt(n) + sqrt(d))`` with Johnstone's ``mu`` and ``s``: the
    :func:`edge_margin` of the Tracy-Widom mean instead of a quantile.
    """
    centre, spread = _johnstone(n, d)
    return math.sqrt(max(centre + spread * TW1_MEAN, 0.0)) / (math.sqrt(n) + math.sqrt(d))


# --- the edge of a null -------------------------------------------------------------------------------


@dataclass(frozen=True)
class NullInputs:
    """What the nulls beyond ``mp`` need to know about the matrix besides its singular values.

    Attributes
    ----------
    variances : ndarray, shape (d,), optional
        Column variances ``t_j`` of the centred matrix, per effective row (``dpa``, ``ddpa``, and
        ``permutation`` when its sample is smaller than the matrix).
    vectors : callable, optional
        ``vectors(k)``: the ``k`` leading right singular vectors, shape (d, k) (``ddpa``).
    permuted_tops : ndarray, shape (R,), optional
        Top singular values of ``R`` column-permuted row samples (``permutation``).
    permuted_rows : int
        Rows of each permuted sample (before centring).
    repetition : float
        ``n / distinct rows`` when rows repeat: the spectrum is that of the distinct rows scaled by
        ``sqrt(repetition)``, and the null is the one of the distinct rows (``n`` passed to the
        partition is then their effective count).
    """

    variances: np.ndarray | None = None
    vectors: Callable[[int], np.ndarray] | None = None
    permuted_tops: np.ndarray | None = None
    permuted_rows: int = 0
    repetition: float = 1.0


@dataclass(frozen=True)
class NullEdge:
    """The noise edge a null puts on a spectrum, and how many components it found above it."""

    edge: float
    found: int | None = None  # None for mp: its signal rank comes from the noise estimator


_NEEDS = {"dpa": ("variances",), "ddpa": ("variances", "vectors"), "permutation": ("permuted_tops", "variances")}


def null_edge(null: str, sigma: float, singular_values, n: int, d: int, level: float,
              inputs: NullInputs | None = None) -> NullEdge:
    """The singular-value noise edge of ``null`` (one of :data:`NULLS`) for an ``n x d`` spectrum.

    ``mp`` needs only ``sigma``; the others read what they need from ``inputs`` (a ValueError names
    what is missing).
    """
    if null not in NULLS:
        raise ValueError(f"null must be one of {', '.join(NULLS)}; got {null!r}")
    if null == "mp":
        return NullEdge(rmt.noise_edge(sigma, max(n, 2), d, level))
    inputs = inputs or NullInputs()
    missing = [name for name in _NEEDS[null] if getattr(inputs, name) is None]
    if missing:
        raise ValueError(f"the {null} null needs {' and '.join(missing)}")
    values = np.asarray(singular_values, dtype=np.float64)
    if null == "ddpa":
        deflation = deflated_edge(values, inputs.variances, n, d, inputs.vectors, level)
        return NullEdge(deflation.edge, deflation.found)
    if null == "dpa":
        edge = dpa_edge(inputs.variances, n, d, level)
    else:
        edge = permutation_edge(inputs.permuted_tops, inputs.permuted_rows, n, inputs.variances, level)
    return NullEdge(edge, int(np.sum(values > edge)))


def equivalent_sigma(edge: float, n: int, d: int, level: float) -> float:
    """The one noise level whose ``mp`` edge is ``edge``: what the SNRs and the ``gd`` rule use under other nulls."""
    return edge / (edge_margin(n, d, level) * (math.sqrt(n) + math.sqrt(d)))


# --- goodness of fit of the single-sigma law --------------------------------------------------------


@lru_cache(maxsize=64)
def _mp_cdf_table(beta: float) -> tuple[np.ndarray, np.ndarray]:
    """``(theta, F)`` on a grid: the unit-variance MP CDF at ``x = a + (b - a) sin^2(theta)``."""
    lower, upper = rmt.marchenko_pastur_support(beta)
    theta = np.linspace(0.0, math.pi / 2, 4097)
    width, sine2 = upper - lower, np.sin(theta) ** 2
    # f(x) dx with the substitution: smooth in theta, no endpoint singularity; sin^2 / x -> 1 / width
    # at theta = 0 when the support starts at 0 (beta = 1)
    x = lower + width * sine2
    ratio = np.divide(sine2, x, out=np.full_like(x, 1.0 / width), where=x > 0)
    integrand = width * width * 2 * ratio * np.cos(theta) ** 2 / (2 * math.pi * beta)
    steps = 0.5 * (integrand[1:] + integrand[:-1]) * np.diff(theta)
    cdf = np.concatenate([[0.0], np.cumsum(steps)])
    return theta, cdf / cdf[-1]


def marchenko_pastur_cdf(x, beta: float) -> np.ndarray:
    """CDF of the unit-variance Marchenko-Pastur law with ratio ``beta`` in (0, 1] (accurate to about 1e-7)."""
    theta_grid, cdf = _mp_cdf_table(round(float(beta), 12))
    lower, upper = rmt.marchenko_pastur_support(beta)
    points = np.clip((np.asarray(x, dtype=np.float64) - lower) / (upper - lower), 0.0, 1.0)
    return np.interp(np.arcsin(np.sqrt(points)), theta_grid, cdf)


def bulk_ks_distance(bulk_values, sigma: float, n: int, d: int) -> float:
    """Kolmogorov-Smirnov distance of a noise bulk from the single-sigma Marchenko-Pastur law.

    ``bulk_values`` are the ``m`` singular values left after ``k`` signal components of an ``n x d``
    matrix; as in :func:`sdetool.spectral.spectrum.noise_sigma_deflated_median` they are compared with the law of
    an ``(n - k) x (d - k)`` noise matrix: eigenvalues ``s^2 / ((q - k) sigma^2)``, ratio
    ``(p - k) / (q - k)``. NaN when there are fewer than two values or ``sigma`` is not positive.
    """
    values = np.sort(np.asarray(bulk_values, dtype=np.float64))
    p, q = min(n, d), max(n, d)
    k = p - values.size
    if values.size < 2 or not sigma > 0 or k < 0 or q - k < 1:
        return float("nan")
    eigenvalues = values**2 / ((q - k) * sigma * sigma)
    model = marchenko_pastur_cdf(eigenvalues, (p - k) / (q - k))
    m = values.size
    above = np.arange(1, m + 1) / m - model
    below = model - np.arange(0, m) / m
    return float(max(above.max(), below.max()))
