"""Tests of sdetool.spectral.bands (METHOD.md section 6): FITMM SVD bands and Prism spatial-frequency bands."""

import re

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal
from scipy.linalg import subspace_angles

from sdetool.spectral import bands as B

GRIDS = [(4, 4), (6, 6), (7, 7), (4, 16), (7, 5), (1, 9), (3, 1), (8, 3), (5, 8)]


def rng(seed):
    return np.random.default_rng(seed)


def orthogonal(seed, size):
    q, r = np.linalg.qr(rng(seed).standard_normal((size, size)))
    return q * np.sign(np.diag(r))


def exact_band_index(h, w, K):
    """Hard band of every full-FFT bin from integer arithmetic: k^2 den <= K^2 num with r^2 = num / den."""
    a = np.abs(np.rint(np.fft.fftfreq(h) * h)).astype(np.int64)
    b = np.abs(np.rint(np.fft.fftfreq(w) * w)).astype(np.int64)
    num = a[:, None] ** 2 * w * w + b[None, :] ** 2 * h * h
    den = (h // 2) ** 2 * w * w + (w // 2) ** 2 * h * h
    index, tie = np.zeros((h, w), np.int64), np.zeros((h, w), bool)
    if den == 0:
        return index, tie
    for k in range(1, K):
        index[k * k * den <= K * K * num] = k
        tie |= k * k * den == K * K * num
    return index, tie


def naive_band_energies(grids, K, smooth=False):
    """Reference: full complex FFT per image, power summed over channels, full-spectrum masks."""
    grids = np.asarray(grids, dtype=np.float64)
    h, w = grids.shape[1:3]
    masks = B.band_masks(B.radial_frequency(h, w), K, smooth)
    out = np.zeros((grids.shape[0], K))
    for i, grid in enumerate(grids):
        power = (np.abs(np.fft.fft2(grid, axes=(0, 1), norm="ortho")) ** 2).sum(axis=2)
        out[i] = (masks**2 * power[None]).sum(axis=(1, 2))
    return out


# --- band_edges ----------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [1, 2, 5, 7, 10, 13, 64])
def test_band_edges_equal_count(p):
    for K in range(1, p + 1):
        edges = B.band_edges(p, K)
        sizes = np.diff(edges)
        assert edges[0] == 0 and edges[-1] == p and sizes.size == K
        assert sizes.min() >= 1 and sizes.max() - sizes.min() <= 1
        assert np.all(np.diff(sizes) <= 0)  # leading bands take the extra ones
        assert_array_equal(sizes, [p // K + (k < p % K) for k in range(K)])
    assert_array_equal(B.band_edges(10, 3), [0, 4, 7, 10])
    assert_array_equal(B.band_edges(10, bands=None, starts=[2, 5, 9]), [0, 2, 5, 9, 10])
    assert_array_equal(B.band_edges(10, starts=[]), [0, 10])


def test_band_edges_errors():
    with pytest.raises(ValueError):
        B.band_edges(5, 0)
    with pytest.raises(ValueError, match="p = 5"):
        B.band_edges(5, 7)
    for starts in ([0, 2], [2, 5], [-1], [1, 7]):
        with pytest.raises(ValueError, match="between 1 and 4"):
            B.band_edges(5, starts=starts)
    for starts in ([3, 3], [3, 2], [1, 4, 2]):
        with pytest.raises(ValueError, match="increasing"):
            B.band_edges(5, starts=starts)
    with pytest.raises(ValueError):
        B.band_edges(5, 2, starts=[2])
    with pytest.raises(ValueError):
        B.band_edges(5)
    with pytest.raises(ValueError):
        B.band_edges(0, 1)


# --- svd_bands -----------------------------------------------------------------------------------


def test_svd_bands_shares_and_ranks():
    s = np.sort(rng(0).uniform(0.1, 5.0, 17))[::-1]
    edges = B.band_edges(s.size, 4)
    power, amplitude = B.svd_bands(s, edges), B.svd_bands(s, edges, energy="amplitude")
    assert_allclose(sum(b.energy_share for b in power), 1.0, rtol=1e-14)
    assert_allclose(sum(b.energy_share for b in amplitude), 1.0, rtol=1e-14)
    for band, amp, (a, b) in zip(power, amplitude, zip(edges[:-1], edges[1:])):
        inside = s[a:b]
        assert_allclose(band.energy_share, (inside**2).sum() / (s**2).sum(), rtol=1e-13)
        assert_allclose(amp.energy_share, inside.sum() / s.sum(), rtol=1e-13)
        p = inside / inside.sum()
        assert_allclose(band.effective_rank, np.exp(-(p * np.log(p)).sum()), rtol=1e-13)
        assert (band.first, band.last, band.count) == (a, b - 1, b - a)
        assert band.largest == inside[0] and band.smallest == inside[-1]
        assert band.to_dict()["first_index"] == a + 1 and band.to_dict()["last_index"] == b


def test_svd_bands_equal_values_in_band():
    s = np.array([9.0, 9.0, 9.0, 4.0, 4.0, 1.0, 1.0, 1.0, 1.0])
    result = B.svd_bands(s, [0, 3, 5, 9])
    assert_allclose([b.effective_rank for b in result], [3.0, 2.0, 4.0], rtol=1e-13)
    assert_allclose([b.energy_share for b in result], np.array([243.0, 32.0, 4.0]) / 279.0, rtol=1e-14)


# --- svd_band_reconstructions ----------------------------------------------------------------------


def planted(seed, n, d, rank=4):
    g = rng(seed)
    signal = (g.standard_normal((n, rank)) * [20.0, 12.0, 7.0, 4.0][:rank]) @ g.standard_normal((rank, d))
    return signal + 0.05 * g.standard_normal((n, d))


@pytest.mark.parametrize("name,matrix,bands,starts", [
    ("random", rng(1).standard_normal((40, 12)), 3, None),
    ("planted", planted(2, 50, 20), 4, None),
    ("tall", rng(3).standard_normal((60, 7)) * np.arange(1, 8), 7, None),
    ("wide", rng(4).standard_normal((9, 30)), 2, None),
    ("starts", planted(5, 30, 15), None, [1, 4, 10]),
])
def test_svd_band_reconstructions(name, matrix, bands, starts):
    parts = B.svd_band_reconstructions(matrix, bands, starts)
    p = min(matrix.shape)
    edges = B.band_edges(p, bands, starts)
    assert parts.shape == (edges.size - 1, *matrix.shape) and parts.dtype == np.float64
    scale = np.linalg.norm(matrix)
    assert_allclose(parts.sum(axis=0), matrix, rtol=0, atol=1e-12 * scale)
    s = np.linalg.svd(matrix, compute_uv=False)
    for k, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
        assert np.linalg.matrix_rank(parts[k]) == b - a
        assert_allclose(np.linalg.svd(parts[k], compute_uv=False)[: b - a], s[a:b], rtol=1e-10, atol=1e-12 * s[0])
        for j in range(k):
            assert_allclose(parts[j].T @ parts[k], 0.0, atol=1e-11 * scale**2)
            assert_allclose(parts[j] @ parts[k].T, 0.0, atol=1e-11 * scale**2)


def test_svd_band_reconstructions_single_band_and_errors():
    x = rng(6).standard_normal((11, 5)).astype(np.float32)
    assert_allclose(B.svd_band_reconstructions(x, 1)[0], x.astype(np.float64), rtol=0, atol=1e-12 * np.linalg.norm(x))
    with pytest.raises(ValueError):
        B.svd_band_reconstructions(np.ones(5), 1)
    with pytest.raises(ValueError):
        B.svd_band_reconstructions(np.ones((0, 3)), 1)
    with pytest.raises(ValueError, match="p = 5"):
        B.svd_band_reconstructions(x, 6)


# --- band_alignment --------------------------------------------------------------------------------


def test_band_alignment_same_right_vectors():
    x = planted(7, 40, 12, rank=4) + rng(8).standard_normal((40, 12))
    _, sa, va = np.linalg.svd(x, full_matrices=False)
    _, sb, vb = np.linalg.svd(3.0 * orthogonal(9, 40) @ x, full_matrices=False)
    result = B.band_alignment(sa, va.T, sb, vb.T, B.band_edges(12, 4))
    assert [r.dimensions for r in result] == [3, 3, 3, 3]
    assert_allclose([r.subspace_overlap for r in result], 1.0, rtol=1e-9)
    assert_allclose([r.hellinger for r in result], 0.0, atol=1e-6)  # sqrt of a rounding error
    assert result[0].to_dict()["subspace_distance"] == pytest.approx(0.0, abs=1e-9)


def test_band_alignment_planted_swap_and_hellinger():
    v = orthogonal(10, 8)
    sa = np.array([8.0, 7.0, 5.0, 4.0, 2.0, 1.0])
    sb = np.array([9.0, 3.0, 2.0, 2.0, 1.0, 0.5])  # band 2 proportional to A's
    va, vb = v[:, :6], v[:, [2, 3, 0, 1, 4, 5]]  # B's band 0 is A's band 1 and vice versa
    result = B.band_alignment(sa, va, sb, vb, [0, 2, 4, 6])
    assert_allclose([r.subspace_overlap for r in result], [0.0, 0.0, 1.0], atol=1e-12)
    for r, (a, b) in zip(result, [(0, 2), (2, 4), (4, 6)]):
        p, q = sa[a:b] ** 2 / (sa[a:b] ** 2).sum(), sb[a:b] ** 2 / (sb[a:b] ** 2).sum()
        assert_allclose(r.hellinger, np.sqrt(1.0 - np.sqrt(p * q).sum()), rtol=1e-12, atol=1e-12)
    assert result[2].hellinger == pytest.approx(0.0, abs=1e-7)
    assert result[0].hellinger > 0.1 and result[1].hellinger > 0.05


def test_band_alignment_matches_scipy_angles_and_short_vectors():
    g = rng(11)
    va = np.linalg.qr(g.standard_normal((15, 9)))[0]
    vb = np.linalg.qr(va + 0.7 * g.standard_normal((15, 9)))[0]
    s = np.linspace(5.0, 1.0, 9)
    edges = B.band_edges(9, 3)
    for r, (a, b) in zip(B.band_alignment(s, va, s, vb, edges), zip(edges[:-1], edges[1:])):
        assert_allclose(r.subspace_overlap, np.mean(np.cos(subspace_angles(va[:, a:b], vb[:, a:b])) ** 2), rtol=1e-10)
    short = B.band_alignment(s, va[:, :4], s, vb[:, :6], edges)  # numerical ranks 4 and 6
    assert [r.dimensions for r in short] == [3, 1, 0]
    assert short[2].subspace_overlap is None and short[2].to_dict()["subspace_distance"] is None
    # band 1 (components 3..5): A has one direction there, B all three; the overlap is A's inside B's band
    expected = np.sum(np.cos(subspace_angles(va[:, 3:4], vb[:, 3:6])) ** 2) / 1
    assert_allclose(short[1].subspace_overlap, expected, rtol=1e-10)
    inside = B.band_alignment(s, va[:, :2], s, va, edges)  # A's 2 directions lie inside B's band 0 of 3
    assert_allclose(inside[0].subspace_overlap, 1.0, rtol=1e-12)
    with pytest.raises(ValueError):
        B.band_alignment(s, va, s, vb[:-1], edges)


# --- spatial frequency ----------------------------------------------------------------------------


@pytest.mark.parametrize("h,w", GRIDS + [(1, 1), (8, 8)])
def test_radial_frequency(h, w):
    r = B.radial_frequency(h, w)
    assert r.shape == (h, w) and r[0, 0] == 0.0
    assert_array_equal(r, r[(-np.arange(h)) % h][:, (-np.arange(w)) % w])  # r(f) = r(-f)
    if h * w > 1:
        assert r.max() == 1.0 and r.min() == 0.0
        fh, fw = np.abs(np.fft.fftfreq(h)), np.abs(np.fft.fftfreq(w))
        top = np.hypot(fh.max(), fw.max())
        assert_allclose(r, np.hypot(fh[:, None], fw[None, :]) / top, rtol=1e-15)
    assert_allclose(B.radial_frequency(h, w, one_sided=True), r[:, : w // 2 + 1], rtol=1e-15)
    if h % 2 == 0 and w % 2 == 0:
        assert r[h // 2, w // 2] == 1.0


@pytest.mark.parametrize("h,w", GRIDS)
@pytest.mark.parametrize("K", [1, 2, 3, 5])
def test_band_masks_hard_and_smooth(h, w, K):
    radius = B.radial_frequency(h, w)
    hard = B.band_masks(radius, K)
    assert set(np.unique(hard)) <= {0.0, 1.0}
    assert_array_equal(hard.sum(axis=0), 1.0)  # a partition
    exact, tie = exact_band_index(h, w, K)
    assert_array_equal(np.argmax(hard, axis=0)[~tie], exact[~tie])
    smooth = B.band_masks(radius, K, smooth=True)
    assert np.all(smooth >= 0.0) and np.all(smooth <= 1.0)
    assert_allclose((smooth**2).sum(axis=0), 1.0, rtol=1e-14)
    dense = np.linspace(0.0, 1.0, 2001)
    m = B.band_masks(dense, K, smooth=True)
    assert_allclose((m**2).sum(axis=0), 1.0, rtol=1e-14)
    for k in range(K):  # flat over the middle half of each band
        middle = (dense >= (k + 0.25) / K) & (dense <= (k + 0.75) / K)
        assert_array_equal(m[k, middle], 1.0)
    with pytest.raises(ValueError):
        B.band_masks(radius, 0)


@pytest.mark.parametrize("h,w,K", [(8, 8, 4), (10, 10, 5), (16, 8, 4)])
def test_band_masks_exact_boundary_ties(h, w, K):
    exact, tie = exact_band_index(h, w, K)
    assert tie.any()
    assert_array_equal(np.argmax(B.band_masks(B.radial_frequency(h, w), K), axis=0), exact)


@pytest.mark.parametrize("h,w", GRIDS + [(1, 1), (1, 2), (2, 1), (2, 2), (8, 8), (12, 5)])
def test_max_spatial_bands(h, w):
    limit = B.max_spatial_bands(h, w)
    radius = B.radial_frequency(h, w)
    for K in range(1, limit + 1):
        assert np.all(B.band_masks(radius, K).sum(axis=(1, 2)) >= 1), K
    assert np.any(B.band_masks(radius, limit + 1).sum(axis=(1, 2)) == 0)
    if (h, w) == (1, 1):
        assert limit == 1


def test_max_spatial_bands_docstring_example():
    words = {"one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8}
    documented = re.search(r"a 7 x 7 grid (\w+)", B.max_spatial_bands.__doc__).group(1)
    assert B.max_spatial_bands(7, 7) == words[documented]


@pytest.mark.parametrize("h,w", [(4, 4), (7, 5), (4, 16), (1, 9), (3, 1), (6, 6)])
@pytest.mark.parametrize("smooth", [False, True])
def test_band_energies_constant_and_parseval(h, w, smooth):
    g = rng(h * 100 + w)
    for K in [1, 2, 3, B.max_spatial_bands(h, w)]:
        weights = B.band_weights(h, w, K, smooth)
        assert weights.shape == (K, h * (w // 2 + 1))
        constant = np.broadcast_to(g.standard_normal((3, 1, 1, 5)), (3, h, w, 5))
        e = B.band_energies(constant, weights)
        total = (constant**2).sum(axis=(1, 2, 3))
        assert_allclose(e[:, 0], total, rtol=1e-12)
        assert_allclose(e[:, 1:], 0.0, atol=1e-12 * total.max())
        grids = g.standard_normal((4, h, w, 3)) * 2.0
        e = B.band_energies(grids, weights)
        assert e.shape == (4, K) and e.dtype == np.float64
        assert_allclose(e.sum(axis=1), (grids**2).sum(axis=(1, 2, 3)), rtol=1e-10)
        assert_allclose(e, naive_band_energies(grids, K, smooth), rtol=1e-9, atol=1e-12 * e.max())
        for dtype in (np.float32, np.float16):
            low = grids.astype(dtype)
            e = B.band_energies(low, weights)
            assert e.dtype == np.float64
            assert_allclose(e.sum(axis=1), (low.astype(np.float64) ** 2).sum(axis=(1, 2, 3)), rtol=1e-5)


@pytest.mark.parametrize("h,w", [(2, 2), (4, 4), (6, 10), (8, 4)])
@pytest.mark.parametrize("smooth", [False, True])
def test_checkerboard_in_top_band(h, w, smooth):
    i, j = np.indices((h, w))
    grid = ((-1.0) ** (i + j))[None, :, :, None] * np.array([1.0, -2.0, 0.5])
    for K in range(1, B.max_spatial_bands(h, w) + 1):
        e = B.band_energies(grid, B.band_weights(h, w, K, smooth))
        assert_allclose(e[0, -1], (grid**2).sum(), rtol=1e-12)
        assert_allclose(e[0, :-1], 0.0, atol=1e-12 * (grid**2).sum())


@pytest.mark.parametrize("h,w,axis,freq,K,band", [
    (8, 8, 1, 1, 4, 0), (8, 8, 1, 2, 4, 1), (8, 8, 0, 3, 4, 2), (8, 8, 0, 4, 2, 1),
    (9, 12, 1, 5, 3, 1), (9, 12, 1, 6, 3, 2), (9, 12, 0, 1, 3, 0), (16, 16, 1, 3, 5, 1)])
def test_sinusoid_lands_in_expected_band(h, w, axis, freq, K, band):
    exact, tie = exact_band_index(h, w, K)
    where = (freq, 0) if axis == 0 else (0, freq)
    assert exact[where] == band and not tie[where]  # the hand-computed band agrees with exact arithmetic
    i, j = np.indices((h, w))
    phase = 2 * np.pi * freq * (i / h if axis == 0 else j / w)
    grid = np.stack([np.cos(phase + 0.3), 2.0 * np.sin(phase)], axis=-1)[None]
    for smooth in (False, True):
        e = B.band_energies(grid, B.band_weights(h, w, K, smooth))[0]
        if not smooth:
            assert_allclose(e[band], (grid**2).sum(), rtol=1e-12)
        assert_allclose(e.sum(), (grid**2).sum(), rtol=1e-12)
        assert np.argmax(e) == band


# --- split_bands ------------------------------------------------------------------------------------


@pytest.mark.parametrize("h,w", [(4, 4), (7, 5), (4, 16), (1, 9), (6, 6)])
def test_split_bands_hard(h, w):
    z = rng(h * 31 + w).standard_normal((h, w, 3))
    spectrum = np.fft.fft2(z, axes=(0, 1))
    for K in range(1, B.max_spatial_bands(h, w) + 1):
        parts = B.split_bands(z, K)
        assert parts.shape == (K, h, w, 3) and parts.dtype == np.float64 and np.isrealobj(parts)
        assert_allclose(parts.sum(axis=0), z, rtol=0, atol=1e-12)
        masks = B.band_masks(B.radial_frequency(h, w), K)
        for k in range(K):
            reference = np.fft.ifft2(spectrum * masks[k][:, :, None], axes=(0, 1))
            assert_allclose(reference.imag, 0.0, atol=1e-12)
            assert_allclose(parts[k], reference.real, rtol=0, atol=1e-12)
        assert_allclose((parts**2).sum(axis=(1, 2, 3)), B.band_energies(z[None], B.band_weights(h, w, K))[0],
                        rtol=1e-10, atol=1e-12)


def test_split_bands_smooth_and_constant():
    h, w, K = 8, 6, 3
    z = rng(12).standard_normal((h, w, 2))
    parts = B.split_bands(z, K, smooth=True)
    assert_allclose(parts.sum(axis=0), z, rtol=0, atol=1e-12)
    masks = B.band_masks(B.radial_frequency(h, w), K, smooth=True)
    residual = z.copy()
    for k in range(K):  # independent iteration with numpy's FFT
        mask = masks[k] if k < K - 1 else np.ones((h, w))
        expected = np.fft.ifft2(np.fft.fft2(residual, axes=(0, 1)) * mask[:, :, None], axes=(0, 1)).real
        assert_allclose(parts[k], expected, rtol=0, atol=1e-12)
        residual = residual - expected
    constant = np.broadcast_to(np.array([1.5, -0.5]), (h, w, 2))
    for smooth in (False, True):
        split = B.split_bands(constant, K, smooth)
        assert_allclose(split[0], constant, rtol=0, atol=1e-13)
        assert_allclose(split[1:], 0.0, atol=1e-13)
    for bad in (np.ones((4, 4)), np.ones((2, 2, 4, 4, 1))):
        with pytest.raises(ValueError):
            B.split_bands(bad, 2)
    batch = rng(5).normal(size=(3, h, w, 2))  # a batch splits as its grids one by one
    assert_allclose(B.split_bands(batch, K, True), np.stack([B.split_bands(g, K, True) for g in batch], axis=1),
                    rtol=0, atol=1e-12)


# --- ShareStatistics --------------------------------------------------------------------------------


def test_share_statistics():
    g = rng(13)
    chunks = [g.uniform(0.0, 3.0, (m, 4)) ** 2 for m in (5, 1, 9, 0, 6)]
    chunks[0][2] = 0.0
    chunks[2][[0, 4]] = 0.0
    chunks[2][1, 3] = 0.0  # one band empty, the grid is not
    energies = np.concatenate(chunks)
    keep = energies.sum(axis=1) > 0
    shares = energies[keep] / energies[keep].sum(axis=1, keepdims=True)
    chunked, once = B.ShareStatistics(4), B.ShareStatistics(4)
    for chunk in chunks:
        chunked.update(chunk)
    once.update(energies)
    for stats in (chunked, once):
        assert stats.count == shares.shape[0] == 18 and stats.empty == 3
        summary = stats.summary()
        assert_allclose(summary["mean"], shares.mean(axis=0), rtol=1e-12)
        assert_allclose(summary["std"], shares.std(axis=0), rtol=1e-9, atol=1e-12)
        assert_allclose(summary["min"], shares.min(axis=0), rtol=1e-15)
        assert_allclose(summary["max"], shares.max(axis=0), rtol=1e-15)
        assert_allclose(summary["pooled"], energies.sum(axis=0) / energies.sum(), rtol=1e-12)
        assert_allclose(summary["mean"].sum(), 1.0, rtol=1e-12)
    for key in ("mean", "std", "min", "max", "pooled"):
        assert_allclose(chunked.summary()[key], once.summary()[key], rtol=1e-12, atol=1e-15)
    nothing = B.ShareStatistics(3)
    nothing.update(np.zeros((2, 3)))
    assert nothing.empty == 2 and nothing.count == 0
    assert all(np.isnan(v).all() for v in nothing.summary().values())
