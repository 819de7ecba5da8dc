"""Scalar summaries of a spectrum and cross-modal distances (METHOD.md sections 4-5).

Pure numpy; singular values are passed descending.

References
----------
Roy & Vetterli (2007) (effective rank); Garrido et al. (2023) (RankMe); Agrawal et al. (2022)
(alpha-ReQ power-law decay); Liang et al. (2022) (cone effect, modality gap).
"""

from __future__ import annotations

import math

import numpy as np


def _values(singular_values) -> np.ndarray:
    """Singular values as a float64 1-D array; empty for a matrix without components (one centred row)."""
    values = np.asarray(singular_values, dtype=np.float64)
    if values.ndim != 1:
        raise ValueError(f"singular_values must be a 1-D array, got shape {values.shape}")
    return values


def effective_rank(singular_values) -> float:
    """``exp(H(p))`` with ``p_i = s_i / sum(s)``: between 1 and the number of non-zero values.

    Also called RankMe when computed on the uncentred matrix. 0 for an all-zero (or empty) spectrum:
    a collapsed set spans no dimension at all.
    """
    values = _values(singular_values)
    total = values.sum()
    if total <= 0:
        return 0.0
    p = values[values > 0] / total
    return float(math.exp(-np.sum(p * np.log(p))))


def stable_rank(singular_values) -> float:
    """``sum(s^2) / s_1^2``; NaN for an all-zero (or empty) spectrum (0 / 0)."""
    values = _values(singular_values)
    top = values.max() if values.size else 0.0
    return float(np.sum(values**2) / top**2) if top > 0 else float("nan")


def participation_ratio(singular_values) -> float:
    """``(sum lambda)^2 / sum lambda^2`` with ``lambda = s^2``; NaN for an all-zero (or empty) spectrum."""
    eigenvalues = _values(singular_values) ** 2
    denominator = np.sum(eigenvalues**2)
    return float(np.sum(eigenvalues) ** 2 / denominator) if denominator > 0 else float("nan")


def power_law_alpha(singular_values, window: tuple[int, int] = (10, 100)) -> tuple[float, float]:
    """Decay exponent of ``lambda_i ~ i^-alpha`` (``lambda = s^2``) fitted in log-log, and its R^2.

    Parameters
    ----------
    singular_values : array_like, shape (p,)
    window : (int, int)
        1-based inclusive index range; the upper end is clipped to ``p``. Needs at least 3 positive
        eigenvalues inside the window, else ``(nan, nan)``.
    """
    values = _values(singular_values)
    first, last = int(window[0]), min(int(window[1]), values.size)
    if first < 1 or last < first:
        return float("nan"), float("nan")
    index = np.arange(first, last + 1, dtype=np.float64)
    eigenvalues = values[first - 1 : last] ** 2
    keep = eigenvalues > 0
    if keep.sum() < 3:
        return float("nan"), float("nan")
    x, y = np.log(index[keep]), np.log(eigenvalues[keep])
    slope, intercept = np.polyfit(x, y, 1)
    residual = y - (slope * x + intercept)
    total = np.sum((y - y.mean()) ** 2)
    r2 = 1.0 - np.sum(residual**2) / total if total > 0 else float("nan")
    return float(-slope), float(r2)


def mean_cosine(unit_sum: np.ndarray, n: int) -> float:
    """Mean pairwise cosine of ``n`` rows from the sum of their unit vectors, in O(d).

    ``(||sum u_i||^2 - n) / (n (n - 1))``: 1 when every row points the same way, about 0 for
    isotropic rows, ``-1 / (n - 1)`` at least.
    """
    if n < 2:
        return float("nan")
    unit_sum = np.asarray(unit_sum, dtype=np.float64)
    return float((unit_sum @ unit_sum - n) / (n * (n - 1.0)))


def hellinger_spectral_distance(values_a, values_b) -> float:
    """Hellinger distance between the normalised power spectra ``s^2 / sum s^2`` of two matrices.

    The shorter spectrum is padded with zeros. 0 for proportional spectra, 1 for disjoint support;
    NaN when either spectrum has no energy (it has no distribution to compare).
    """
    a, b = _values(values_a) ** 2, _values(values_b) ** 2
    size = max(a.size, b.size)
    a = np.pad(a, (0, size - a.size))
    b = np.pad(b, (0, size - b.size))
    if a.sum() <= 0 or b.sum() <= 0:
        return float("nan")
    affinity = np.sum(np.sqrt((a / a.sum()) * (b / b.sum())))
    return float(math.sqrt(max(1.0 - affinity, 0.0)))


def subspace_overlap(vectors_a: np.ndarray, vectors_b: np.ndarray) -> tuple[float, np.ndarray]:
    """Overlap ``||V_a^T V_b||_F^2 / k`` of two k-dimensional subspaces, and their principal angles.

    Parameters
    ----------
    vectors_a, vectors_b : ndarray, shape (d, k)
        Orthonormal bases (e.g. top-k right singular vectors). Sign- and rotation-invariant.

    Returns
    -------
    overlap : float
        1 for the same subspace, 0 for orthogonal ones; ``1 - overlap`` is the subspace distance
        of METHOD.md section 5.
    angles : ndarray, shape (k,)
        Principal angles in radians, ascending.
    """
    if vectors_a.shape != vectors_b.shape:
        raise ValueError(f"bases must have the same shape, got {vectors_a.shape} and {vectors_b.shape}")
    angles = principal_angles(vectors_a, vectors_b)
    return float(np.sum(np.cos(angles) ** 2) / vectors_a.shape[1]), angles


def principal_angles(vectors_a: np.ndarray, vectors_b: np.ndarray) -> np.ndarray:
    """Principal angles between the spans of two orthonormal bases (Bjorck & Golub 1973).

    Parameters
    ----------
    vectors_a : ndarray, shape (d, k_a)
    vectors_b : ndarray, shape (d, k_b)
        Orthonormal columns; ``k_a`` and ``k_b`` may differ.

    Returns
    -------
    ndarray, shape (min(k_a, k_b),)
        Angles in radians, ascending: 0 for a shared direction, pi/2 for an orthogonal one.
    """
    if vectors_a.ndim != 2 or vectors_b.ndim != 2 or vectors_a.shape[0] != vectors_b.shape[0]:
        raise ValueError(f"bases must be (d, k) with the same d, got {vectors_a.shape} and {vectors_b.shape}")
    cosines = np.linalg.svd(vectors_a.T @ vectors_b, compute_uv=False)
    return np.sort(np.arccos(np.clip(cosines, 0.0, 1.0)))


def modality_gap(unit_mean_a: np.ndarray, unit_mean_b: np.ndarray) -> float:
    """Euclidean distance between the centroids of two sets of unit rows (Liang et al. 2022)."""
    return float(np.linalg.norm(np.asarray(unit_mean_a) - np.asarray(unit_mean_b)))
