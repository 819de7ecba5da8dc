"""End-to-end analysis through real files against float64 reference SVDs and planted truth."""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
from numpy.testing import assert_allclose

from sdetool.analysis.analyze import AnalysisOptions, analyze
from sdetool.errors import BadInputError
from sdetool.io import store
from sdetool.spectral import metrics
from sdetool.spectral.synthetic import planted_spikes


def _wide_spectrum(n, d, seed=0, condition=1e4):
    """A matrix whose singular values span ``condition`` (log-spaced), plus a large common offset."""
    rng = np.random.default_rng(seed)
    left, _ = np.linalg.qr(rng.standard_normal((n, min(n, d))))
    right, _ = np.linalg.qr(rng.standard_normal((d, min(n, d))))
    values = np.geomspace(1.0, 1.0 / condition, min(n, d)) * 50.0
    return (left * values) @ right.T + 3.0 * rng.standard_normal(d)


def _reference(matrix, centered=True):
    x = np.asarray(matrix, dtype=np.float64)
    if centered:
        x = x - x.mean(axis=0)
    n, d = x.shape
    return np.linalg.svd(x, compute_uv=False)[: min(n - 1 if centered else n, d)]


def _assert_spectrum(values, reference):
    """rtol 1e-6 on components above 1e-3 s_1; below, |error| <= 1e-7 s_1 (the float64 Gram's limit)."""
    assert values.shape == reference.shape
    top = reference >= 1e-3 * reference[0]
    assert_allclose(values[top], reference[top], rtol=1e-6)
    assert_allclose(values[~top], reference[~top], rtol=0, atol=1e-7 * reference[0])


@pytest.mark.parametrize("dtype", ["float32", "float16"])
@pytest.mark.parametrize("n,d", [(600, 40), (30, 80)])
@pytest.mark.parametrize("block_rows", [7, None])
def test_singular_values_match_float64_svd_through_an_hdf5_store(tmp_path, dtype, n, d, block_rows):
    matrix = _wide_spectrum(n, d).astype(dtype)
    path = str(tmp_path / "emb.h5")
    store.write_set(path, "image", matrix, dtype=dtype)
    report = analyze(path, options=AnalysisOptions(block_rows=block_rows))
    result = report["image"]
    assert result.dtype == dtype and result.n_samples == n and result.dim == d
    _assert_spectrum(result.singular_values, _reference(matrix))  # reference: the same stored values


@pytest.mark.parametrize("n,d", [(500, 30), (20, 50)])
def test_uncentred_spectrum(tmp_path, n, d):
    matrix = _wide_spectrum(n, d, seed=2).astype(np.float32)
    path = str(tmp_path / "x.npy")
    np.save(path, matrix)
    result = analyze(path, options=AnalysisOptions(center=False, block_rows=64))["embeddings"]
    _assert_spectrum(result.singular_values, _reference(matrix, centered=False))
    assert result.metrics["effective_rank_on"] == "uncentered"


def test_l2_rows(tmp_path):
    matrix = np.random.default_rng(3).standard_normal((300, 16)) * np.arange(1, 301)[:, None]
    path = str(tmp_path / "x.npy")
    np.save(path, matrix)
    result = analyze(path, options=AnalysisOptions(l2=True))["embeddings"]
    unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    _assert_spectrum(result.singular_values, _reference(unit))
    assert result.normalized


def test_shards_equal_one_file(tmp_path):
    matrix = _wide_spectrum(900, 24, seed=4).astype(np.float32)
    whole = str(tmp_path / "whole.h5")
    store.write_set(whole, "image", matrix)
    shards = []
    for index, (start, stop) in enumerate([(0, 100), (100, 650), (650, 900)]):
        shards.append(str(tmp_path / f"emb-{index}.h5"))
        store.write_set(shards[-1], "image", matrix[start:stop])
    one = analyze(whole)["image"]
    many = analyze(shards, options=AnalysisOptions(block_rows=64))["image"]
    assert many.n_samples == 900 and len(many.sources) == 3
    _assert_spectrum(many.singular_values, one.singular_values)
    for name, band in many.to_dict()["bands"].items():
        assert band["count"] == one.to_dict()["bands"][name]["count"]
        assert band["energy_share"] == pytest.approx(one.to_dict()["bands"][name]["energy_share"], rel=1e-9)


def test_sample_analyzes_the_seeded_subset(tmp_path):
    matrix = _wide_spectrum(2000, 20, seed=5).astype(np.float32)
    path = str(tmp_path / "x.npy")
    np.save(path, matrix)
    result = analyze(path, options=AnalysisOptions(sample=300, seed=42, block_rows=128))["embeddings"]
    rows = np.sort(np.random.default_rng(42).choice(2000, size=300, replace=False))
    assert result.n_samples == 300 and result.n_rows == 2000
    _assert_spectrum(result.singular_values, _reference(matrix[rows]))


