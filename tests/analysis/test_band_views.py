"""Band views of ``analyze``: FITMM SVD bands (--bands / --band-starts) and Prism spatial-frequency bands
(--spatial-bands) of token grids, on stores with planted grids, against numpy references."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from cli_helpers import assert_error, assert_ok, invoke
from numpy.testing import assert_allclose

from sdetool.analysis.analyze import AnalysisOptions, Progress, analyze
from sdetool.analysis.spatial import SpatialOptions, spatial_bands, token_sources
from sdetool.io import store
from sdetool.spectral import bands

OLD = b'{"previous": "report"}\n'


def _write(path, sets: dict) -> str:
    """A store of ``{key: (rows, grids or None)}``; grids are appended in two blocks (stored float16)."""
    with store.StoreWriter(str(path)) as writer:
        for key, (rows, grids) in sets.items():
            target = writer.create_set(key, rows.shape[1], attrs={"modality": key}, expected_rows=len(rows))
            target.append(np.asarray(rows, np.float32), [f"{key}-{i}" for i in range(len(rows))])
            for block in np.array_split(grids, 2) if grids is not None else ():
                target.append_tokens(block)
    return str(path)


def _rows(n, d=5, seed=0):
    return np.random.default_rng(seed).standard_normal((n, d))


def _random_grids(n, h, w, c, seed=1):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, h, w, c)) + rng.standard_normal(c) * 2).astype(np.float16)


def _constant_grids(n, h, w, c):
    """Grids constant over space; the constants differ per image (1..n) and per channel."""
    levels = np.arange(1, n + 1)[:, None] * np.linspace(-1.0, 2.0, c)[None, :]
    return np.broadcast_to(levels[:, None, None, :], (n, h, w, c)).astype(np.float16)


def _checkerboards(n, h, w, c, seed=2):
    """(-1)^(i+j) times an integer amplitude per image and channel: only the frequency (1/2, 1/2)."""
    sign = (-1.0) ** np.add.outer(np.arange(h), np.arange(w))
    amplitude = np.random.default_rng(seed).integers(1, 5, (n, c))
    return (sign[None, :, :, None] * amplitude[:, None, None, :]).astype(np.float16)


def _reference(grids, k, center="channel"):
    """Per-image radial band energies from numpy's full fft2, as the docstrings define them."""
    g = np.asarray(grids, np.float64)
    if center == "channel":
        g = g - g.mean(axis=(0, 1, 2))
    elif center == "image":
        g = g - g.mean(axis=(1, 2), keepdims=True)
    _, h, w, _ = g.shape
    power = (np.abs(np.fft.fft2(g, axes=(1, 2), norm="ortho")) ** 2).sum(axis=3)
    radius = np.hypot(np.abs(np.fft.fftfreq(h))[:, None], np.abs(np.fft.fftfreq(w))[None, :])
    index = np.minimum(np.floor(radius / radius.max() * k).astype(int), k - 1)
    energy = np.stack([power[:, index == b].sum(axis=1) for b in range(k)], axis=1)
    shares = energy / energy.sum(axis=1, keepdims=True)
    return {"mean": shares.mean(0), "std": shares.std(0), "min": shares.min(0), "max": shares.max(0),
            "pooled": energy.sum(0) / energy.sum(), "dc": np.mean(power[:, 0, 0] / energy.sum(1)),
            "energy": energy, "centred": g, "white": np.bincount(index.ravel(), minlength=k) / index.size}


def _shares(view, name="energy_share"):
    return np.array([band[name] for band in view["bands"]], dtype=float)


def _report(tmp_path, *args):
    out = tmp_path / "report.json"
    assert_ok(invoke("analyze", *args, "--json", out, "-q"))
    return json.loads(out.read_text())


