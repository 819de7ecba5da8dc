"""Streaming sufficient statistics of a row set: count, mean, centred scatter (float64 Gram).

Rows arrive in chunks of any float dtype; every chunk is widened into one preallocated float64
buffer (never accumulated in float16/float32), shifted by a fixed vector (the first chunk's mean) so
that centering at the end does not cancel, and added to the Gram with a BLAS syrk. States of
disjoint row sets merge exactly (Chan, Golub & LeVeque 1979), which makes shards and distributed
ranks additive.

Pure numpy: no files, no printing.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np

from sdetool.errors import BadInputError
from sdetool.spectral.gramstate import GramState, row_state, state_from_sums
from sdetool.spectral.rowsets import RowFingerprints, RowSample, row_keys

_SUB_ROWS = 256  # rows per cache-resident slice: 256 x 768 float64 = 1.5 MiB


def raise_overflow(positions: np.ndarray) -> None:
    """Refuse finite rows whose squared norm overflows float64 (entries beyond about 1e154)."""
    rows = "1 row has" if positions.size == 1 else f"{positions.size} rows have"
    raise BadInputError(
        f"{rows} entries so large (about 1e154 or more) that their squares overflow float64 "
        f"(the first at 0-based row {int(positions.min())}); rescale the embeddings"
    )


class RowBookkeeping:
    """What every accumulator tracks besides sums: rows seen and rows holding NaN or Inf."""

    dim: int
    drop_nonfinite: bool

    def _reset_bookkeeping(self) -> None:
        if self.dim < 1:
            raise ValueError(f"dim must be >= 1, got {self.dim}")
        self._seen = 0
        self._nonfinite = 0
        self._first_nonfinite: int | None = None

    @property
    def failed(self) -> bool:
        """True once a non-finite row was seen and is not being dropped."""
        return self._nonfinite > 0 and not self.drop_nonfinite

    def _record_nonfinite(self, bad: np.ndarray, positions: np.ndarray) -> None:
        """Count the rows flagged in the boolean mask ``bad`` and remember the first position."""
        count = int(bad.sum())
        if count:
            first = int(positions[np.argmax(bad)])
            self._first_nonfinite = first if self._first_nonfinite is None else min(first, self._first_nonfinite)
            self._nonfinite += count

    def _count_nonfinite(self, rows: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Record the rows holding NaN or Inf; return the mask of the finite ones."""
        finite = np.isfinite(rows).all(axis=1)
        self._record_nonfinite(~finite, positions)
        return finite

    def _begin(self, chunk: np.ndarray, positions: np.ndarray | None) -> np.ndarray | None:
        """Validate a chunk and give its positions; None when there is nothing to accumulate."""
        if chunk.ndim != 2 or chunk.shape[1] != self.dim:
            raise ValueError(f"chunk must have shape (rows, {self.dim}), got {chunk.shape}")
        rows = chunk.shape[0]
        if rows == 0:
            return None
        if positions is None:
            positions = np.arange(self._seen, self._seen + rows, dtype=np.int64)
        self._seen += rows
        if self.failed:  # counting only: the result will not be used
            self._count_nonfinite(chunk, positions)
            return None
        return positions


