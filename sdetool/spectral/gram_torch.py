"""The streaming Gram on a torch device (a GPU): the statistics of :class:`sdetool.spectral.gram.GramAccumulator`.

Each block travels to the device in its stored dtype, is widened to float64 there, and every per-row
step (non-finite screening, norms, unit-row sum, normalisation, shift, column sum) and the float64
Gram update (a GEMM) run on the device; the host only reads. On an H100/H200 the float64 GEMM runs at
tens of TFLOP/s, so the analysis becomes bound by reading the file. The result is the same
:class:`~sdetool.spectral.gram.GramState` (same formulas, float64 throughout).

torch is imported when an accumulator is made, never at module import.
"""

from __future__ import annotations

import warnings

import numpy as np

from sdetool.spectral.gram import GramState, RowBookkeeping, raise_overflow, state_from_sums
from sdetool.spectral.rowsets import RowFingerprints, RowSample

_GOLDEN = -7046029254386353131  # 0x9E3779B97F4A7C15 as a signed 64-bit integer


class TorchGramAccumulator(RowBookkeeping):
    """Accumulates a :class:`~sdetool.spectral.gram.GramState` on ``device`` (e.g. ``"cuda:0"``).

    Parameters are those of :class:`~sdetool.spectral.gram.GramAccumulator` (``keep_rows`` excepted: small
    matrices need no device) plus the torch ``device``.
    """

    def __init__(self, dim: int, device: str, *, l2: bool = False, drop_nonfinite: bool = False,
                 sample_rows: int = 0, seed: int = 0) -> None:
        import torch

        self.dim, self.l2, self.drop_nonfinite = dim, l2, drop_nonfinite
        self._reset_bookkeeping()
        self._torch = torch
        self.device = torch.device(device)
        wide = {"dtype": torch.float64, "device": self.device}
        self._gram = torch.zeros((dim, dim), **wide)
        self._column_sum = torch.zeros(dim, **wide)
        self._unit_sum = torch.zeros(dim, **wide)
        self._zero_rows = torch.zeros((), dtype=torch.int64, device=self.device)
        self._shift = None
        self._n = 0
        self._sample = RowSample(sample_rows, dim, seed) if sample_rows else None
        self._fingerprints = RowFingerprints(dim)
        self._direction = torch.from_numpy(self._fingerprints.direction).to(self.device)

    def _to_device(self, chunk: np.ndarray):
        with warnings.catch_warnings():  # read-only memory maps: the host tensor is never written
            warnings.simplefilter("ignore", UserWarning)
            host = self._torch.from_numpy(np.ascontiguousarray(chunk))
        # copy=True: a float64 host block must not be modified in place (nor a read-only memory map).
        return host.to(device=self.device, dtype=self._torch.float64, copy=True)

    def update(self, chunk: np.ndarray, positions: np.ndarray | None = None) -> None:
        """Add a chunk of rows, shape ``(rows, d)``; ``positions`` as in ``GramAccumulator.update``."""
        torch = self._torch
        positions = self._begin(chunk, positions)
        if positions is None:
            return
        x = self._to_device(chunk)  # (rows, d) float64 on the device
        squares = (x * x).sum(dim=1)
        if not bool(torch.isfinite(squares).all()):  # one host sync per block
            finite = torch.isfinite(x).all(dim=1)
            bad = (~finite).cpu().numpy()
            overflow = torch.isfinite(squares).cpu().numpy() | bad
            if not overflow.all():
                raise_overflow(positions[~overflow])
            self._record_nonfinite(bad, positions)
            if self.failed:
                return
            x, squares, positions = x[finite], squares[finite], positions[~bad]
            if x.shape[0] == 0:
                return
        self._fingerprint(x, squares)
        norms = torch.sqrt(squares)
        nonzero = norms > 0
        self._zero_rows += (~nonzero).sum()
        inverse = torch.where(nonzero, 1.0 / torch.where(nonzero, norms, 1.0), 0.0)
        self._unit_sum += inverse @ x
        if self.l2:
            x *= inverse[:, None]
        if self._shift is None:
            self._shift = x.mean(dim=0)
        if self._sample is not None:
            chosen, keys = self._sample.candidates(positions)
            if chosen.size:
                index = torch.from_numpy(chosen).to(self.device)
                self._sample.add(keys, x.index_select(0, index).cpu().numpy())
        x -= self._shift
        self._column_sum += x.sum(dim=0)
        self._gram.addmm_(x.T, x)
        self._n += int(x.shape[0])

    def _fingerprint(self, x, squares) -> None:
        """Row fingerprints on the device (row-wise sums: equal rows, equal fingerprints), keys to the host."""
        projection = (x * self._direction).sum(dim=1) + 0.0
        keys = projection.view(self._torch.int64) ^ (squares.view(self._torch.int64) * _GOLDEN)
        self._fingerprints.add_keys(keys.cpu().numpy().view(np.uint64))

    def finalize(self) -> GramState:
        """The statistics of every row accumulated so far, as numpy arrays on the host."""
        def host(tensor):
            return tensor.cpu().numpy()

        return state_from_sums(
            self._n,
            None if self._shift is None else host(self._shift),
            host(self._column_sum),
            host(self._gram),
            host(self._unit_sum),
            counts=(int(self._zero_rows.item()), self._nonfinite, self._first_nonfinite),
            sample=self._sample,
            fingerprints=self._fingerprints.unique(),
        )
