"""Matrices of known spectral structure: planted spikes in Gaussian noise, optionally inside a cone.

Used as ground truth by the tests and as the built-in example ``builtin:spiked`` (the README's
offline demo until real models land). Pure numpy, seeded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from sdetool.errors import UnknownKeyError
from sdetool.spectral import rmt


@dataclass(frozen=True)
class PlantedSpikes:
    """``X = U diag(strengths sigma sqrt(q)) V^T + sigma Z + 1 c^T``.

    Attributes
    ----------
    matrix : ndarray, shape (n, d)
    strengths : ndarray, shape (r,)
        Spike strengths in units of ``sigma sqrt(q)`` (``q = max(n, d)``), descending.
    sigma : float
        Noise standard deviation per entry.
    left, right : ndarray, shapes (n, r) and (d, r)
        Orthonormal spike directions; ``left`` is orthogonal to the all-ones vector, so centering
        the matrix leaves the spikes intact.
    offset : ndarray, shape (d,)
        The common row offset ``c`` (the cone's axis); zeros when none was asked for.
    """

    matrix: np.ndarray
    strengths: np.ndarray
    sigma: float
    left: np.ndarray
    right: np.ndarray
    offset: np.ndarray

    @property
    def detectable(self) -> np.ndarray:
        """Which spikes are above the BBP threshold ``beta^(1/4)``."""
        n, d = self.matrix.shape
        return self.strengths > rmt.bbp_threshold(min(n, d) / max(n, d))


def _orthonormal(rng: np.random.Generator, rows: int, cols: int, avoid_ones: bool) -> np.ndarray:
    block = rng.standard_normal((rows, cols))
    if avoid_ones:
        block -= block.mean(axis=0)
    basis, _ = np.linalg.qr(block)
    return basis


def planted_spikes(
    n: int,
    d: int,
    strengths,
    *,
    sigma: float = 1.0,
    offset_norm: float = 0.0,
    seed: int = 0,
    dtype=np.float64,
) -> PlantedSpikes:
    """Draw ``n x d`` Gaussian noise of std ``sigma`` with rank-one spikes of the given strengths.

    Parameters
    ----------
    n, d : int
        Shape; the number of spikes must be below ``min(n, d)``.
    strengths : array_like, shape (r,)
        Spike strengths ``x`` in units of ``sigma sqrt(max(n, d))``; detectable when above
        ``beta^(1/4)`` (BBP), where the observed singular value is ``sigma sqrt(q) y(x)``.
    sigma : float
        Noise standard deviation.
    offset_norm : float
        Norm of a common offset added to every row (a cone around a random axis).
    seed : int
    dtype : numpy dtype of the returned matrix.
    """
    strengths = np.sort(np.asarray(strengths, dtype=np.float64))[::-1]
    rank = strengths.size
    if rank >= min(n, d):
        raise ValueError(f"need fewer spikes ({rank}) than min(n, d) = {min(n, d)}")
    rng = np.random.default_rng(seed)
    left = _orthonormal(rng, n, rank, avoid_ones=True)
    right = _orthonormal(rng, d, rank, avoid_ones=False)
    scale = sigma * math.sqrt(max(n, d))
    matrix = sigma * rng.standard_normal((n, d))
    matrix += (left * (strengths * scale)) @ right.T
    axis = rng.standard_normal(d)
    offset = axis / np.linalg.norm(axis) * offset_norm
    matrix += offset
    return PlantedSpikes(matrix.astype(dtype, copy=False), strengths, float(sigma), left, right, offset)


# Built-in example: 20,000 x 384 (a MiniLM-sized embedding), 32 spikes from clearly strong to
# barely detectable, inside a cone (offset 4x the noise norm per row), stored as float32.
_SPIKED = {"n": 20000, "d": 384, "spikes": 32, "strongest": 6.0, "weakest": 0.45, "offset": 80.0, "seed": 7}
BUILTINS = {"spiked": "32 planted spikes in Gaussian noise inside a cone, 20000 x 384 float32"}


def builtin_matrix(name: str) -> tuple[np.ndarray, dict]:
    """The built-in example matrix ``name`` and its attributes (:mod:`sdetool.io.sources` reads it as ``builtin:NAME``)."""
    if name != "spiked":
        listed = ", ".join(f"builtin:{key}" for key in BUILTINS)
        raise UnknownKeyError(f"builtin:{name}: no such built-in example; available: {listed}")
    spec = _SPIKED
    strengths = np.geomspace(spec["strongest"], spec["weakest"], spec["spikes"])
    planted = planted_spikes(
        spec["n"], spec["d"], strengths, offset_norm=spec["offset"], seed=spec["seed"], dtype=np.float32
    )
    attrs = {
        "modality": "synthetic",
        "model": "builtin:spiked",
        "normalized": False,
        "description": BUILTINS["spiked"],
        "planted_spikes": spec["spikes"],
        "planted_detectable": int(planted.detectable.sum()),
        "noise_sigma": planted.sigma,
    }
    return planted.matrix, attrs