@dataclass
class GramAccumulator(RowBookkeeping):
    """Accumulates a :class:`GramState` from row chunks.

    Parameters
    ----------
    dim : int
        Row dimension ``d``.
    l2 : bool
        Scale every row to unit norm before accumulating (zero rows stay zero).
    drop_nonfinite : bool
        Leave out rows holding NaN or Inf (they are still counted). When False, the first such row
        stops accumulation: only counting continues, and the caller decides what to report.
    keep_rows : bool
        Also keep the (widened, normalised) rows, for a direct SVD when ``n < d``.
    row_space : bool
        Keep the rows and nothing of size ``d x d`` (no Gram, no block Grams): for ``n <= d``, where the
        spectrum comes from the rows and memory is ``O(n d)`` instead of ``O(d^2)``. Implies ``keep_rows``.
    capacity : int
        Rows expected (0: unknown). Kept rows then go straight into one preallocated array instead of
        being concatenated at the end (one copy of ``n x d`` less).
    sample_rows : int
        Keep a uniform random sample of this many rows (0: none), for entry-wise noise estimates and the
        permutation null.
    seed : int
        Seed of that sample and of the jackknife blocks.
    blocks : int
        Also keep the sums of this many jackknife blocks (0: none); a row's block is a hash of its
        position. Memory ``blocks x d^2`` float64.

    Examples
    --------
    >>> acc = GramAccumulator(dim=3)
    >>> acc.update(np.eye(3, dtype=np.float32))
    >>> state = acc.finalize()
    >>> state.n, state.mean.tolist()
    (3, [0.3333333333333333, 0.3333333333333333, 0.3333333333333333])
    """

    dim: int
    l2: bool = False
    drop_nonfinite: bool = False
    keep_rows: bool = False
    sample_rows: int = 0
    seed: int = 0
    blocks: int = 0
    row_space: bool = False
    capacity: int = 0
    _buffer: np.ndarray = field(init=False, repr=False)
    _gram: np.ndarray = field(init=False, repr=False)
    _column_sum: np.ndarray = field(init=False, repr=False)
    _shift: np.ndarray | None = field(init=False, default=None, repr=False)

    def __post_init__(self) -> None:
        self._reset_bookkeeping()
        d = self.dim
        self._buffer = np.empty((0, d), dtype=np.float64)
        self._positions = np.empty(0, dtype=np.int64)
        self.keep_rows = self.keep_rows or self.row_space
        self._gram = None if self.row_space else np.zeros((d, d), dtype=np.float64)
        self._kept_blocks: list[np.ndarray] = []
        self._column_sum = np.zeros(d, dtype=np.float64)
        self._unit_sum = np.zeros(d, dtype=np.float64)
        self._n = 0
        self._zero_rows = 0
        self._kept: list[np.ndarray] = []
        self._store = np.empty((self.capacity, d)) if self.keep_rows and self.capacity else None
        self._stored = 0
        self._sample = RowSample(self.sample_rows, d, self.seed)
        self._fingerprints = RowFingerprints(d)
        self._block_n = np.zeros(self.blocks, dtype=np.int64)
        self._block_sum = np.zeros((self.blocks, d))
        self._block_gram = np.zeros((self.blocks, d, d)) if self.blocks and not self.row_space else None

    def _buffers(self, rows: int) -> tuple[np.ndarray, np.ndarray]:
        if self._buffer.shape[0] < rows:
            self._buffer = np.empty((rows, self.dim), dtype=np.float64)
            self._positions = np.empty(rows, dtype=np.int64)
        return self._buffer, self._positions

    def update(self, chunk: np.ndarray, positions: np.ndarray | None = None) -> None:
        """Add a chunk of rows, shape ``(rows, d)``, any real float dtype.

        ``positions`` are the rows' global indices (default: consecutive after the rows seen so
        far); they name the first non-finite row and seed the row sample, so results do not depend
        on how the rows were chunked or sharded.
        """
        positions = self._begin(chunk, positions)
        if positions is None:
            return
        rows = chunk.shape[0]
        buffer, kept_positions = self._buffers(rows)
        filled = 0
        for start in range(0, rows, _SUB_ROWS):
            stop = min(start + _SUB_ROWS, rows)
            filled += self._prepare(chunk[start:stop], positions[start:stop], buffer, kept_positions, filled)
            if self.failed:
                self._count_nonfinite(chunk[stop:], positions[stop:])
                return
        if filled == 0:
            return
        block = buffer[:filled]
        if self.keep_rows:
            if self._store is not None and not self._kept and self._stored + filled <= self._store.shape[0]:
                np.add(block, self._shift, out=self._store[self._stored:self._stored + filled])
                self._stored += filled
            else:
                self._kept.append(block + self._shift)
        if self.sample_rows:
            chosen, keys = self._sample.candidates(kept_positions[:filled])
            self._sample.add(keys, block[chosen] + self._shift)
        if self.row_space:  # the rows are all there is: remember each one's jackknife block
            if self.blocks:
                self._kept_blocks.append(self._block_index(kept_positions[:filled]))
        elif self.blocks:
            self._add_to_blocks(block, kept_positions[:filled])
        else:
            self._gram += block.T @ block  # numpy dispatches A.T @ A to BLAS syrk
        self._n += filled

    def _block_index(self, positions: np.ndarray) -> np.ndarray:
        from sdetool.spectral.jackknife import block_of

        return block_of(row_keys(positions, self.seed + 0x1A77), self.blocks)

    def _add_to_blocks(self, block: np.ndarray, positions: np.ndarray) -> None:
        """Add shifted rows to the sums of their jackknife blocks (the total is their sum)."""
        index = self._block_index(positions)
        order = np.argsort(index, kind="stable")
        bounds = np.searchsorted(index[order], np.arange(self.blocks + 1))
        ordered = block[order]
        for number in range(self.blocks):
            rows = ordered[bounds[number]:bounds[number + 1]]
            if rows.shape[0]:
                self._block_gram[number] += rows.T @ rows
                self._block_sum[number] += rows.sum(axis=0)
                self._block_n[number] += rows.shape[0]

    def _prepare(self, part: np.ndarray, positions: np.ndarray, buffer: np.ndarray,
                 kept_positions: np.ndarray, filled: int) -> int:
        """Widen, screen, normalise and shift a cache-sized slice of rows into ``buffer[filled:]``.

        Every per-row pass happens here while the slice is in cache; only the syrk reads the whole
        block from memory again. Returns the number of rows written.
        """
        count = part.shape[0]
        rows = buffer[filled : filled + count]
        np.copyto(rows, part, casting="unsafe")
        squares = np.einsum("ij,ij->i", rows, rows)
        if not np.isfinite(squares).all():  # NaN/Inf somewhere, or |x| > 1e154 overflowing the square
            finite = self._count_nonfinite(rows, positions)
            overflow = ~np.isfinite(squares) & finite
            if overflow.any():
                raise_overflow(positions[overflow])
            if self.failed:
                return 0
            count = int(finite.sum())
            rows[:count] = rows[finite]
            rows, squares, positions = rows[:count], squares[finite], positions[finite]
        kept_positions[filled : filled + count] = positions
        self._fingerprints.add(rows, squares)
        norms = np.sqrt(squares)
        nonzero = norms > 0
        self._zero_rows += int(count - nonzero.sum())
        inverse = np.divide(1.0, norms, out=np.zeros_like(norms), where=nonzero)
        self._unit_sum += inverse @ rows
        if self.l2:
            rows *= inverse[:, None]
        if self._shift is None:
            self._shift = rows.mean(axis=0) if count else None
        if count:
            rows -= self._shift
            self._column_sum += rows.sum(axis=0)
        return count

    def finalize(self) -> GramState:
        """The statistics of every row accumulated so far."""
        if self.row_space:
            return self._row_space_state()
        rows = None
        if self.keep_rows:
            rows = self._kept_rows()
        gram = self._block_gram.sum(axis=0) if self.blocks else self._gram
        state = state_from_sums(
            self._n, self._shift, self._column_sum, gram, self._unit_sum,
            counts=(self._zero_rows, self._nonfinite, self._first_nonfinite),
            sample=self._sample if self.sample_rows else None, rows=rows,
        )
        return replace(state, fingerprints=self._fingerprints.unique(), blocks=self._block_states())

    def _kept_rows(self) -> np.ndarray:
        """Every kept row, in one array (the preallocated one when the rows fitted it)."""
        parts = ([self._store[:self._stored]] if self._store is not None else []) + self._kept
        if len(parts) == 1:
            return parts[0]
        rows = np.concatenate(parts) if parts else np.empty((0, self.dim))
        self._store, self._stored, self._kept = rows, rows.shape[0], []
        return rows

    def _row_space_state(self) -> GramState:
        """The kept rows as the state (grouped by jackknife block, each block a range of them)."""
        rows = self._kept_rows()
        blocks = None
        if self.blocks:
            index = np.concatenate(self._kept_blocks) if self._kept_blocks else np.empty(0, dtype=np.int64)
            order = np.argsort(index, kind="stable")
            rows = rows[order]
            self._store, self._stored, self._kept, self._kept_blocks = rows, rows.shape[0], [], [index[order]]
            bounds = np.searchsorted(index[order], np.arange(self.blocks + 1))
            blocks = tuple(replace(row_state(rows[a:b], np.zeros(self.dim), counts=(0, 0, None)), rows=None,
                                   row_range=(int(a), int(b))) for a, b in zip(bounds[:-1], bounds[1:]))
        mean = self._shift + self._column_sum / self._n if self._n else None  # from the shifted sums
        state = row_state(rows, self._unit_sum, counts=(self._zero_rows, self._nonfinite, self._first_nonfinite),
                          sample=self._sample if self.sample_rows else None, mean=mean)
        return replace(state, fingerprints=self._fingerprints.unique(), blocks=blocks)

    def _block_states(self) -> tuple | None:
        """Each jackknife block's statistics (only ``n``, ``mean`` and ``scatter`` are kept)."""
        if not self.blocks:
            return None
        zeros = np.zeros(self.dim)
        return tuple(state_from_sums(int(self._block_n[k]), self._shift, self._block_sum[k], self._block_gram[k], zeros,
                                     counts=(0, 0, None)) for k in range(self.blocks))