@pytest.mark.parametrize("center", ["none", "channel", "image"])
@pytest.mark.parametrize("k", [1, 3, 8])
def test_constant_grids_put_all_energy_in_band_0(tmp_path, center, k):
    grids = _constant_grids(6, 4, 6, 3)
    path = _write(tmp_path / "s.h5", {"image": (_rows(6), grids)})
    view = _report(tmp_path, path, "--spatial-bands", k, "--spatial-center", center)["spatial_bands"]
    assert view["grid"] == [4, 6] and view["channels"] == 3 and view["n_images"] == 6 and view["k"] == k
    if center == "image":  # nothing is left of a constant grid: no shares, and no crash
        assert view["empty_images"] == 6 and view["dc_share"] is None
        assert all(band["energy_share"] is None for band in view["bands"])
        return
    expected = np.eye(k)[0]
    for name in ("energy_share", "energy_share_min", "energy_share_max", "energy_share_pooled"):
        assert_allclose(_shares(view, name), expected, atol=1e-6)
    assert_allclose(_shares(view, "energy_share_std"), 0.0, atol=1e-6)
    assert_allclose(view["dc_share"], 1.0, atol=1e-6)
    assert view["empty_images"] == 0 and view["center"] == center and view["smooth"] is False
    assert [b["low"] for b in view["bands"]] == pytest.approx(np.arange(k) / k)
    if center == "channel":  # the constants differ per image, so centring leaves each image constant
        assert view["channel_mean_norm"] == pytest.approx(np.linalg.norm(grids.astype(float).mean(axis=(0, 1, 2))))
    else:
        assert view["channel_mean_norm"] is None


@pytest.mark.parametrize("center", ["none", "channel", "image"])
@pytest.mark.parametrize("shape,k", [((4, 6), 2), ((4, 6), 8), ((6, 4), 5), ((8, 8), 3)])
def test_checkerboards_land_in_the_top_band(tmp_path, center, shape, k):
    path = _write(tmp_path / "s.h5", {"image": (_rows(5), _checkerboards(5, *shape, 2))})
    view = _report(tmp_path, path, "--spatial-bands", k, "--spatial-center", center)["spatial_bands"]
    for name in ("energy_share", "energy_share_min", "energy_share_max", "energy_share_pooled"):
        assert_allclose(_shares(view, name), np.eye(k)[-1], atol=1e-6)
    assert_allclose(view["dc_share"], 0.0, atol=1e-6)


def test_pooled_weighs_images_by_energy_and_mean_does_not(tmp_path):
    big = np.full((2, 4, 4, 2), 8.0)  # energy 2 x 2048, all in band 0
    small = _checkerboards(2, 4, 4, 2)  # all in band 1
    grids = np.concatenate([big, small]).astype(np.float16)
    path = _write(tmp_path / "s.h5", {"image": (_rows(4), grids)})
    view = _report(tmp_path, path, "--spatial-bands", 2, "--spatial-center", "none")["spatial_bands"]
    for name, expected in (("", 0.5), ("_std", 0.5), ("_min", 0.0), ("_max", 1.0)):
        assert_allclose(_shares(view, "energy_share" + name), [expected] * 2, atol=1e-6)
    energy = np.array([4096.0, (small.astype(float) ** 2).sum()])
    assert_allclose(_shares(view, "energy_share_pooled"), energy / energy.sum(), rtol=1e-6)


@pytest.mark.parametrize("center", ["none", "channel", "image"])
@pytest.mark.parametrize("shape,k", [((4, 6), 3), ((6, 4), 4), ((5, 7), 4), ((7, 7), 2)])
def test_random_grids_match_an_fft2_reference(tmp_path, center, shape, k):
    grids = _random_grids(9, *shape, 4)
    path = _write(tmp_path / "s.h5", {"image": (_rows(9), grids)})
    view = _report(tmp_path, path, "--spatial-bands", k, "--spatial-center", center)["spatial_bands"]
    ref = _reference(grids, k, center)
    for name, ours in (("mean", ""), ("std", "_std"), ("min", "_min"), ("max", "_max"), ("pooled", "_pooled")):
        assert_allclose(_shares(view, "energy_share" + ours), ref[name], rtol=1e-5, atol=1e-6)
    assert_allclose(_shares(view).sum(), 1.0, atol=1e-9)
    assert_allclose(_shares(view, "energy_share_pooled").sum(), 1.0, atol=1e-9)
    assert_allclose(view["dc_share"], ref["dc"], rtol=1e-5, atol=1e-6)
    assert_allclose(_shares(view, "white_noise_share"), ref["white"], atol=1e-12)  # fractions of the bins


