"""Random-matrix theory: the Marchenko-Pastur law, the Tracy-Widom edge, BBP and Gavish-Donoho.

Pure functions of shapes and scalars; no data, no I/O. Conventions (see ``docs/method.md``): an
``n x d`` noise matrix has iid entries of standard deviation ``sigma``; ``q = max(n, d)``,
``p = min(n, d)`` and ``beta = p / q``. The eigenvalues of ``X^T X / (q sigma^2)`` then follow the
Marchenko-Pastur (MP) law with ratio ``beta`` and unit variance, supported on
``[(1 - sqrt(beta))^2, (1 + sqrt(beta))^2]``.

References
----------
Marchenko & Pastur (1967); Johnstone (2001), Ann. Statist. 29(2); Bornemann (2010), Markov Process.
Related Fields 16 (numerical Fredholm determinants); Baik, Ben Arous & Peche (2005); Benaych-Georges &
Nadakuditi (2012), J. Multivariate Anal. 111; Gavish & Donoho (2014), IEEE Trans. Inf. Theory 60(8).
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
from scipy import integrate, optimize, special


def _check_beta(beta: float) -> float:
    beta = float(beta)
    if not (0.0 < beta <= 1.0):
        raise ValueError(f"beta must be in (0, 1], got {beta!r}")
    return beta


def marchenko_pastur_support(beta: float) -> tuple[float, float]:
    """Support ``[(1 - sqrt(beta))^2, (1 + sqrt(beta))^2]`` of the unit-variance MP law."""
    beta = _check_beta(beta)
    root = math.sqrt(beta)
    return (1.0 - root) ** 2, (1.0 + root) ** 2


def marchenko_pastur_pdf(x, beta: float) -> np.ndarray:
    """Density of the unit-variance MP law with ratio ``beta`` (zero outside its support).

    Parameters
    ----------
    x : array_like
        Points at which to evaluate the density (eigenvalues of ``X^T X / q`` for ``sigma = 1``).
    beta : float
        Aspect ratio ``p / q`` in ``(0, 1]``.
    """
    lower, upper = marchenko_pastur_support(beta)
    x = np.asarray(x, dtype=np.float64)
    inside = (x > lower) & (x < upper)
    density = np.zeros_like(x)
    xi = x[inside]
    density[inside] = np.sqrt((upper - xi) * (xi - lower)) / (2.0 * math.pi * beta * xi)
    return density


@lru_cache(maxsize=256)
def _mp_median_cached(beta: float) -> float:
    lower, upper = marchenko_pastur_support(beta)

    def mass_below(x: float) -> float:
        # The substitution x = lower + (upper - lower) sin^2(t) removes the square-root endpoint
        # singularities, so plain Gauss-Kronrod quadrature converges to ~1e-12.
        t_max = math.asin(math.sqrt((x - lower) / (upper - lower)))
        width = upper - lower

        def integrand(t: float) -> float:
            sin_t, cos_t = math.sin(t), math.cos(t)
            xt = lower + width * sin_t * sin_t
            if xt <= 0.0:
                return 0.0
            return width * width * 2 * sin_t * sin_t * cos_t * cos_t / (2.0 * math.pi * beta * xt)

        return integrate.quad(integrand, 0.0, t_max, epsabs=1e-13, epsrel=1e-12, limit=200)[0]

    return optimize.brentq(lambda x: mass_below(x) - 0.5, lower, upper, xtol=1e-14, rtol=1e-13)


def marchenko_pastur_median(beta: float) -> float:
    """Median ``mu_beta`` of the unit-variance MP law (computed numerically, cached per ``beta``).

    Gavish & Donoho (2014) use it to estimate the noise level from the median singular value:
    ``sigma = s_med / sqrt(q * mu_beta)``. For ``beta = 1`` it is about 0.6528.
    """
    return _mp_median_cached(round(_check_beta(beta), 12))


# --- Tracy-Widom (beta = 1) --------------------------------------------------------------------
# F1(s) = det(I - K) on L2(0, inf) with K(x, y) = Ai(s + (x + y) / 2) / 2 (Ferrari & Spohn 2005;
# Bornemann 2010). Gauss-Legendre on [0, L] suffices: Ai decays like exp(-2/3 x^1.5).
_TW_NODES = 80
_TW_LENGTH = 24.0


@lru_cache(maxsize=1)
def _tw_quadrature() -> tuple[np.ndarray, np.ndarray]:
    nodes, weights = np.polynomial.legendre.leggauss(_TW_NODES)
    x = 0.5 * _TW_LENGTH * (nodes + 1.0)
    w = 0.5 * _TW_LENGTH * weights
    return x, w


def tracy_widom1_cdf(s: float) -> float:
    """CDF of the Tracy-Widom law of order 1 (real/GOE case), by Bornemann's Fredholm determinant.

    Accurate to about 1e-10 for ``s`` in ``[-8, 8]``; returns 0 below -10 and 1 above 12.
    """
    s = float(s)
    if s < -10.0:
        return 0.0
    if s > 12.0:
        return 1.0
    x, w = _tw_quadrature()
    root_w = np.sqrt(w)
    kernel = 0.5 * special.airy(s + 0.5 * (x[:, None] + x[None, :]))[0]
    matrix = np.eye(x.size) - root_w[:, None] * kernel * root_w[None, :]
    return float(min(max(np.linalg.det(matrix), 0.0), 1.0))


@lru_cache(maxsize=256)
def tracy_widom1_quantile(probability: float) -> float:
    """Quantile of the Tracy-Widom law of order 1: ``TW1_quantile(0.95) = 0.9793``, ``(0.99) = 2.0234``."""
    probability = float(probability)
    if not (1e-9 < probability < 1.0 - 1e-12):
        raise ValueError(f"probability must be in (0, 1), got {probability!r}")
    return optimize.brentq(lambda s: tracy_widom1_cdf(s) - probability, -9.5, 11.5, xtol=1e-12)


def noise_edge(sigma: float, n: int, d: int, level: float = 0.01) -> float:
    """Largest singular value that ``n x d`` noise of std ``sigma`` reaches with probability ``1 - level``.

    With ``level = 0`` this is the asymptotic MP bulk edge ``sigma (sqrt(n) + sqrt(d))``. Otherwise the
    Tracy-Widom margin of Johnstone (2001) is added: ``mu = (sqrt(n-1) + sqrt(d))^2``,
    ``s = (sqrt(n-1) + sqrt(d)) (1/sqrt(n-1) + 1/sqrt(d))^(1/3)`` and the edge is
    ``sigma sqrt(mu + s TW1_quantile(1 - level))``.

    Parameters
    ----------
    sigma : float
        Standard deviation of one noise entry.
    n, d : int
        Rows (samples) and columns (dimensions) of the matrix.
    level : float
        Probability that pure noise exceeds the edge, in ``[0, 0.5]``.
    """
    if not (0.0 <= level <= 0.5):
        raise ValueError(f"edge level must be in [0, 0.5], got {level!r}")
    if n < 2 or d < 1:
        raise ValueError(f"need n >= 2 and d >= 1, got n={n}, d={d}")
    if level == 0.0:
        return float(sigma * (math.sqrt(n) + math.sqrt(d)))
    root_n, root_d = math.sqrt(n - 1), math.sqrt(d)
    centre = (root_n + root_d) ** 2
    scale = (root_n + root_d) * (1.0 / root_n + 1.0 / root_d) ** (1.0 / 3.0)
    return float(sigma * math.sqrt(max(centre + scale * tracy_widom1_quantile(1.0 - level), 0.0)))


def gavish_donoho_lambda(beta: float) -> float:
    """Optimal hard-threshold coefficient for known noise: ``4 / sqrt(3)`` for square matrices.

    ``lambda*(beta) = sqrt(2 (beta + 1) + 8 beta / ((beta + 1) + sqrt(beta^2 + 14 beta + 1)))``;
    the threshold on singular values is ``lambda*(beta) sqrt(q) sigma``.
    """
    beta = _check_beta(beta)
    return math.sqrt(2.0 * (beta + 1.0) + 8.0 * beta / ((beta + 1.0) + math.sqrt(beta * beta + 14.0 * beta + 1.0)))


def bbp_threshold(beta: float) -> float:
    """Smallest detectable spike strength ``x = beta^(1/4)`` (units of ``sigma sqrt(q)``)."""
    return _check_beta(beta) ** 0.25


def spike_observed(strength, beta: float) -> np.ndarray:
    """Observed singular value ``y`` (units of ``sigma sqrt(q)``) of a spike of strength ``x``.

    ``y^2 = x^2 + 1 + beta + beta / x^2`` above the BBP threshold, the bulk edge ``1 + sqrt(beta)``
    below it (Benaych-Georges & Nadakuditi 2012).
    """
    beta = _check_beta(beta)
    x = np.asarray(strength, dtype=np.float64)
    with np.errstate(divide="ignore"):
        above = np.sqrt(x * x + 1.0 + beta + beta / (x * x))
    return np.where(x > bbp_threshold(beta), above, 1.0 + math.sqrt(beta))


def spike_strength(observed, beta: float) -> np.ndarray:
    """Invert :func:`spike_observed`: the signal strength ``x`` behind an observed singular value ``y``.

    Both are in units of ``sigma sqrt(q)``. Values at or inside the bulk edge ``1 + sqrt(beta)`` have
    no signal interpretation and give NaN.
    """
    beta = _check_beta(beta)
    y = np.asarray(observed, dtype=np.float64)
    b = y * y - 1.0 - beta
    disc = b * b - 4.0 * beta
    out = np.full_like(y, np.nan)
    ok = (y > 1.0 + math.sqrt(beta)) & (disc >= 0)
    out[ok] = np.sqrt(0.5 * (b[ok] + np.sqrt(disc[ok])))
    return out