def test_planted_spikes_through_a_store(tmp_path):
    n, d, rank = 3000, 256, 12
    strengths = np.geomspace(4.0, 0.85, rank)  # BBP threshold for beta = 0.085 is 0.54
    planted = planted_spikes(n, d, strengths, sigma=0.05, offset_norm=5.0, seed=9, dtype=np.float32)
    path = str(tmp_path / "emb.h5")
    store.write_set(path, "image", planted.matrix)
    document = analyze(path).to_dict()
    bands = document["bands"]
    assert bands["strong"]["count"] + bands["weak"]["count"] == rank
    assert document["noise"]["sigma"] == pytest.approx(0.05, rel=0.02)
    assert document["noise"]["signal_rank"] == rank
    assert sum(band["energy_share"] for band in bands.values()) == pytest.approx(1.0, abs=1e-12)
    assert document["metrics"]["mean_cosine"] > 0.5  # the cone offset dominates the raw rows


def test_builtin_example_recovers_its_planted_components():
    document = analyze("builtin:spiked").to_dict()
    assert document["n_samples"] == 20000 and document["dim"] == 384
    detected = document["bands"]["strong"]["count"] + document["bands"]["weak"]["count"]
    assert detected == document["noise"]["signal_rank"]
    assert 30 <= detected <= 32  # 32 planted, the weakest at 1.2x the BBP threshold
    assert document["noise"]["sigma"] == pytest.approx(1.0, rel=0.01)


def test_cross_modal_section(tmp_path):
    n, d = 1500, 32
    rng = np.random.default_rng(6)
    shared = planted_spikes(n, d, [5.0, 4.0, 3.0], sigma=1.0, seed=1)
    image = shared.matrix + 4.0  # the same directions, shifted: overlap ~1, a modality gap
    text = shared.matrix + rng.standard_normal((n, d)) * 0.5
    path = str(tmp_path / "pairs.h5")
    store.write_set(path, "image", image.astype(np.float32))
    store.write_set(path, "text", text.astype(np.float32))
    report = analyze(path, keys=["image", "text"], options=AnalysisOptions(top_k=3))
    (pair,) = report.cross
    assert pair.name == "image~text" and pair.paired and pair.top_k == 3
    assert pair.subspace_overlap > 0.99
    expected = metrics.hellinger_spectral_distance(report["image"].singular_values, report["text"].singular_values)
    assert pair.hellinger == pytest.approx(expected)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    gap = np.linalg.norm(unit(image.astype(np.float32).astype(np.float64)).mean(0)
                         - unit(text.astype(np.float32).astype(np.float64)).mean(0))
    assert pair.modality_gap == pytest.approx(gap, rel=1e-9)
    document = report.to_dict()
    assert set(document) >= {"schema", "sets", "cross"}
    assert document["cross"]["image~text"]["subspace_distance"] == pytest.approx(1 - pair.subspace_overlap)
    assert len(document["cross"]["image~text"]["principal_angles_deg"]) == 3


def test_cross_with_other_dimensions_keeps_hellinger_only(tmp_path):
    path = str(tmp_path / "mixed.npz")
    rng = np.random.default_rng(7)
    np.savez(path, a=rng.standard_normal((100, 8)), b=rng.standard_normal((90, 12)))
    (pair,) = analyze(path).cross
    assert not pair.paired and pair.subspace_overlap is None and pair.modality_gap is None
    assert "dimensions differ" in pair.note and 0 <= pair.hellinger <= 1


def test_to_frame_matches_to_dict(tmp_path):
    path = str(tmp_path / "x.npy")
    np.save(path, _wide_spectrum(400, 16, seed=8))
    result = analyze(path)["embeddings"]
    frame = result.to_frame()
    document = result.to_dict()
    assert list(frame.columns) == ["key", "index", "singular_value", "band", "energy_share", "snr"]
    assert_allclose(frame["singular_value"], document["singular_values"])
    assert frame["band"].tolist() == document["components"]["band"]
    assert frame["energy_share"].sum() == pytest.approx(1.0)
    json.dumps(document, allow_nan=False)  # strict JSON: no NaN anywhere


def test_nonfinite_rows_refused_then_dropped(tmp_path):
    matrix = np.random.default_rng(9).standard_normal((50, 6))
    matrix[[4, 20, 21]] = np.nan
    path = str(tmp_path / "x.npy")
    np.save(path, matrix)
    with pytest.raises(BadInputError, match=r"3 rows hold NaN or Inf \(the first at 0-based row 4\)"):
        analyze(path)
    result = analyze(path, options=AnalysisOptions(drop_nonfinite=True))["embeddings"]
    assert result.n_samples == 47 and result.dropped_nonfinite == 3
    _assert_spectrum(result.singular_values, _reference(matrix[np.isfinite(matrix).all(axis=1)]))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"top_k": 0}, "top_k"),
        ({"sample": 1}, "sample"),
        ({"noise_estimator": "mean"}, "noise_estimator"),
        ({"edge_level": 0.9}, "edge_level"),
        ({"alpha_window": (5, 2)}, "alpha_window"),
    ],
)
def test_bad_options_are_refused(kwargs, match):
    with pytest.raises(BadInputError, match=match):
        AnalysisOptions(**kwargs)