@pytest.mark.parametrize("k,hard,smooth", [(2, [0, 1], [0.5, 0.5]), (4, [0, 0, 1, 0], [0, 0.5, 0.5, 0])])
def test_smooth_masks_crossfade_at_a_boundary(tmp_path, k, hard, smooth):
    i, j = np.meshgrid(np.arange(4), np.arange(4), indexing="ij")
    wave = np.cos(2 * np.pi * (i + j) / 4)  # only +-(1/4, 1/4): radius exactly 1/2, a band boundary
    amplitudes = np.array([[1.0, 2.0], [3.0, -1.0], [0.5, 4.0]])
    grids = (wave[None, :, :, None] * amplitudes[:, None, None, :]).astype(np.float16)
    path = _write(tmp_path / "s.h5", {"image": (_rows(3), grids)})
    for flags, expected in (([], hard), (["--smooth"], smooth)):
        view = _report(tmp_path, path, "--spatial-bands", k, "--spatial-center", "none", *flags)["spatial_bands"]
        assert view["smooth"] is bool(flags)
        assert_allclose(_shares(view), expected, atol=1e-6)  # smooth: cos^2(pi/4) = sin^2(pi/4) either side


@pytest.mark.parametrize("center", ["channel", "image", "none"])
def test_streaming_block_size_does_not_change_the_result(tmp_path, center):
    grids = _random_grids(7, 4, 6, 3, seed=5)
    sources = token_sources([store.open_matrices(_write(tmp_path / "s.h5", {"image": (_rows(7), grids)}))["image"]],
                            "image")
    first, *others = [spatial_bands(sources, SpatialOptions(4, center=center, split_image=5, block_images=block),
                                    Progress(), "image") for block in (1, 3, 7, None)]
    for other in others:
        for name in first.shares:
            assert_allclose(other.shares[name], first.shares[name], rtol=1e-9, atol=1e-12)
        assert other.dc_share == pytest.approx(first.dc_share, rel=1e-9)
        assert_allclose(other.split, first.split, rtol=0, atol=1e-6)
    assert_allclose(first.shares["mean"], _reference(grids, 4, center)["mean"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("smooth", [False, True])
@pytest.mark.parametrize("center", ["channel", "image", "none"])
def test_split_image_components_sum_to_the_centred_grid(tmp_path, smooth, center):
    grids = _random_grids(5, 4, 6, 3, seed=7)
    path = _write(tmp_path / "s.h5", {"image": (_rows(5), grids), "text": (_rows(5, seed=3), None)})
    npz = tmp_path / "f.npz"
    document = _report(tmp_path, path, "--spatial-bands", 3, "--split-image", 2, "--split-out", npz,
                       "--spatial-center", center, *(["--smooth"] if smooth else []))
    with np.load(npz) as arrays:
        assert sorted(arrays.files) == ["image", "image_offset"]  # the text set has no tokens
        split, offset = arrays["image"], arrays["image_offset"]
    ref = _reference(grids, 3, center)
    assert split.shape == (3, 4, 6, 3) and offset.shape == (3,)
    assert_allclose(split.sum(axis=0), ref["centred"][2], atol=1e-5)
    assert_allclose(split.sum(axis=0) + offset, grids[2].astype(np.float64), atol=1e-5)  # the stored grid back
    view = document["sets"]["image"]["spatial_bands"]
    assert view["split"]["image"] == 2 and document["sets"]["text"]["spatial_bands"] is None
    assert _shares(view).sum() == pytest.approx(1.0, abs=1e-9)  # smooth masks too: their squares sum to one
    assert_allclose(view["split"]["component_energy"], (split.astype(float) ** 2).sum(axis=(1, 2, 3)), rtol=1e-9)
    if not smooth:  # hard masks: the components are the band projections, their energies the band energies
        assert_allclose(view["split"]["component_energy"], ref["energy"][2], rtol=1e-5, atol=1e-6)


def test_two_shards_give_the_same_bands_as_one_store(tmp_path):
    grids, rows = _random_grids(10, 4, 6, 3, seed=11), _rows(10)
    whole = _write(tmp_path / "whole.h5", {"image": (rows, grids)})
    first = _write(tmp_path / "a.h5", {"image": (rows[:4], grids[:4])})
    second = _write(tmp_path / "b.h5", {"image": (rows[4:], grids[4:])})
    args = ("--spatial-bands", 4, "--split-image", 6)
    one = _report(tmp_path, whole, *args)["spatial_bands"]
    sharded = _report(tmp_path, first, second, *args)["spatial_bands"]
    assert sharded["n_images"] == 10 and sharded["source"] == [first, second]
    for name in ("energy_share", "energy_share_std", "energy_share_min", "energy_share_max", "energy_share_pooled"):
        assert_allclose(_shares(sharded, name), _shares(one, name), rtol=1e-9, atol=1e-12)
    assert sharded["dc_share"] == pytest.approx(one["dc_share"], rel=1e-9)
    assert sharded["channel_mean_norm"] == pytest.approx(one["channel_mean_norm"], rel=1e-9)
    assert_allclose(sharded["split"]["component_energy"], one["split"]["component_energy"], rtol=1e-6)
    assert_allclose(_shares(one), _reference(grids, 4)["mean"], rtol=1e-5, atol=1e-6)
    library = analyze([first, second], ["image"], AnalysisOptions(spatial_bands=4, split_image=6))["image"]
    assert_allclose(library.spatial_bands.split.sum(axis=0), _reference(grids, 4)["centred"][6], atol=1e-5)
    without = _write(tmp_path / "c.h5", {"image": (rows[4:], None)})  # every shard needs grids of one shape
    other_grid = _write(tmp_path / "d.h5", {"image": (rows[4:], _random_grids(6, 6, 4, 3))})
    assert_error(invoke("analyze", first, without, "--spatial-bands", 2, "-q"), 2, "c.h5", "extract --tokens")
    assert_error(invoke("analyze", first, other_grid, "--spatial-bands", 2, "-q"), 2, "differ in shape")


def _spectrum_matrix(n, d, seed=0, top=20.0, bottom=1.0, rank=None):
    """``U diag(s) W^T`` (geometric s) plus a common offset; with ``rank``, the last columns are exactly zero."""
    rng = np.random.default_rng(seed)
    rank = rank or min(n - 1, d)
    left, _ = np.linalg.qr(rng.standard_normal((n, rank)))
    left -= left.mean(axis=0)  # centred left side: the offset below is the only mean
    right, _ = np.linalg.qr(rng.standard_normal((rank, rank)))
    out = np.zeros((n, d))
    out[:, :rank] = (left * np.geomspace(top, bottom, rank)) @ right.T + rng.standard_normal(rank)
    return out.astype(np.float32)


def _svd_reference(matrix):
    x = matrix.astype(np.float64)
    return np.linalg.svd(x - x.mean(axis=0), compute_uv=False)[: min(x.shape[0] - 1, x.shape[1])]


@pytest.mark.parametrize("n,d,k,counts", [(60, 12, 4, [3, 3, 3, 3]), (60, 14, 4, [4, 4, 3, 3]),
                                          (10, 30, 3, [3, 3, 3]), (60, 12, 12, [1] * 12)])
@pytest.mark.parametrize("energy", ["power", "amplitude"])
def test_svd_bands_match_a_float64_svd(tmp_path, n, d, k, counts, energy):
    matrix = _spectrum_matrix(n, d)
    path = _write(tmp_path / "s.h5", {"image": (matrix, None)})
    view = _report(tmp_path, path, "--bands", k, "--energy", energy)["svd_bands"]
    values = _svd_reference(matrix)
    weights = values**2 if energy == "power" else values
    edges = np.concatenate([[0], np.cumsum(counts)])
    assert view["k"] == k and view["rule"] == "equal-count" and view["energy"] == energy
    assert view["starts"] == edges[:-1].tolist()
    assert [b["count"] for b in view["bands"]] == counts and [b["band"] for b in view["bands"]] == list(range(k))
    assert [b["first_index"] for b in view["bands"]] == (edges[:-1] + 1).tolist()  # 1-based, like bands.*
    assert [b["last_index"] for b in view["bands"]] == edges[1:].tolist()
    shares = _shares(view)
    assert shares.sum() == pytest.approx(1.0, abs=1e-12)
    assert_allclose(shares, [weights[a:b].sum() / weights.sum() for a, b in zip(edges[:-1], edges[1:])], atol=1e-8)
    for band, a, b in zip(view["bands"], edges[:-1], edges[1:]):
        inside = values[a:b]
        assert band["singular_value_max"] == pytest.approx(inside[0], rel=1e-6)
        assert band["singular_value_min"] == pytest.approx(inside[-1], rel=1e-6)
        p = inside / inside.sum()
        assert band["effective_rank"] == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-6)


def test_band_starts_set_the_boundaries(tmp_path):
    matrix = _spectrum_matrix(60, 12)
    path = _write(tmp_path / "s.h5", {"image": (matrix, None)})
    view = _report(tmp_path, path, "--band-starts", "3,10")["svd_bands"]
    assert view["rule"] == "given starts" and view["k"] == 3 and view["starts"] == [0, 3, 10]
    assert [(b["first_index"], b["last_index"], b["count"]) for b in view["bands"]] == [(1, 3, 3), (4, 10, 7),
                                                                                        (11, 12, 2)]
    power = _svd_reference(matrix) ** 2
    centred = matrix.astype(np.float64) - matrix.astype(np.float64).mean(axis=0)
    parts = bands.svd_band_reconstructions(centred, starts=(3, 10))  # they sum to X and are orthogonal
    assert_allclose(parts.sum(axis=0), centred, atol=1e-10)
    assert_allclose(parts[0].T @ parts[1], 0.0, atol=1e-8)
    assert_allclose(parts[1] @ parts[2].T, 0.0, atol=1e-8)
    assert_allclose((parts**2).sum(axis=(1, 2)) / power.sum(), _shares(view), atol=1e-8)
    library = analyze(path, None, AnalysisOptions(band_starts=(3, 10)))["image"].svd_bands
    assert [(band.first, band.last, band.count) for band in library] == [(0, 2, 3), (3, 9, 7), (10, 11, 2)]
    assert_allclose(_shares(view), [power[:3].sum(), power[3:10].sum(), power[10:].sum()] / power.sum(), atol=1e-8)


@pytest.mark.parametrize("args,fragments", [
    (["--bands", "13"], ["--bands", "12", "13"]), (["--bands", "0"], ["--bands 0", ">= 1"]),
    (["--band-starts", "5,3"], ["--band-starts", "strictly increasing"]), (["--band-starts", "a,b"], ["a,b"]),
    (["--band-starts", "0,3"], ["--band-starts 0,3", "positive"]), (["--band-starts", "3,12"], ["between 1 and 11"]),
    (["--bands", "2", "--band-starts", "3"], ["--bands and --band-starts"])])
def test_bad_svd_band_requests_are_one_line_errors(tmp_path, args, fragments):
    path = _write(tmp_path / "s.h5", {"image": (_spectrum_matrix(60, 12), None)})
    assert_error(invoke("analyze", path, *args, "--json", tmp_path / "r.json", "-q"), 2, *fragments)
    assert not (tmp_path / "r.json").exists()


def _paired(n=40, d=8, rank=None, seed=3):
    """``image`` and ``text = Q image``, Q orthogonal with Q 1 = 1 (commutes with centring): same V and s."""
    image = _spectrum_matrix(n, d, seed=seed, rank=rank).astype(np.float64)
    rng = np.random.default_rng(seed + 1)
    text = image.copy()
    for _ in range(3):  # Householder reflections about vectors orthogonal to the ones vector
        v = rng.standard_normal(n)
        v -= v.mean()
        v /= np.linalg.norm(v)
        text = text - 2.0 * np.outer(v, v @ text)
    return image, text


@pytest.mark.parametrize("rank", [None, 6])
def test_per_band_alignment_of_left_rotated_sets_is_one(tmp_path, rank):
    image, text = _paired(rank=rank)
    path = _write(tmp_path / "s.h5", {"image": (image, None), "text": (text, None)})
    document = _report(tmp_path, path, "--bands", 4)
    cross = document["cross"]["image~text"]["svd_bands"]
    assert [row["band"] for row in cross] == [0, 1, 2, 3]
    image_view = document["sets"]["image"]["svd_bands"]
    assert_allclose(_shares(image_view), _shares(document["sets"]["text"]["svd_bands"]), atol=1e-8)
    for row, band in zip(cross, image_view["bands"]):
        if band["energy_share"] > 1e-12:
            assert row["dimensions"] == 2
            assert row["subspace_overlap"] == pytest.approx(1.0, abs=1e-6)
            assert row["subspace_distance"] == pytest.approx(0.0, abs=1e-6)
            assert row["hellinger"] == pytest.approx(0.0, abs=1e-4)
        else:  # components beyond the numerical rank have no direction to compare
            assert rank == 6 and band["band"] == 3
            assert row["dimensions"] == 0 and row["subspace_overlap"] is None and row["subspace_distance"] is None
            assert band["energy_share"] == 0 and band["effective_rank"] is None  # METHOD.md section 8


def test_bands_refuse_unpaired_sets_but_plain_analysis_does_not(tmp_path):
    path = _write(tmp_path / "s.h5", {"image": (_spectrum_matrix(40, 8), None), "text": (_rows(40, 6), None)})
    line = assert_error(invoke("analyze", path, "--bands", 2, "-q"), 2, "image", "text", "d = 8", "d = 6")
    assert "--bands" in line
    document = _report(tmp_path, path)
    assert "dimensions differ" in document["cross"]["image~text"]["note"]
    assert document["cross"]["image~text"]["svd_bands"] is None
    assert _report(tmp_path, path, "--key", "text", "--bands", 2)["svd_bands"]["k"] == 2
    assert_error(invoke("analyze", path, "--band-starts", 2, "-q"), 2, "image", "text", "d = 8", "d = 6")
    rows = _write(tmp_path / "r.h5", {"image": (_rows(40, 6), None), "text": (_rows(30, 6), None)})
    assert_error(invoke("analyze", rows, "--bands", 2, "-q"), 2, "row counts differ", "40", "30")
    unrelated = _write(tmp_path / "u.h5", {"image": (_spectrum_matrix(40, 8, seed=3), None),
                                           "text": (_spectrum_matrix(40, 8, seed=9), None)})
    cross = _report(tmp_path, unrelated, "--bands", 4)["cross"]["image~text"]["svd_bands"]
    assert min(row["subspace_overlap"] for row in cross) < 0.9  # paired, same d, unrelated directions


@pytest.fixture
def grid_store(tmp_path):
    return _write(tmp_path / "s.h5", {"image": (_rows(6), _random_grids(6, 4, 6, 3)), "text": (_rows(6, seed=4), None)})


@pytest.mark.parametrize("args,fragments", [
    (["--spatial-bands", "0"], ["--spatial-bands 0", ">= 1"]),
    (["--spatial-bands", "9"], ["--spatial-bands 9", "4 x 6", "at most 8"]),
    (["--spatial-bands", "2", "--split-out", "SPLIT"], ["--split-out needs --split-image"]),
    (["--spatial-bands", "2", "--split-image", "999", "--split-out", "SPLIT"], ["--split-image 999", "6 images"]),
    (["--spatial-bands", "2", "--split-image", "-1"], ["--split-image -1"]),
    (["--split-image", "1"], ["--split-image needs --spatial-bands"]),
    (["--spatial-bands", "2", "--split-image", "6"], ["--split-image 6", "6 images"]),
    (["--key", "text", "--spatial-bands", "2"], ["text", "extract --tokens"]),
])
@pytest.mark.parametrize("existing", [False, True])
def test_bad_spatial_requests_leave_outputs_alone(tmp_path, grid_store, args, fragments, existing):
    report, split = tmp_path / "out.json", tmp_path / "out.npz"
    if existing:
        report.write_bytes(OLD)
        split.write_bytes(OLD)
    before = sorted(os.listdir(tmp_path))
    args = [split if arg == "SPLIT" else arg for arg in args]
    assert_error(invoke("analyze", grid_store, *args, "--json", report, "-q"), 2, *fragments)
    assert sorted(os.listdir(tmp_path)) == before  # nothing new, no temporary file left behind
    if existing:
        assert report.read_bytes() == OLD and split.read_bytes() == OLD


def test_missing_or_broken_token_grids_are_one_line_errors(tmp_path):
    plain = _write(tmp_path / "plain.h5", {"image": (_rows(6), None), "text": (_rows(6), None)})
    assert_error(invoke("analyze", plain, "--spatial-bands", 2, "--json", tmp_path / "r.json", "-q"), 2,
                 "extract --tokens")
    np.save(tmp_path / "x.npy", _rows(6).astype(np.float32))
    assert_error(invoke("analyze", tmp_path / "x.npy", "--spatial-bands", 2, "-q"), 2, "extract --tokens")
    assert not (tmp_path / "r.json").exists()
    short = tmp_path / "short.h5"
    with store.StoreWriter(str(short)) as writer:
        target = writer.create_set("image", 5)
        target.append(_rows(6).astype(np.float32), [str(i) for i in range(6)])
        target.append_tokens(_random_grids(4, 4, 6, 3))
    assert_error(invoke("analyze", short, "--spatial-bands", 2, "-q"), 2, "4 grids for 6 embeddings")
    grids = _random_grids(6, 4, 6, 3)
    grids[3, 1, 1, 0] = np.inf
    inf = _write(tmp_path / "inf.h5", {"image": (_rows(6), grids)})
    assert_error(invoke("analyze", inf, "--spatial-bands", 2, "-q"), 2, "image 3", "NaN or Inf")


def test_the_limit_follows_its_definition_and_the_cli_enforces_it(tmp_path):
    for h, w in [(1, 1), (2, 2), (4, 6), (6, 4), (5, 7), (7, 7), (8, 8)]:
        limit = bands.max_spatial_bands(h, w)
        radius = bands.radial_frequency(h, w).ravel()
        for k in range(1, limit + 2):
            hit = np.unique(np.minimum((radius * k).astype(int), k - 1)).size == k
            assert hit == (k <= limit), (h, w, k, limit)
    grids = _random_grids(4, 5, 7, 2)
    path = _write(tmp_path / "s.h5", {"image": (_rows(4), grids)})
    limit = bands.max_spatial_bands(5, 7)
    view = _report(tmp_path, path, "--spatial-bands", limit)["spatial_bands"]
    assert (_shares(view, "energy_share_max") > 0).all()  # every band holds some frequency
    assert_error(invoke("analyze", path, "--spatial-bands", limit + 1, "-q"), 2, f"at most {limit}")
    # METHOD.md section 8 (the function's docstring example, "a 7 x 7 grid four", disagrees with both)
    assert bands.max_spatial_bands(7, 7) == 8 and bands.max_spatial_bands(28, 28) == 34


LEAF_TYPOS = ["svd_bands.bands.0.energy_shar", "spatial_bands.bands.0.energy_shares"]


def test_fail_if_reads_band_views(tmp_path):
    checker = _write(tmp_path / "c.h5", {"image": (_spectrum_matrix(60, 12, top=1e4), _checkerboards(60, 4, 6, 2))})
    flat = _write(tmp_path / "f.h5", {"image": (_rows(60, 12), _constant_grids(60, 4, 6, 2))})
    spatial = ["--spatial-bands", "2", "--fail-if", "spatial_bands.bands.0.energy_share < 0.5", "-q"]
    svd = ["--bands", "4", "--fail-if", "svd_bands.bands.0.energy_share > 0.99", "-q"]
    result = invoke("analyze", checker, *spatial)
    assert result.exit_code == 1 and "spatial_bands.bands.0.energy_share" in result.stderr
    assert_ok(invoke("analyze", flat, *spatial))
    assert invoke("analyze", checker, *svd).exit_code == 1  # one dominant band of a steep spectrum
    assert_ok(invoke("analyze", flat, *svd))  # near-isotropic rows
    image, text = _paired()
    pair = _write(tmp_path / "p.h5", {"image": (image, None), "text": (text, None)})
    assert_ok(invoke("analyze", pair, "--bands", 2, "--fail-if", "cross.image~text.svd_bands.0.subspace_overlap < 0.99",
                     "-q"))
    for typo in LEAF_TYPOS:  # refused at the latest after the run, and before any output is written
        assert_error(invoke("analyze", checker, "--bands", 2, "--spatial-bands", 2, "--fail-if", f"{typo} < 0.5",
                            "--json", tmp_path / "r.json", "-q"), 2, "--fail-if", typo)
    assert not (tmp_path / "r.json").exists()


@pytest.mark.parametrize("path", ["spatial_bands.bandz.0.energy_share", "svd_bands.band.0.energy_share",
                                  "svd_bands.bandz.0.energy_share", *LEAF_TYPOS])
def test_fail_if_typos_are_refused_before_any_work(tmp_path, path):
    """Typos in a list's name and below a band index alike."""
    missing = tmp_path / "missing.h5"  # never opened: the check is refused first
    assert_error(invoke("analyze", missing, "--spatial-bands", 2, "--fail-if", f"{path} < 0.5", "-q"), 2,
                 "--fail-if", path)


def test_tables_render_every_band_view(tmp_path):
    image, text = _paired(rank=6)
    grids = np.concatenate([_constant_grids(20, 4, 6, 2), _checkerboards(20, 4, 6, 2)])
    path = _write(tmp_path / "s.h5", {"image": (image, grids), "text": (text, None)})
    result = assert_ok(invoke("analyze", path, "--bands", 4, "--spatial-bands", 3))
    assert "SVD bands" in result.output and "spatial bands" in result.output and "per SVD band" in result.output
    single = _write(tmp_path / "c.h5", {"image": (_rows(6), _constant_grids(6, 4, 6, 2))})
    assert_ok(invoke("analyze", single, "--spatial-bands", 2, "--spatial-center", "image"))  # all shares null


def test_extract_tokens_then_spatial_bands_with_the_builtin_model(tmp_path):
    from extract_fixtures import fashion_subset
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for index, pixels in enumerate(fashion_subset(40).pixels):
        Image.fromarray(pixels, mode="L").save(folder / f"item{index:02d}.png")
    out = tmp_path / "s.h5"
    assert_ok(invoke("extract", "--images", folder, "--out", out, "--tokens", "--num-workers", 0, "-q"))
    result = assert_ok(invoke("analyze", out, "--key", "image", "--spatial-bands", 4, "--json", "-", "-q"))
    view = json.loads(result.stdout)["spatial_bands"]
    assert view["grid"] == [7, 7] and view["channels"] == 128 and view["n_images"] == 40
    assert view["empty_images"] == 0 and view["source"] == str(out)
    assert_allclose(_shares(view, "white_noise_share"), np.array([5, 8, 24, 12]) / 49, atol=1e-12)  # METHOD.md
    assert _shares(view).sum() == pytest.approx(1.0, abs=1e-9)
    assert _shares(view, "energy_share_pooled").sum() == pytest.approx(1.0, abs=1e-9)
    with store.open_file(str(out)) as handle:
        grids = handle["image/tokens"][()]
    assert_allclose(_shares(view), _reference(grids, 4)["mean"], rtol=1e-4, atol=1e-6)


# --- from the review: options that cannot apply are refused, others apply ------------------------------


@pytest.mark.parametrize("args,fragment", [
    (["--spatial-bands", "2", "--sample", "5"], "--spatial-bands with --sample"),
    (["--smooth"], "need --spatial-bands"),
    (["--spatial-center", "none"], "need --spatial-bands"),
    (["--band-starts", "4,4"], "strictly increasing"),
    (["--spatial-bands", "2", "--split-image", "0", "--split-out", "-"], "--split-out -"),
])
def test_options_that_cannot_apply_are_refused_before_reading(tmp_path, args, fragment):
    missing = tmp_path / "missing.h5"  # never opened: the options are refused first
    assert_error(invoke("analyze", missing, *args), 2, fragment)


def test_drop_nonfinite_leaves_non_finite_grids_out(tmp_path):
    grids = _random_grids(8, 4, 6, 2, seed=3).astype(np.float32)
    grids[[1, 5], 0, 0, 0] = np.nan
    path = _write(tmp_path / "nf.h5", {"image": (_rows(8), grids)})
    assert_error(invoke("analyze", path, "--spatial-bands", 2), 2, "image 1", "--drop-nonfinite")
    view = _report(tmp_path, path, "--spatial-bands", 2, "--drop-nonfinite", "--spatial-center", "none")["spatial_bands"]
    keep = np.ones(8, bool)
    keep[[1, 5]] = False
    assert view["n_images"] == 6 and view["dropped_nonfinite"] == 2
    assert_allclose(_shares(view), _reference(grids[keep].astype(np.float16), 2, "none")["mean"], atol=1e-6)
    assert_error(invoke("analyze", path, "--spatial-bands", 2, "--drop-nonfinite", "--split-image", 5), 2,
                 "--split-image 5", "NaN")


def test_an_explicit_dataset_path_finds_its_token_grids(tmp_path):
    grids = _checkerboards(6, 4, 4, 2)
    path = _write(tmp_path / "s.h5", {"image": (_rows(6), grids)})
    view = _report(tmp_path, f"{path}:/image/embeddings", "--spatial-bands", 2, "--spatial-center", "none")
    assert_allclose(_shares(view["spatial_bands"]), [0.0, 1.0], atol=1e-6)


def test_split_out_holds_sets_with_any_name(tmp_path):
    path = _write(tmp_path / "s.h5", {"file": (_rows(4), _random_grids(4, 4, 4, 2))})
    npz = tmp_path / "split.npz"
    _report(tmp_path, path, "--spatial-bands", 2, "--split-image", 1, "--split-out", npz)
    with np.load(npz) as arrays:
        assert sorted(arrays.files) == ["file", "file_offset"] and arrays["file"].shape == (2, 4, 4, 2)


def test_compare_key_analyses_only_that_set(tmp_path):
    grids = _random_grids(12, 4, 4, 2)
    sets = {"image": (_rows(12, d=8), grids), "text": (_rows(12, d=6, seed=4), None)}
    first, second = _write(tmp_path / "a.h5", sets), _write(tmp_path / "b.h5", sets)
    out = tmp_path / "cmp.json"
    assert_ok(invoke("compare", first, second, "--key", "image", "--bands", 2, "--json", out, "-q"))
    entry = json.loads(out.read_text())["sets"]["image"]
    assert [band["energy_share"]["delta"] for band in entry["svd_bands"]] == [0.0, 0.0]
    # without --key the two sets of different dimensions cannot have per-band alignment: refused, naming them
    assert_error(invoke("compare", first, second, "--bands", 2), 2, "image", "text")
