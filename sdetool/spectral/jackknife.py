"""Uncertainty of spectral statistics by the delete-a-block jackknife (METHOD.md section 3c).

Resampling rows with replacement is inconsistent for statistics that depend on the noise bulk: a
bootstrap sample repeats rows, which shrinks the effective n to about n/2 and widens the bulk, so
every band share and the effective rank shift (measured: a 90 % percentile interval covered the mean
in 0 of 40 draws). The jackknife deletes instead: the rows are split into ``K`` blocks by a hash of
their position, each block's partial sums are kept during the single pass, and the statistic is
computed ``K`` times, each time without one block. Its spread gives the standard error

    se^2 = (K - 1) / K * sum_k (theta_(k) - mean)^2

and the interval is ``theta +- z se`` around the full-data estimate (``z`` the normal quantile of the
level).

Pure numpy and scipy; the partial sums come from :class:`sdetool.spectral.gram.GramAccumulator` (``blocks``).

References
----------
Quenouille (1956); Tukey (1958); Efron & Stein (1981), Ann. Statist. 9 (the jackknife variance);
Shao & Wu (1989), Ann. Statist. 17 (delete-d / grouped jackknife); Busing, Meijer & van der Leeden
(1999), Statistics and Computing 9 (the delete-a-group jackknife for groups of unequal sizes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

METHOD = "delete-a-block jackknife"


@dataclass(frozen=True)
class Interval:
    """A jackknife interval around an estimate.

    Attributes
    ----------
    estimate : float
        The full-data value.
    standard_error : float
    low, high : float
        ``estimate -+ z standard_error``; NaN when a replicate could not be computed.
    """

    estimate: float
    standard_error: float
    low: float
    high: float

    def bounds(self) -> list[float | None]:
        """``[low, high]`` with NaN as None (for JSON)."""
        return [_finite(self.low), _finite(self.high)]


def _finite(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def jackknife_interval(estimate: float, replicates, level: float = 0.9, limits=None, sizes=None) -> Interval:
    """The normal interval of the delete-a-block jackknife.

    With blocks of equal size the standard error is ``sqrt((K - 1) / K sum_k (theta_(k) - mean)^2)``.
    Blocks of unequal sizes ``m_k`` (rows hashed to blocks hold binomial counts) use the weighted
    delete-a-group jackknife of Busing, Meijer & van der Leeden (1999): with ``h_k = n / m_k`` the
    pseudo-values ``p_k = h_k theta - (h_k - 1) theta_(k)``, ``theta_J = K theta - sum_k (1 - m_k / n)
    theta_(k)`` and ``se^2 = (1 / K) sum_k (p_k - theta_J)^2 / (h_k - 1)``, which equals the formula above
    for equal sizes. Otherwise a statistic that grows with the rows (the noise edge grows like
    ``sqrt(n)``) would read the blocks' different sizes as sampling error (measured: an interval 2.5-3.5
    times too wide on 2000 x 64).

    Parameters
    ----------
    estimate : float
        The statistic on every row.
    replicates : array_like, shape (K,)
        The statistic without block ``k``, for each of ``K >= 2`` blocks.
    level : float
        Coverage in (0, 1).
    limits : (float, float), optional
        The values the statistic can take (a share lies in [0, 1]); the interval is clipped to them.
    sizes : array_like, shape (K,), optional
        Rows in each block (default: equal sizes). Blocks without rows are left out (their replicate
        is the full data).
    """
    values = np.asarray(replicates, dtype=np.float64)
    if values.ndim != 1 or values.size < 2:
        raise ValueError(f"need at least 2 jackknife replicates, got shape {values.shape}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"the interval level must be in (0, 1), got {level!r}")
    if sizes is not None and np.shape(sizes) != values.shape:
        raise ValueError(f"need one block size per replicate, got {np.shape(sizes)} for {values.shape}")
    if not (math.isfinite(estimate) and np.isfinite(values).all()):
        nan = float("nan")
        return Interval(float(estimate), nan, nan, nan)
    error = _standard_error(float(estimate), values, sizes)
    z = float(stats.norm.ppf(0.5 + level / 2.0))
    low, high = float(estimate) - z * error, float(estimate) + z * error
    if limits is not None:
        low, high = max(low, limits[0]), min(high, limits[1])
    return Interval(float(estimate), error, low, high)


def _standard_error(estimate: float, values: np.ndarray, sizes) -> float:
    """The jackknife standard error, for equal blocks or weighted by the blocks' sizes (Busing et al. 1999)."""
    if sizes is None:
        blocks = values.size
        return math.sqrt((blocks - 1) / blocks * float(np.sum((values - values.mean()) ** 2)))
    counts = np.asarray(sizes, dtype=np.float64)
    total = float(counts.sum())
    used = (counts > 0) & (counts < total)
    if used.sum() < 2:
        return float("nan")
    counts, values = counts[used], values[used]
    blocks, weights = values.size, total / counts
    pooled = blocks * estimate - float(np.sum((1.0 - counts / total) * values))
    pseudo = weights * estimate - (weights - 1.0) * values
    return math.sqrt(float(np.sum((pseudo - pooled) ** 2 / (weights - 1.0))) / blocks)


def block_of(keys: np.ndarray, blocks: int) -> np.ndarray:
    """Block index in ``[0, blocks)`` of rows with uniform keys in [0, 1) (:func:`sdetool.spectral.gram.row_keys`)."""
    return np.minimum((np.asarray(keys) * blocks).astype(np.int64), blocks - 1)
