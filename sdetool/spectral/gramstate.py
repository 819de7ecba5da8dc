"""The statistics of a row set (:class:`GramState`): count, mean, centred scatter or the rows themselves.

Built by :class:`sdetool.spectral.gram.GramAccumulator` (from shifted sums, :func:`state_from_sums`, or, for wide
sets, from the kept rows, :func:`row_state`); states of disjoint row sets merge exactly. Pure numpy.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sdetool.spectral.rowsets import RowSample, merge_samples


@dataclass
class GramState:
    """Statistics of ``n`` rows of dimension ``d``.

    Attributes
    ----------
    n : int
        Number of rows accumulated.
    mean : ndarray, shape (d,)
        Column mean, float64.
    scatter : ndarray, shape (d, d), or None
        Centred scatter ``sum_i (x_i - mean)(x_i - mean)^T``, float64, symmetric. None for a row-space
        state (``rows`` kept, ``n <= d``): there the ``d x d`` matrix is never formed.
    unit_sum : ndarray, shape (d,)
        Sum of the raw rows scaled to unit norm (zero rows skipped): gives the mean pairwise cosine
        and the modality gap in O(n d).
    zero_rows : int
        Rows of norm zero (left out of ``unit_sum``).
    nonfinite_rows : int
        Rows holding NaN or Inf that were seen (dropped or not, see :class:`GramAccumulator`).
    first_nonfinite : int or None
        Stream position (0-based, counting every row seen) of the first such row.
    rows : ndarray or None, shape (n, d)
        The rows themselves, when they were kept for a direct SVD (small ``n``).
    entry_sample : ndarray or None, shape (m, d)
        A uniform random sample of rows (bottom-k keys), for entry-wise noise estimators.
    entry_keys : ndarray or None, shape (m,)
        The sampling keys of ``entry_sample``, so that samples of several states merge.
    sample_rows : int
        Capacity of the row sample (a merged sample keeps at most this many rows).
    fingerprints : ndarray of uint64 or None
        The distinct row fingerprints (:class:`sdetool.spectral.rowsets.RowFingerprints`): their count is the
        number of distinct rows.
    blocks : tuple of GramState or None
        The statistics of each jackknife block (rows split by a hash of their position), whose union is
        this state (:mod:`sdetool.spectral.jackknife`).
    row_range : tuple of int or None
        For a block of a row-space state: where its rows lie in the parent's ``rows`` (``start, stop``).
    """

    n: int
    mean: np.ndarray
    scatter: np.ndarray
    unit_sum: np.ndarray
    zero_rows: int = 0
    nonfinite_rows: int = 0
    first_nonfinite: int | None = None
    rows: np.ndarray | None = None
    entry_sample: np.ndarray | None = None
    entry_keys: np.ndarray | None = None
    sample_rows: int = 0
    fingerprints: np.ndarray | None = None
    blocks: tuple | None = None
    row_range: tuple | None = None

    @property
    def dim(self) -> int:
        return int(self.mean.shape[0])

    @property
    def row_space(self) -> bool:
        """Whether the state holds its rows and no ``d x d`` scatter (the wide case, ``n <= d``)."""
        return self.scatter is None

    def column_energy(self, centered: bool = True) -> np.ndarray:
        """``diag(X^T X)`` of the centred (default) or raw rows, shape (d,), without forming ``X^T X``."""
        if not self.row_space:
            return np.diag(self.gram(centered)).copy()
        rows = self.rows - self.mean if centered else self.rows
        return np.einsum("ij,ij->j", rows, rows)

    @property
    def distinct_rows(self) -> int | None:
        """Rows that are not repeats of another (to working precision); None when not tracked."""
        return None if self.fingerprints is None else int(self.fingerprints.size)

    def without(self, part: "GramState") -> "GramState":
        """The statistics of this state's rows less those of ``part``, a subset of them (jackknife).

        Inverts :meth:`merge`: ``S_rest = S - S_part - (n_rest n_part / n) (m_rest - m_part)(m_rest - m_part)^T``.
        Only ``n``, ``mean`` and ``scatter`` are meaningful (no unit sums, samples, rows or fingerprints).
        """
        rest = self.n - part.n
        if self.row_space:  # the rows outside the block's range
            start, stop = part.row_range
            rows = np.concatenate([self.rows[:start], self.rows[stop:]])
            return row_state(rows, np.zeros(self.dim), counts=(0, 0, None))
        if rest <= 0:
            return GramState(0, np.zeros(self.dim), np.zeros((self.dim, self.dim)), np.zeros(self.dim))
        mean = (self.mean * self.n - part.mean * part.n) / rest
        delta = mean - part.mean
        scatter = self.scatter - part.scatter - np.outer(delta, delta) * (rest * part.n / self.n)
        return GramState(n=rest, mean=mean, scatter=0.5 * (scatter + scatter.T), unit_sum=np.zeros(self.dim))

    def gram(self, centered: bool = True) -> np.ndarray:
        """``X^T X`` of the centred (default) or raw rows, shape (d, d), float64 (not for a row-space state)."""
        if self.row_space:
            raise ValueError("a row-space state has no d x d Gram; use its rows (the spectrum of X X^T)")
        if centered:
            return self.scatter
        return self.scatter + self.n * np.outer(self.mean, self.mean)

    def merge(self, other: "GramState") -> "GramState":
        """Statistics of the union of two disjoint row sets (exact up to rounding)."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge statistics of dimension {self.dim} and {other.dim}")
        n = self.n + other.n
        delta = other.mean - self.mean
        if n == 0:
            mean, scatter = self.mean, self.scatter
        else:
            mean = self.mean + delta * (other.n / n)
            scatter = None if self.row_space or other.row_space else \
                self.scatter + other.scatter + np.outer(delta, delta) * (self.n * other.n / n)
        firsts = [f for f in (self.first_nonfinite, other.first_nonfinite) if f is not None]
        rows = None
        if self.rows is not None and other.rows is not None:
            rows = np.concatenate([self.rows, other.rows])
        elif scatter is None:
            raise ValueError("a row-space state merges only with another one")
        sample, keys = merge_samples((self.entry_sample, self.entry_keys), (other.entry_sample, other.entry_keys),
                                     max(self.sample_rows, other.sample_rows), self.dim)
        fingerprints = None
        if self.fingerprints is not None and other.fingerprints is not None:
            fingerprints = np.union1d(self.fingerprints, other.fingerprints)
        blocks = None
        if self.blocks is not None and other.blocks is not None:
            blocks = tuple(a.merge(b) for a, b in zip(self.blocks, other.blocks))
        return GramState(
            n=n,
            mean=mean,
            scatter=scatter,
            unit_sum=self.unit_sum + other.unit_sum,
            zero_rows=self.zero_rows + other.zero_rows,
            nonfinite_rows=self.nonfinite_rows + other.nonfinite_rows,
            first_nonfinite=min(firsts) if firsts else None,
            rows=rows,
            entry_sample=sample,
            entry_keys=keys,
            sample_rows=max(self.sample_rows, other.sample_rows),
            fingerprints=fingerprints,
            blocks=blocks,
        )


