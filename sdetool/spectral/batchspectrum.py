"""The spectrum of one training batch and its strong / weak / noise partition, tracked across steps.

Pure torch and numpy (plus :mod:`sdetool.spectral.spectrum`, the partition ``analyze`` runs). Used by
:mod:`sdetool.finetune.sde`; METHOD.md section 7, steps 1 and 2.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from sdetool.spectral import nulls, spectrum
from sdetool.spectral.nulls import NullInputs

STRONG, WEAK, NOISE = 0, 1, 2


@dataclass
class BatchSpectrum:
    """Spectrum of one centred batch ``C = F - mean`` (B, d): ``p = min(B, d)`` components, descending.

    ``values`` are the singular values as ``s_i = u_i^T C v_i`` with ``u_i``, ``v_i`` detached: the
    gradient ``u_i v_i^T`` of a singular value (exact for distinct values, and bounded whatever the
    gaps), with no ``1 / s`` or ``1 / (s_i^2 - s_j^2)`` terms, so rank-deficient and repeated spectra
    are safe. Components below the numerical floor have ``u_i`` or ``v_i`` set to zero (value 0, no
    gradient). ``left`` (B, p) and ``right`` (d, p) are the singular vectors.
    """

    centred: object
    values: object
    left_vectors: object
    right_vectors: object

    @property
    def energies(self):
        """``s_i^2`` (differentiable)."""
        return self.values * self.values

    @property
    def left(self) -> bool:
        """Whether the decomposition went through the ``B x B`` Gram matrix (``B <= d``)."""
        return self.centred.shape[0] <= self.centred.shape[1]

    @property
    def basis(self):
        """The singular vectors on the Gram side: left (B, p) when ``B <= d``, else right (d, p)."""
        return self.left_vectors if self.left else self.right_vectors

    @property
    def singular_values(self) -> np.ndarray:
        return np.abs(self.values.detach().double().cpu().numpy())

    def project(self, coefficients):
        """``U diag(c * s) V^T`` for per-component relative changes ``c`` (p,), detached."""
        scale = coefficients * self.values.detach()
        return (self.left_vectors * scale) @ self.right_vectors.T

    def top_right_vectors(self, k: int):
        """The top ``k`` right singular vectors (d, k), detached."""
        return self.right_vectors[:, :k]

    def derivative(self, gradient):
        """``dL/ds_i = u_i^T G v_i`` for a gradient ``G = dL/dF`` (B, d)."""
        return ((self.left_vectors.T @ gradient) * self.right_vectors.T).sum(dim=1)


def _unit_columns(matrix, floor_ratio: float = 1e-6):
    """Columns scaled to unit length; columns shorter than ``floor_ratio`` times the longest become 0."""
    norms = matrix.norm(dim=0)
    keep = norms > floor_ratio * norms.max().clamp_min(1e-30)
    return matrix / norms.clamp_min(1e-30) * keep


class SpectrumError(ValueError):
    """The batch has no usable spectrum (its Gram matrix is not finite): training has diverged."""


def batch_spectrum(features) -> BatchSpectrum:
    """Singular values and vectors of the centred batch, from the smaller Gram matrix (float32, autocast off).

    ``eigh`` of ``C C^T`` (``B <= d``) or ``C^T C`` in float64 (``C`` scaled by its largest entry),
    gives one side's vectors; the other side is ``C^T u_i`` (or ``C v_i``) normalised, in float64 too.
    A float32 Gram loses the small values: near the ``1e-3 s_1`` floor they were off by 37-49 % when
    ``s_1 / median`` was about 1100; in float64 they match a float64 SVD to 1e-4. A Gram matrix that is
    not finite raises :class:`SpectrumError`. The values ``s_i = u_i^T C v_i`` stay differentiable
    through the float32 ``C``.
    """
    import torch

    with torch.autocast(features.device.type, enabled=False):
        centred = features.float() - features.float().mean(dim=0, keepdim=True)
        left = centred.shape[0] <= centred.shape[1]
        detached = centred.detach().double()
        scaled = detached / detached.abs().max().clamp_min(1e-300)
        gram = scaled @ scaled.T if left else scaled.T @ scaled
        if not bool(torch.isfinite(gram).all()):
            raise SpectrumError("the batch's Gram matrix is not finite")
        vectors = _eigenvectors(gram).flip(dims=(1,))  # descending
        other = _unit_columns(detached.T @ vectors if left else detached @ vectors)
        u, v = ((vectors, other) if left else (other, vectors))
        u, v = u.float(), v.float()
        values = ((u.T @ centred) * v.T).sum(dim=1)  # s_i = u_i^T C v_i
    return BatchSpectrum(centred, values, u, v)


def _eigenvectors(gram):
    """Eigenvectors of a symmetric float64 matrix, ascending; :class:`SpectrumError` when LAPACK fails.

    On a GPU too: cuSOLVER's float64 ``eigh`` of a 256 x 256 matrix took 2.2 ms on an H200 against
    4.7 ms in float32 (and 3.0 ms on its host CPU).
    """
    import torch

    try:
        return torch.linalg.eigh(gram)[1]
    except torch.linalg.LinAlgError as error:
        raise SpectrumError(f"eigh failed on the batch's Gram matrix ({error})") from None


BATCH_PERMUTATIONS = 10  # column permutations of a batch for the permutation null


def batch_null_inputs(spec: BatchSpectrum, null: str, generator: np.random.Generator) -> tuple[NullInputs, int]:
    """What the null needs of one batch, and its number of distinct rows.

    A batch of texts often repeats captions (the built-in data has 60 distinct ones): repeated rows add
    no direction, so the null is that of the distinct rows (``repetition = B / distinct``).
    """
    import torch

    centred = spec.centred.detach()
    rows = centred.shape[0]
    distinct = int(torch.unique(centred, dim=0).shape[0])
    repetition = rows / max(distinct, 1)
    if null == "mp":
        return NullInputs(repetition=repetition), distinct
    matrix = centred.double().cpu().numpy()
    effective = max(distinct - 1, 1)
    variances = np.einsum("ij,ij->j", matrix, matrix) / (repetition * effective)
    right = spec.right_vectors.detach().double().cpu().numpy()
    tops, sample = None, 0
    if null == "permutation":
        unique = np.unique(matrix, axis=0)
        tops = nulls.permuted_top_values(unique, BATCH_PERMUTATIONS, int(generator.integers(1 << 31)))
        sample = unique.shape[0]
    return NullInputs(variances=variances, vectors=lambda k: right[:, :k], permuted_tops=tops, permuted_rows=sample,
                      repetition=repetition), distinct


class BandTracker:
    """Per-step partition of a batch spectrum with EMA-smoothed noise edge and strong threshold.

    The partition itself is :func:`sdetool.spectral.spectrum.partition_spectrum`, the code ``analyze`` runs.
    Values below ``floor_ratio * s_1`` are numerically zero (float32 Gram) and go to the noise band.
    A batch whose partition is degenerate (fewer than two nonzero values, or no noise bulk for
    ``mppca``) leaves the smoothed edge and threshold as they were; before any usable batch every
    component is noise.
    """

    def __init__(self, options: spectrum.PartitionOptions, momentum: float = 0.9, floor_ratio: float = 1e-3) -> None:
        self.options = options
        self.momentum = momentum
        self.floor_ratio = floor_ratio
        self.edge: float | None = None
        self.threshold: float | None = None

    def update(self, singular_values: np.ndarray, n: int, d: int, inputs: NullInputs | None = None,
               distinct: int | None = None) -> np.ndarray:
        """Band labels (0 strong, 1 weak, 2 noise) of ``singular_values`` of a centred ``n x d`` batch.

        ``inputs`` are what the null needs (:func:`batch_null_inputs`); ``distinct`` the batch's distinct rows.
        """
        values = np.asarray(singular_values, dtype=np.float64)
        floor = self.floor_ratio * float(values[0]) if values.size else 0.0
        kept = values[:min(n - 1, d)]  # centring removes one dimension, as in analyze
        effective = max(min(distinct or n, n) - 1, 2)
        part = spectrum.partition_spectrum(kept, effective, d, self.options, floor=floor, inputs=inputs)
        if part.partitioned:  # a degenerate batch (rank < 2, no noise bulk) has no edge to smooth in
            keep = self.momentum if self.edge is not None else 0.0
            self.edge = keep * (self.edge or 0.0) + (1 - keep) * part.edge
            self.threshold = keep * (self.threshold or 0.0) + (1 - keep) * part.threshold
        if self.edge is None:
            return np.full(values.shape, NOISE, dtype=np.int8)
        labels = spectrum.partition(values, self.edge, self.threshold)
        labels[values <= floor] = NOISE
        return labels

    def state(self) -> dict:
        return {"edge": self.edge, "threshold": self.threshold}

    def load(self, state: dict) -> None:
        self.edge, self.threshold = state.get("edge"), state.get("threshold")


def label_batch(tracker: BandTracker, spec: BatchSpectrum, generator: np.random.Generator) -> np.ndarray:
    """Band labels of one batch's spectrum under the tracker's null (its inputs computed from the batch): the
    one batch partition that finetune's loss, its logging and :class:`sdetool.monitor.BandMonitor` share."""
    inputs, distinct = batch_null_inputs(spec, tracker.options.null, generator)
    return tracker.update(spec.singular_values, *spec.centred.shape, inputs=inputs, distinct=distinct)


def band_shares(energies, labels) -> list[float]:
    """Energy share of the strong, weak and noise bands of one batch (power energy)."""
    values = energies.detach().double().cpu().numpy()
    return [float(x) for x in spectrum.energy_shares(np.sqrt(np.clip(values, 0, None)), np.asarray(labels))]


def band_entry(spec: BatchSpectrum, labels) -> dict:
    """One batch's bands as the monitor records them: per band its count and energy share, and the effective rank."""
    from sdetool.spectral import metrics

    shares = band_shares(spec.energies, labels)
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=len(spectrum.BANDS))
    entry: dict = {band: {"count": int(counts[i]), "energy_share": float(shares[i])}
                   for i, band in enumerate(spectrum.BANDS)}
    entry["effective_rank"] = float(metrics.effective_rank(spec.singular_values))
    return entry
