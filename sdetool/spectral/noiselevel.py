"""The noise level ``sigma`` of one noise entry, estimated from a spectrum (METHOD.md section 2).

Pure functions; conventions as in :mod:`sdetool.spectral.spectrum` (``n`` effective rows, ``d`` columns,
``p = min(n, d)``, ``q = max(n, d)``, ``beta = p / q``).

References
----------
Gavish & Donoho (2014), IEEE Trans. Inf. Theory 60(8) (median estimate); Veraart et al. (2016),
NeuroImage 142 (MP-PCA); Cordero-Grande et al. (2019).
"""

from __future__ import annotations

import math

import numpy as np

from sdetool.spectral import rmt


class NoNoiseBulkError(ValueError):
    """The spectrum holds no noise bulk to measure a noise level from (see :func:`noise_sigma_mppca`)."""


def _shape(n: int, d: int, p: int) -> tuple[int, int, float]:
    if n < 1 or d < 1:
        raise ValueError(f"need n >= 1 and d >= 1, got n={n}, d={d}")
    q = max(n, d)
    return p, q, min(n, d) / q


def noise_sigma_median(singular_values: np.ndarray, n: int, d: int) -> float:
    """Noise std from the median singular value: ``s_med / sqrt(q mu_beta)`` (Gavish & Donoho 2014).

    Robust while few components carry signal; each signal component biases it upwards by shifting
    the median one half-rank (about +5% with signal in 9% of the components of a square matrix).
    :func:`noise_sigma_deflated_median` removes that bias.
    """
    values = np.asarray(singular_values, dtype=np.float64)
    _, q, beta = _shape(n, d, values.size)
    median = float(np.median(values))
    return median / math.sqrt(q * rmt.marchenko_pastur_median(beta))


def noise_sigma_deflated_median(
    singular_values: np.ndarray, n: int, d: int, edge_level: float = 0.01, max_iterations: int = 20
) -> tuple[float, int]:
    """Median noise estimate with the signal components removed, iterated to a fixed point.

    A rank-``k`` signal leaves noise that lives in ``(n - k) x (d - k)`` dimensions, so the ``p - k``
    values inside the bulk follow the MP law of ratio ``(p - k) / (q - k)``. Starting from
    :func:`noise_sigma_median` (``k = 0``): ``sigma = median(s_{k+1..p}) / sqrt((q - k) mu)``, then
    ``k`` = the number of values above :func:`sdetool.spectral.rmt.noise_edge`, until ``k`` repeats.
    On planted spikes in up to 20% of the components this stays within 0.5% of the true noise
    level, where the plain estimate is off by 5% at 9%.

    Returns
    -------
    sigma : float
    signal_rank : int
        The ``k`` of the fixed point.
    """
    values = np.asarray(singular_values, dtype=np.float64)
    p, q, _ = _shape(n, d, values.size)
    seen: set[int] = set()
    k = 0
    sigma = noise_sigma_median(values, n, d)
    for _ in range(max_iterations):
        edge = rmt.noise_edge(sigma, max(n, 2), d, edge_level)
        k_next = min(int(np.sum(values > edge)), p - 1)
        if k_next == k or k_next in seen:
            break
        seen.add(k)
        k = k_next
        bulk = values[k:]
        sigma = float(np.median(bulk)) / math.sqrt((q - k) * rmt.marchenko_pastur_median((p - k) / (q - k)))
    return sigma, k


def noise_sigma_mppca(singular_values: np.ndarray, n: int, d: int) -> tuple[float, int]:
    """Noise std and signal rank by MP-PCA (Veraart et al. 2016; Cordero-Grande et al. 2019).

    The signal rank ``P`` is the smallest such that the remaining ``p - P`` values fit one MP bulk
    of noise living in ``(p - P) x (q - P)`` dimensions:
    ``s_{P+1}^2 - s_p^2 <= 4 sqrt((p - P)(q - P)) sigma_P^2`` with
    ``sigma_P^2 = sum_{i>P} s_i^2 / ((p - P)(q - P))``. (Veraart's original divides by ``q``
    instead of ``q - P``, which biases ``sigma`` low by ``sqrt((q - P) / q)``.)

    Returns
    -------
    sigma : float
    signal_rank : int

    Raises
    ------
    NoNoiseBulkError
        When no tail of at least two values fits a bulk (no noise to measure).
    """
    values = np.asarray(singular_values, dtype=np.float64)
    p, q, _ = _shape(n, d, values.size)
    powers = values * values
    signal = np.arange(p)  # P, the candidate signal ranks
    tail_sums = np.cumsum(powers[::-1])[::-1]  # sum of s_i^2 for i > P
    noise_dims = (p - signal) * (q - signal).astype(np.float64)
    variances = tail_sums / noise_dims
    fits = powers - powers[-1] <= 4.0 * np.sqrt(noise_dims) * variances
    fits[-1] = False  # one value always "fits": it measures nothing
    if not fits.any():
        raise NoNoiseBulkError("MP-PCA found no Marchenko-Pastur bulk in the spectrum (no noise to measure)")
    rank = int(np.argmax(fits))
    return float(math.sqrt(max(variances[rank], 0.0))), rank


def noise_sigma_iqr(entries: np.ndarray) -> float:
    """Noise std as the inter-quartile range of matrix entries over 1.349 (Gaussian IQR / std)."""
    values = np.asarray(entries, dtype=np.float64).ravel()
    if values.size < 4:
        raise ValueError(f"need at least 4 entries for an IQR estimate, got {values.size}")
    q1, q3 = np.percentile(values, [25.0, 75.0])
    return float((q3 - q1) / (2.0 * 0.6744897501960817))