def state_from_sums(
    n: int,
    shift: np.ndarray | None,
    column_sum: np.ndarray,
    gram: np.ndarray,
    unit_sum: np.ndarray,
    *,
    counts: tuple[int, int, int | None],
    sample: RowSample | None = None,
    rows: np.ndarray | None = None,
    fingerprints: np.ndarray | None = None,
) -> GramState:
    """A :class:`GramState` from the sums over shifted rows ``y = x - shift``.

    ``column_sum = sum y`` and ``gram = sum y y^T``; then ``mean = shift + column_sum / n`` and
    ``scatter = gram - n m m^T`` with the small ``m = column_sum / n``: no cancellation.
    ``counts`` are (zero rows, non-finite rows, first non-finite position).
    """
    d = column_sum.shape[0]
    if n == 0:
        mean, scatter = np.zeros(d), np.zeros((d, d))
    else:
        offset = column_sum / n
        mean = shift + offset
        scatter = gram - n * np.outer(offset, offset)
        scatter = 0.5 * (scatter + scatter.T)
    zero_rows, nonfinite, first = counts
    return GramState(
        n=n,
        mean=mean,
        scatter=scatter,
        unit_sum=unit_sum.copy(),
        zero_rows=zero_rows,
        nonfinite_rows=nonfinite,
        first_nonfinite=first,
        rows=rows,
        entry_sample=sample.rows.copy() if sample is not None else None,
        entry_keys=sample.keys.copy() if sample is not None else None,
        sample_rows=sample.capacity if sample is not None else 0,
        fingerprints=fingerprints,
    )


def row_state(rows: np.ndarray, unit_sum: np.ndarray, *, counts: tuple[int, int, int | None],
              sample: RowSample | None = None, mean: np.ndarray | None = None) -> GramState:
    """A row-space :class:`GramState` (no ``d x d`` scatter) of rows held in memory (float64, shape (n, d)).

    ``mean``: the rows' mean when the caller has it from shifted sums; else it is computed shifted by the
    first row, so that identical rows have exactly their value as the mean (no cancellation).
    """
    n, d = rows.shape
    if mean is None:
        mean = rows[0] + np.add.reduce(rows - rows[0], axis=0) / n if n else np.zeros(d)
    return GramState(
        n=n,
        mean=mean,
        scatter=None,
        unit_sum=unit_sum.copy(),
        zero_rows=counts[0],
        nonfinite_rows=counts[1],
        first_nonfinite=counts[2],
        rows=rows,
        entry_sample=sample.rows.copy() if sample is not None else None,
        entry_keys=sample.keys.copy() if sample is not None else None,
        sample_rows=sample.capacity if sample is not None else 0,
    )
