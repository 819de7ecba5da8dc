"""Row sets of a stream: a uniform row sample that merges across shards and ranks, and row fingerprints.

Pure numpy. Rows are named by their global position in the stream, so a sample or a fingerprint set
does not depend on how the rows were chunked, sharded or spread over ranks.
"""

from __future__ import annotations

import numpy as np


def row_keys(positions: np.ndarray, seed: int) -> np.ndarray:
    """Uniform pseudo-random numbers in [0, 1) that depend only on ``(seed, position)`` (splitmix64)."""
    with np.errstate(over="ignore"):
        z = np.asarray(positions, dtype=np.uint64) + np.uint64((seed * 0x9E3779B97F4A7C15) % (1 << 64))
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


class RowSample:
    """A uniform sample of at most ``capacity`` rows by bottom-k keys (see :func:`row_keys`).

    Every row gets a pseudo-random key hashed from ``(seed, position)``; the rows with the smallest
    keys are a uniform sample without replacement, whatever the chunking, sharding or rank, and
    samples of disjoint row sets merge by key.
    """

    def __init__(self, capacity: int, dim: int, seed: int) -> None:
        self.capacity = capacity
        self.seed = seed
        self.rows = np.empty((0, dim), dtype=np.float64)
        self.keys = np.empty(0, dtype=np.float64)

    def candidates(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Indices (into ``positions``) of the rows that could enter the sample, and their keys."""
        keys = row_keys(positions, self.seed)
        if self.keys.size >= self.capacity:
            chosen = np.flatnonzero(keys < self.keys.max())
            return chosen, keys[chosen]
        return np.arange(keys.size), keys

    def sorted(self) -> tuple[np.ndarray, np.ndarray]:
        """The rows and keys in ascending key order."""
        order = np.argsort(self.keys, kind="stable")
        return self.rows[order], self.keys[order]

    def add(self, keys: np.ndarray, rows: np.ndarray) -> None:
        """Offer rows (float64, shape (k, d)) with their keys; keep the ``capacity`` smallest keys."""
        all_keys = np.concatenate([self.keys, keys])
        all_rows = np.concatenate([self.rows, rows])
        if all_keys.size > self.capacity:
            keep = np.argpartition(all_keys, self.capacity - 1)[: self.capacity]
            all_keys, all_rows = all_keys[keep], all_rows[keep]
        self.keys, self.rows = all_keys, all_rows


def merge_samples(first: tuple, second: tuple, capacity: int, dim: int) -> tuple:
    """Merge two ``(rows, keys)`` samples (either may be ``(None, None)``) into one of at most ``capacity`` rows."""
    if first[0] is None or second[0] is None:
        return first if second[0] is None else second
    merged = RowSample(max(capacity, len(first[1]), len(second[1])), dim, seed=0)
    merged.add(first[1], first[0])
    merged.add(second[1], second[0])
    return merged.sorted()


class RowFingerprints:
    """Fingerprints of the rows seen, to count the distinct ones (rows that repeat a row already seen).

    A row's fingerprint combines the bits of two numbers: its squared norm and its projection on a fixed
    random direction, both computed row by row with ``np.einsum`` loops, so that equal rows always get
    equal fingerprints (a BLAS product can round one row differently from an identical one, depending on
    its position in the block). Distinct rows share one only when they agree in both numbers to the last
    bit. The fingerprints are deduplicated as they accumulate: memory O(distinct rows), 8 bytes each.
    """

    _COMPACT = 1 << 20  # deduplicate once this many fingerprints wait (or as many as are kept, if more)

    def __init__(self, dim: int) -> None:
        self.direction = np.random.default_rng(0x5D7).standard_normal(dim)
        self._unique = np.empty(0, dtype=np.uint64)
        self._pending: list[np.ndarray] = []
        self._waiting = 0

    def add(self, rows: np.ndarray, squares: np.ndarray) -> None:
        """Fingerprint float64 rows (k, d) given their squared norms (k,), before any shift or scaling."""
        if rows.shape[0] == 0:
            return
        projection = np.einsum("ij,j->i", rows, self.direction) + 0.0  # + 0.0: -0.0 is 0.0
        mixed = np.ascontiguousarray(squares, dtype=np.float64).view(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        self.add_keys(projection.view(np.uint64) ^ mixed)

    def add_keys(self, keys: np.ndarray) -> None:
        """Add fingerprints computed elsewhere (the torch accumulator's), uint64."""
        self._pending.append(np.asarray(keys, dtype=np.uint64))
        self._waiting += keys.shape[0]
        if self._waiting >= max(self._COMPACT, self._unique.size):  # geometric: O(n log n) over the stream
            self._compact()

    def _compact(self) -> None:
        """Merge the waiting fingerprints into the sorted distinct ones (sort and mask: ``np.unique`` was
        14 times slower on 10^6 keys in numpy 2.4)."""
        merged = np.concatenate([self._unique, *self._pending])
        merged.sort()
        keep = np.empty(merged.size, dtype=bool)
        keep[:1] = True
        np.not_equal(merged[1:], merged[:-1], out=keep[1:])
        self._unique = merged[keep]
        self._pending, self._waiting = [], 0

    def unique(self) -> np.ndarray:
        """The distinct fingerprints, sorted (uint64)."""
        if self._pending:
            self._compact()
        return self._unique
