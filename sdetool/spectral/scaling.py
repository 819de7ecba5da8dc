"""Band shares against the number of rows: the partition of seeded row subsets of given sizes (``--scale``).

A band share is a property of the model *and* of ``n``: the noise edge falls like ``1 / sqrt(n)``
relative to the signal, so a component that is noise in 256 rows can be signal in 100,000. For each
size ``N`` and repeat ``r`` a uniform subset of ``N`` rows (seeded by ``(seed, N, r)``) is accumulated
in the same single pass as the whole set, and partitioned exactly as the whole set is
(:func:`sdetool.spectral.summary.partition_state`).
"""

from __future__ import annotations

import numpy as np

from sdetool.errors import BadInputError
from sdetool.spectral.gram import GramAccumulator
from sdetool.spectral.spectrum import BANDS


def subset_positions(rows: int, size: int, repeat: int, seed: int, pool: np.ndarray | None = None) -> np.ndarray:
    """Sorted global positions of subset ``repeat`` of ``size`` rows, drawn from ``pool`` (default: all rows)."""
    generator = np.random.default_rng([seed, size, repeat, 0x5CA1E])
    if pool is None:
        return np.sort(generator.choice(rows, size=size, replace=False)).astype(np.int64)
    return np.sort(generator.choice(pool, size=size, replace=False)).astype(np.int64)


def check_sizes(sizes, rows: int, label: str) -> None:
    """Refuse a size larger than the rows there are, before any work."""
    larger = [size for size in sizes if size > rows]
    if larger:
        raise BadInputError(f"--scale {','.join(map(str, sizes))}: {label} has {rows:,} rows, fewer than "
                            f"{larger[0]:,}; give sizes up to {rows:,}")


class SubsetAccumulators:
    """One accumulator per (size, repeat) subset, fed from the blocks of the main pass.

    Subsets of at most ``d`` rows keep their rows (a direct SVD); larger ones accumulate a Gram.
    """

    def __init__(self, rows: int, dim: int, options, pool: np.ndarray | None = None, keep_rows: bool = True) -> None:
        self.sizes, self.repeats = tuple(options.scale), options.repeats
        self.subsets: dict[tuple[int, int], tuple[np.ndarray, GramAccumulator]] = {}
        for size in self.sizes:
            for repeat in range(self.repeats):
                positions = subset_positions(rows, size, repeat, options.seed, pool)
                accumulator = GramAccumulator(dim, l2=options.l2, drop_nonfinite=options.drop_nonfinite,
                                              row_space=keep_rows and size <= dim, seed=options.seed,
                                              sample_rows=options.sample_rows(dim))
                self.subsets[(size, repeat)] = (positions, accumulator)

    def update(self, rows: np.ndarray, positions: np.ndarray) -> None:
        """Offer a block of rows with their global positions (sorted) to every subset."""
        if positions.size == 0:
            return
        for wanted, accumulator in self.subsets.values():
            lo, hi = np.searchsorted(wanted, [positions[0], positions[-1] + 1])
            if lo == hi:
                continue
            chosen = wanted[lo:hi]
            index = np.searchsorted(positions, chosen)
            hit = index < positions.size
            hit[hit] = positions[index[hit]] == chosen[hit]
            if hit.any():
                accumulator.update(rows[index[hit]], chosen[hit])

    def states(self) -> dict:
        """``{(size, repeat): GramState}``."""
        return {key: accumulator.finalize() for key, (_, accumulator) in self.subsets.items()}


def _mean_sd(values: list) -> dict:
    finite = [v for v in values if v is not None and np.isfinite(v)]
    if not finite:
        return {"mean": None, "sd": None}
    return {"mean": float(np.mean(finite)), "sd": float(np.std(finite, ddof=1)) if len(finite) > 1 else 0.0}


def scale_entries(partitions: dict, sizes, repeats: int) -> list[dict]:
    """``[{"n", "repeats", "bands": {band: {"energy_share": {mean, sd}, "count": {mean, sd}}}}]`` per size.

    ``partitions``: ``{(size, repeat): SpectralPartition}``. The sd is over the repeats (ddof 1).
    """
    entries = []
    for size in sizes:
        parts = [partitions[(size, repeat)] for repeat in range(repeats)]
        bands = {}
        for index, name in enumerate(BANDS):
            shares = [float(part.shares[index]) for part in parts]
            counts = [float(np.sum(part.labels == index)) for part in parts]
            bands[name] = {"energy_share": _mean_sd(shares), "count": _mean_sd(counts)}
        entries.append({"n": int(size), "repeats": int(repeats), "bands": bands})
    return entries
