"""Band views of the other seeds (METHOD.md section 6): FITMM SVD bands and Prism spatial-frequency bands.

Pure numpy: arrays in, arrays or small frozen results out.

*SVD bands* (FITMM, arXiv 2601.22498) split the ``p`` singular components, ordered by singular value,
into ``K`` contiguous bands: equal-count by default, or at explicit 0-based start indices. A band's
reconstruction is ``X_k = U_k S_k V_k^T``; the ``K`` reconstructions sum to ``X``.

*Spatial bands* (the Prism hypothesis, Fan et al. 2025) split the 2-D spatial spectrum of a patch-token
grid ``Z`` (h, w, c): orthonormal FFT over (h, w), power ``|Z^|^2`` summed over channels, radial frequency
normalised so that the grid's highest frequency is 1, and ``K`` radial bands of equal width. Hard masks
are 0/1; smooth masks are raised-cosine crossfades whose squares sum to one at every frequency, so the
band energies always sum to the grid's energy (Parseval). The iterative split ``r_0 = z, b_k = P_k(r_k),
r_{k+1} = r_k - b_k`` (UAE's frequency-band projector) gives the band components themselves; the last
band takes the whole residual, so the components sum to ``z``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import fft as sfft

from sdetool.spectral import metrics

# --- SVD bands (FITMM) -----------------------------------------------------------------------------


def band_edges(components: int, bands: int | None = None, starts=None) -> np.ndarray:
    """Boundaries ``[0, e_1, ..., e_{K-1}, p]`` of ``K`` contiguous bands of ``p`` components.

    Parameters
    ----------
    components : int
        ``p``, the number of singular components.
    bands : int, optional
        ``K`` equal-count bands (sizes differ by at most one; the leading bands take the extra ones).
    starts : sequence of int, optional
        Instead of ``bands``: the 0-based component index at which each band after the first starts,
        strictly increasing inside ``(0, p)``.

    Raises
    ------
    ValueError
        ``K < 1``, ``K > p``, or starts out of range or not increasing (the message gives the limit).
    """
    if (bands is None) == (starts is None):
        raise ValueError("give either the number of bands or their start indices")
    if components < 1:
        raise ValueError(f"there are no components to split (p = {components})")
    if starts is None:
        if not 1 <= bands <= components:
            raise ValueError(f"the number of bands must be between 1 and p = {components}, got {bands}")
        sizes = np.full(bands, components // bands)
        sizes[: components % bands] += 1
        return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    starts = [int(s) for s in starts]
    if any(not 0 < s < components for s in starts):
        raise ValueError(f"band start indices must lie between 1 and {components - 1} (0-based), got {starts}; "
                         f"p = {components}")
    if any(b <= a for a, b in zip(starts, starts[1:])):
        raise ValueError(f"band start indices must be strictly increasing, got {starts}")
    return np.array([0, *starts, components], dtype=np.int64)


@dataclass(frozen=True)
class SvdBand:
    """One SVD band: components ``first..last`` (0-based, inclusive) and what they hold."""

    index: int
    first: int
    last: int
    energy_share: float
    effective_rank: float
    largest: float
    smallest: float

    @property
    def count(self) -> int:
        return self.last - self.first + 1

    def to_dict(self) -> dict:
        return {"band": self.index, "first_index": self.first + 1, "last_index": self.last + 1, "count": self.count,
                "energy_share": self.energy_share, "effective_rank": self.effective_rank,
                "singular_value_max": self.largest, "singular_value_min": self.smallest}


def svd_bands(singular_values, edges, energy: str = "power") -> tuple[SvdBand, ...]:
    """Per band: energy share, effective rank inside the band (Roy & Vetterli), singular-value range.

    Parameters
    ----------
    singular_values : array_like, shape (p,)
        Descending.
    edges : array_like of int, shape (K + 1,)
        From :func:`band_edges`.
    energy : {"power", "amplitude"}
        Shares of ``sum s^2`` or of ``sum s``.

    Returns
    -------
    tuple of SvdBand
        A band without energy has a NaN effective rank (no distribution inside it); every share is NaN
        when the whole spectrum has no energy (0 / 0).
    """
    if energy not in ("power", "amplitude"):
        raise ValueError(f"energy must be 'power' or 'amplitude', got {energy!r}")
    values = np.asarray(singular_values, dtype=np.float64)
    weights = values**2 if energy == "power" else values
    total = weights.sum()
    result = []
    for index, (start, stop) in enumerate(zip(edges[:-1], edges[1:])):
        inside = values[start:stop]
        share = float(weights[start:stop].sum() / total) if total > 0 else float("nan")
        rank = metrics.effective_rank(inside) if inside.sum() > 0 else float("nan")
        result.append(SvdBand(index, int(start), int(stop) - 1, share, rank, float(inside[0]), float(inside[-1])))
    return tuple(result)


@dataclass(frozen=True)
class BandAlignment:
    """Cross-modal alignment inside one SVD band of two paired sets of the same dimension."""

    index: int
    dimensions: int  # min(m_a, m_b): the band directions above the numerical rank, of the set that has fewer
    subspace_overlap: float | None
    hellinger: float

    def to_dict(self) -> dict:
        overlap = self.subspace_overlap
        return {"band": self.index, "dimensions": self.dimensions, "subspace_overlap": overlap,
                "subspace_distance": None if overlap is None else 1.0 - overlap, "hellinger": self.hellinger}


def band_alignment(values_a, vectors_a: np.ndarray, values_b, vectors_b: np.ndarray, edges) -> tuple[BandAlignment, ...]:
    """Per band: subspace overlap of the two sets' right singular vectors, Hellinger of the in-band spectra.

    Parameters
    ----------
    values_a, values_b : array_like, shape (p,)
        Descending singular values of both sets (the same ``p``).
    vectors_a, vectors_b : ndarray, shape (d, r_a) and (d, r_b)
        Their leading right singular vectors; ``r`` may stop short of ``p`` (numerically zero
        components have no meaningful direction): each set contributes the band directions it has.
    edges : array_like of int, shape (K + 1,)

    Returns
    -------
    tuple of BandAlignment
        ``subspace_overlap = ||V_a,k^T V_b,k||_F^2 / min(m_a, m_b)`` with ``m_a``, ``m_b`` the band-k
        directions each set has (1: the smaller subspace lies inside the larger, 0: orthogonal; about
        ``max(m_a, m_b) / d`` for random subspaces; None when a set has none), and the Hellinger distance
        of the normalised in-band power spectra (METHOD.md section 5, inside one band).
    """
    if vectors_a.shape[0] != vectors_b.shape[0]:
        raise ValueError(f"the sets must have the same dimension, got {vectors_a.shape[0]} and {vectors_b.shape[0]}")
    values_a, values_b = np.asarray(values_a, np.float64), np.asarray(values_b, np.float64)
    result = []
    for index, (start, stop) in enumerate(zip(edges[:-1], edges[1:])):
        band_a = vectors_a[:, start:min(int(stop), vectors_a.shape[1])]
        band_b = vectors_b[:, start:min(int(stop), vectors_b.shape[1])]
        shared = min(band_a.shape[1], band_b.shape[1])
        overlap = None
        if shared:
            angles = metrics.principal_angles(band_a, band_b)
            overlap = float(np.sum(np.cos(angles) ** 2) / shared)
        hellinger = metrics.hellinger_spectral_distance(values_a[start:stop], values_b[start:stop])
        result.append(BandAlignment(index, shared, overlap, hellinger))
    return tuple(result)


def svd_band_reconstructions(matrix, bands: int | None = None, starts=None) -> np.ndarray:
    """Band reconstructions ``X_k = U_k S_k V_k^T`` of a matrix held in memory; they sum to ``X``.

    Parameters
    ----------
    matrix : array_like, shape (n, d)
        Used as given (centre it first for the bands of ``analyze``'s default ``--center``).
    bands, starts :
        As in :func:`band_edges`, over ``p = min(n, d)`` components.

    Returns
    -------
    ndarray, shape (K, n, d), float64
        ``components.sum(axis=0)`` equals ``matrix`` to float64 rounding.
    """
    rows = np.asarray(matrix, dtype=np.float64)
    if rows.ndim != 2 or 0 in rows.shape:
        raise ValueError(f"matrix must be a non-empty 2-D array (n, d), got shape {rows.shape}")
    left, values, right = np.linalg.svd(rows, full_matrices=False)
    edges = band_edges(values.size, bands, starts)
    return np.stack([(left[:, a:b] * values[a:b]) @ right[a:b] for a, b in zip(edges[:-1], edges[1:])])


# --- spatial-frequency bands (Prism) ---------------------------------------------------------------


def radial_frequency(height: int, width: int, one_sided: bool = False) -> np.ndarray:
    """Radial spatial frequency of every FFT bin of an ``height x width`` grid, normalised to [0, 1].

    Frequencies are in cycles per token on both axes (square patches), so the radius is isotropic; 1 is
    the grid's highest radial frequency (the corner, ``(1/2, 1/2)`` on even grids). A 1 x 1 grid has
    only the zero frequency. ``one_sided`` gives the bins of ``rfft2`` (last axis halved).

    Returns
    -------
    ndarray, shape (height, width) or (height, width // 2 + 1)
    """
    rows = np.abs(np.fft.fftfreq(height))
    columns = np.fft.rfftfreq(width) if one_sided else np.abs(np.fft.fftfreq(width))
    radius = np.hypot(rows[:, None], columns[None, :])
    top = np.hypot(rows.max(), np.abs(np.fft.fftfreq(width)).max())
    return radius / top if top > 0 else radius


def max_spatial_bands(height: int, width: int) -> int:
    """The most equal-width radial bands a grid supports: the largest K for which every K' <= K leaves no
    hard band without a frequency bin (a 1 x 1 grid supports one band, a 7 x 7 grid eight)."""
    radius = radial_frequency(height, width).ravel()
    limit = 1
    for bands in range(2, radius.size + 1):
        index = _hard_band(radius, bands)
        if np.unique(index).size < bands:
            break
        limit = bands
    return limit


def _hard_band(radius: np.ndarray, bands: int) -> np.ndarray:
    """``floor(r K)`` clipped to ``K - 1``; a radius on a boundary (up to rounding: 3/4 computes as
    0.74999...) belongs to the band above it."""
    return np.minimum(np.floor(radius * bands + 1e-9).astype(np.int64), bands - 1)


def band_masks(radius: np.ndarray, bands: int, smooth: bool = False) -> np.ndarray:
    """Amplitude masks of ``K`` equal-width radial bands over ``[0, 1]``, shape ``(K, *radius.shape)``.

    Hard masks: band k holds ``k/K <= r < (k+1)/K`` (the last band includes 1). Smooth masks crossfade
    over ``|r - k/K| < 1/(4K)`` around each inner boundary with ``cos`` / ``sin`` of a linear ramp, so
    ``sum_k M_k^2 = 1`` everywhere and each band is flat over the middle half of its width.
    """
    if bands < 1:
        raise ValueError(f"the number of bands must be >= 1, got {bands}")
    radius = np.asarray(radius, dtype=np.float64)
    if not smooth:
        index = _hard_band(radius, bands)
        return (index[None] == np.arange(bands).reshape(-1, *([1] * radius.ndim))).astype(np.float64)
    half = 0.25 / bands
    masks = np.ones((bands, *radius.shape))
    for k in range(1, bands):  # the crossfade between band k-1 and band k
        ramp = np.clip((radius - (k / bands - half)) / (2 * half), 0.0, 1.0)
        below, above = radius < k / bands - half, radius > k / bands + half
        lower = np.where(below, 1.0, np.where(above, 0.0, np.cos(0.5 * np.pi * ramp)))
        masks[k - 1] *= lower
        masks[k:] *= np.where(below, 0.0, np.where(above, 1.0, np.sin(0.5 * np.pi * ramp)))[None]
    return masks


def _rfft_weights(width: int) -> np.ndarray:
    """How often each ``rfft`` column stands in the full spectrum: 1 for DC (and Nyquist), else 2."""
    weights = np.full(width // 2 + 1, 2.0)
    weights[0] = 1.0
    if width % 2 == 0:
        weights[-1] = 1.0
    return weights


def band_weights(height: int, width: int, bands: int, smooth: bool = False) -> np.ndarray:
    """Energy weights over the ``rfft2`` bins, shape (K, h * (w // 2 + 1)): squared masks x bin multiplicity.

    ``band_energies`` is then one matrix product per chunk of grids.
    """
    masks = band_masks(radial_frequency(height, width, one_sided=True), bands, smooth)
    return (masks**2 * _rfft_weights(width)).reshape(bands, -1)


def band_energies(grids, weights: np.ndarray) -> np.ndarray:
    """Energy per spatial band of each grid in a chunk.

    Parameters
    ----------
    grids : array_like, shape (m, h, w, c)
        Real token grids (float16 widens to float32; float64 stays float64).
    weights : ndarray, shape (K, h * (w // 2 + 1))
        From :func:`band_weights` for this ``h, w``.

    Returns
    -------
    ndarray, shape (m, K), float64
        Row sums equal ``sum(grid ** 2)`` of each grid (Parseval; orthonormal FFT).
    """
    grids = np.asarray(grids)
    dtype = np.float64 if grids.dtype == np.float64 else np.float32
    spectrum = sfft.rfft2(grids.astype(dtype, copy=False), axes=(1, 2), norm="ortho", workers=-1)
    power = (spectrum.real**2 + spectrum.imag**2).sum(axis=3)  # (m, h, w // 2 + 1)
    return power.reshape(power.shape[0], -1).astype(np.float64) @ weights.T


def split_bands(grid, bands: int, smooth: bool = False) -> np.ndarray:
    """The iterative band split of a grid: ``r_0 = z, b_k = P_k(r_k), r_{k+1} = r_k - b_k``.

    ``P_k`` keeps band k of the spectrum (multiplies by its amplitude mask). The last band is the whole
    residual ``r_{K-1}``, so the components sum to ``z``; with hard masks it equals ``P_{K-1}(r_{K-1})``.

    Parameters
    ----------
    grid : array_like, shape (h, w, c), or (m, h, w, c) for a batch of grids

    Returns
    -------
    ndarray, shape (K, *grid.shape), float64
    """
    residual = np.asarray(grid, dtype=np.float64)
    if residual.ndim not in (3, 4):
        raise ValueError(f"a token grid must have shape (h, w, c) or (m, h, w, c), got {residual.shape}")
    height, width = residual.shape[-3:-1]
    masks = band_masks(radial_frequency(height, width), bands, smooth)
    components = []
    for k in range(bands - 1):
        spectrum = sfft.fft2(residual, axes=(-3, -2), norm="ortho")
        component = sfft.ifft2(spectrum * masks[k][:, :, None], axes=(-3, -2), norm="ortho").real
        components.append(component)
        residual = residual - component
    components.append(residual)
    return np.stack(components)


@dataclass
class ShareStatistics:
    """Running mean, spread and range of per-grid band shares, and the pooled energy per band."""

    bands: int
    count: int = 0
    empty: int = 0  # grids with no energy at all (no shares)

    def __post_init__(self) -> None:
        self.total = np.zeros(self.bands)
        self.squares = np.zeros(self.bands)
        self.low = np.full(self.bands, np.inf)
        self.high = np.full(self.bands, -np.inf)
        self.pooled = np.zeros(self.bands)

    def update(self, energies: np.ndarray) -> None:
        """Add a chunk of per-grid band energies, shape (m, K)."""
        sums = energies.sum(axis=1)
        keep = sums > 0
        self.empty += int((~keep).sum())
        shares = energies[keep] / sums[keep, None]
        self.count += shares.shape[0]
        self.total += shares.sum(axis=0)
        self.squares += (shares**2).sum(axis=0)
        if shares.size:
            self.low = np.minimum(self.low, shares.min(axis=0))
            self.high = np.maximum(self.high, shares.max(axis=0))
        self.pooled += energies.sum(axis=0)

    def summary(self) -> dict:
        """``mean``, ``std`` (population), ``min``, ``max`` of the shares and the ``pooled`` share, per band."""
        nan = np.full(self.bands, np.nan)
        if self.count == 0:
            return {"mean": nan, "std": nan, "min": nan, "max": nan, "pooled": nan}
        mean = self.total / self.count
        variance = np.maximum(self.squares / self.count - mean**2, 0.0)
        pooled_total = self.pooled.sum()
        return {"mean": mean, "std": np.sqrt(variance), "min": self.low, "max": self.high,
                "pooled": self.pooled / pooled_total if pooled_total > 0 else nan}