def memory_needed(n: int, d: int, *, row_space: bool, blocks: int = 0, vectors: bool = False,
                  block_rows: int = 0) -> int:
    """Bytes an analysis of ``n x d`` rows needs at its peak, for the path chosen from the shape.

    Row space (``n <= d``): the kept float64 rows twice (the chunks and their concatenation), the centred
    copy LAPACK overwrites, the vectors' row Gram and products when they are wanted, a jackknife replicate's rows, and the
    SVD's ``n x n`` work. Gram: the ``d x d`` float64 Gram, one per jackknife block, and the copy ``eigh``
    works on (and its vectors). Both: a read chunk (at most ``n`` rows) and its float64 buffer.
    """
    word = 8
    read = 2 * min(block_rows, n) * d * word
    if row_space:
        small = min(n, d)
        copies = 3 + int(vectors) + int(blocks > 0)
        return read + copies * n * d * word + 4 * small * small * word
    return read + (1 + blocks + 1 + int(vectors)) * d * d * word


def largest_rows_fitting(d: int, room: int, **plan) -> int:
    """The largest ``n <= d`` whose row-space analysis fits in ``room`` bytes (0 when not even 2 rows do)."""
    low, high = 0, d
    while low < high:
        middle = (low + high + 1) // 2
        if memory_needed(middle, d, row_space=True, **plan) <= room:
            low = middle
        else:
            high = middle - 1
    return low if low >= 2 else 0
