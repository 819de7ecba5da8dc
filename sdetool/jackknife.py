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

Pure numpy and scipy; the partial sums come from :class:`sdetool.gram.GramAccumulator` (``blocks``).

References
----------
Quenouille (1956); Tukey (1958); Efron & Stein (1981), Ann. Statist. 9 (the jackknife variance);
Shao & Wu (1989), Ann. Statist. 17 (delete-d / grouped jackknife).
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


def jackknife_interval(estimate: float, replicates, level: float = 0.9) -> Interval:
    """The normal interval of the delete-a-block jackknife.

    Parameters
    ----------
    estimate : float
        The statistic on every row.
    replicates : array_like, shape (K,)
        The statistic without block ``k``, for each of ``K >= 2`` blocks.
    level : float
        Coverage in (0, 1).
    """
    values = np.asarray(replicates, dtype=np.float64)
    if values.ndim != 1 or values.size < 2:
        raise ValueError(f"need at least 2 jackknife replicates, got shape {values.shape}")
    if not 0.0 < level < 1.0:
        raise ValueError(f"the interval level must be in (0, 1), got {level!r}")
    if not (math.isfinite(estimate) and np.isfinite(values).all()):
        nan = float("nan")
        return Interval(float(estimate), nan, nan, nan)
    blocks = values.size
    error = math.sqrt((blocks - 1) / blocks * float(np.sum((values - values.mean()) ** 2)))
    z = float(stats.norm.ppf(0.5 + level / 2.0))
    return Interval(float(estimate), error, float(estimate) - z * error, float(estimate) + z * error)


def block_of(keys: np.ndarray, blocks: int) -> np.ndarray:
    """Block index in ``[0, blocks)`` of rows with uniform keys in [0, 1) (:func:`sdetool.gram.row_keys`)."""
    return np.minimum((np.asarray(keys) * blocks).astype(np.int64), blocks - 1)