def test_iqr_estimator_uses_centred_entries(tmp_path):
    noise = np.random.default_rng(10).normal(7.0, 0.4, (4000, 50))  # a large mean, removed by centering
    path = str(tmp_path / "x.npy")
    np.save(path, noise)
    result = analyze(path, options=AnalysisOptions(noise_estimator="iqr"))["embeddings"]
    assert result.partition.sigma == pytest.approx(0.4, rel=0.02)
    assert result.to_dict()["bands"]["noise"]["count"] == 50


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _torchrun(arguments, env):
    return subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(_free_port()), "-m", "sdetool", *arguments],
        env=env, timeout=300, capture_output=True, text=True,
    )


@pytest.mark.slow
def test_torchrun_names_the_first_nonfinite_row_once(tmp_path):
    shards = []
    for index in range(3):
        rows = np.random.default_rng(index).standard_normal((100, 8))
        if index == 2:
            rows[50] = np.nan  # global row 250, read by rank 0 (shards 0 and 2)
        if index == 1:
            rows[[10, 20]] = np.inf  # global rows 110 and 120, read by rank 1
        shards.append(str(tmp_path / f"s{index}.npy"))
        np.save(shards[-1], rows)
    completed = _torchrun(["analyze", *shards, "-q"], {**os.environ, "OMP_NUM_THREADS": "1"})
    assert completed.returncode != 0  # each rank exits 2; torchrun reports a failed job
    errors = [line for line in completed.stderr.splitlines() if line.startswith("sdetool: error")]
    assert errors == [errors[0]] and "3 rows hold NaN or Inf (the first at 0-based row 110)" in errors[0]


@pytest.mark.slow
def test_torchrun_two_ranks_equal_one_process(tmp_path):
    matrix = _wide_spectrum(1200, 20, seed=11).astype(np.float32)
    shards = []
    for index, (start, stop) in enumerate([(0, 300), (300, 700), (700, 1000), (1000, 1200)]):
        shards.append(str(tmp_path / f"emb-{index}.h5"))
        store.write_set(shards[-1], "image", matrix[start:stop])
    single = tmp_path / "single.json"
    double = tmp_path / "double.json"
    common = ["--noise-estimator", "iqr", "--sample", "1000", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "sdetool", "analyze", *shards, "--json", str(single), *common],
                   check=True, env=env, timeout=120)
    completed = _torchrun(["analyze", *shards, "--json", str(double), *common], env)
    assert completed.returncode == 0, completed.stderr[-2000:]
    one, two = json.loads(single.read_text()), json.loads(double.read_text())
    assert two["n_samples"] == one["n_samples"] == 1000
    _assert_spectrum(np.array(two["singular_values"]), np.array(one["singular_values"]))
    assert two["noise"]["sigma"] == pytest.approx(one["noise"]["sigma"], rel=1e-12)  # same entry sample
    assert {k: v["count"] for k, v in two["bands"].items()} == {k: v["count"] for k, v in one["bands"].items()}


def test_rank_deficient_input_keeps_its_noise_level(tmp_path):
    # Rank 100 in d = 256 plus small noise inside the 100-dim column space (a projection head into a
    # larger space): the 156 numerically zero values must not drag the noise level to zero.
    rng = np.random.default_rng(12)
    basis = np.linalg.qr(rng.standard_normal((256, 100)))[0]
    scores = rng.standard_normal((5000, 100)) * 0.1
    scores[:, :5] *= 60
    matrix = (scores @ basis.T).astype(np.float64)
    path = str(tmp_path / "lowrank.npy")
    np.save(path, matrix)
    document = analyze(path).to_dict()
    assert document["noise"]["numerical_rank"] == 100
    assert document["noise"]["sigma"] == pytest.approx(0.1, rel=0.03)
    assert document["bands"]["strong"]["count"] + document["bands"]["weak"]["count"] == 5
    assert document["bands"]["noise"]["count"] == 251


def test_noiseless_rank_one_is_reported_with_its_reason(tmp_path):
    path = str(tmp_path / "rank1.npy")
    np.save(path, np.outer(np.arange(1.0, 41.0), np.ones(6)))
    document = analyze(path).to_dict()  # a degenerate report, not an error (tests/analysis/test_degenerate.py has more)
    assert document["noise"]["numerical_rank"] == 1 and document["noise"]["sigma"] is None
    assert "numerical rank 1" in document["noise"]["note"] and document["noise"]["note"] in document["notes"]


def test_top_k_is_capped_at_the_rank(tmp_path):
    rng = np.random.default_rng(13)
    a = rng.standard_normal((6, 20))
    path = str(tmp_path / "few.npz")
    np.savez(path, a=a, b=a[::-1].copy())  # the same rows in another order: the same row space
    report = analyze(path, options=AnalysisOptions(top_k=10))
    (pair,) = report.cross
    assert pair.top_k == 5  # centred 6 x 20: rank 5
    assert pair.subspace_overlap == pytest.approx(1.0, abs=1e-9)


def test_power_law_window_is_null_for_short_spectra(tmp_path):
    path = str(tmp_path / "short.npy")
    np.save(path, np.random.default_rng(14).standard_normal((200, 6)))
    document = analyze(path).to_dict()
    assert document["metrics"]["power_law_window"] is None and document["metrics"]["power_law_alpha"] is None
