"""The noise nulls (issue 14): the generalized Marchenko-Pastur edge against exact references and simulation,
pure noise kept clean, planted spikes found, shadowing undone by deflation, the permutation null, the
Marchenko-Pastur CDF and the Kolmogorov-Smirnov fit of the bulk, through the library and the CLI."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from cli_helpers import assert_ok, invoke
from numpy.testing import assert_allclose
from scipy import integrate, stats
from threadpoolctl import threadpool_limits

from sdetool.analysis.options import AnalysisOptions
from sdetool.spectral import nulls, rmt, spectrum
from sdetool.spectral.gram import GramAccumulator
from sdetool.spectral.summary import partition_state

DEFAULT = "default"  # the options' default null, whatever it is called


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    """One BLAS thread: the machine is shared, and many small decompositions run faster on one."""
    with threadpool_limits(1):
        yield


def partition_of(matrix: np.ndarray, **options) -> spectrum.SpectralPartition:
    """The partition ``analyze`` makes of a matrix held in memory (same accumulator, same code path)."""
    chosen = AnalysisOptions(**options)
    n, d = matrix.shape
    accumulator = GramAccumulator(d, keep_rows=n <= d, sample_rows=chosen.sample_rows(d), seed=chosen.seed)
    accumulator.update(matrix)
    return partition_state(accumulator.finalize(), chosen).partition


def null_options(null: str) -> dict:
    return {} if null == DEFAULT else {"null": null}


def signal_count(part: spectrum.SpectralPartition) -> int:
    return int(np.sum(part.labels < 2))


def column_stds(d: int, heteroscedastic: bool) -> np.ndarray:
    """The issue's profile: independent columns of std 0.3 .. 3 (or all 1)."""
    return np.linspace(0.3, 3.0, d) if heteroscedastic else np.ones(d)


def spiked(n: int, d: int, multiples, stds: np.ndarray, seed) -> np.ndarray:
    """Spikes at ``multiples`` of the BBP threshold (in units of the rms noise) plus noise of column stds ``stds``."""
    rng = np.random.default_rng(seed)
    rms = float(np.sqrt(np.mean(stds**2)))
    strengths = rmt.bbp_threshold(min(n, d) / max(n, d)) * np.asarray(multiples, dtype=np.float64)
    left = rng.standard_normal((n, len(strengths)))
    left, _ = np.linalg.qr(left - left.mean(axis=0))  # orthogonal to the ones: centring keeps the spikes
    right, _ = np.linalg.qr(rng.standard_normal((d, len(strengths))))
    signal = (left * (strengths * rms * math.sqrt(max(n, d)))) @ right.T
    return signal + rng.standard_normal((n, d)) * stds


# --- the generalized Marchenko-Pastur edge -----------------------------------------------------------


@pytest.mark.parametrize("t,n,d", [(1.0, 500, 50), (2.5, 300, 300), (0.04, 100, 400), (7.0, 10000, 3)])
def test_equal_variances_give_the_marchenko_pastur_edge(t, n, d):
    assert_allclose(nulls.generalized_mp_edge(np.full(d, t), n), t * (1 + math.sqrt(d / n)) ** 2, rtol=1e-12)


def brute_force_edge(variances: np.ndarray, n: int) -> float:
    """``min over m in (-1/max t, 0) of z(m)`` on a fine grid, refined twice around the best point."""
    t = np.asarray(variances, dtype=np.float64)
    t = t[t > 0]

    def z(m: np.ndarray) -> np.ndarray:
        return -1.0 / m + np.sum(t[None, :] / (1.0 + np.outer(m, t)), axis=1) / n

    low, high = -1.0 / t.max(), 0.0
    best = None
    for _ in range(3):
        grid = np.linspace(low, high, 20001)[1:-1]
        values = z(grid)
        best = int(np.argmin(values))
        step = grid[1] - grid[0]
        low, high = max(grid[best] - 2 * step, -1.0 / t.max()), min(grid[best] + 2 * step, 0.0)
    return float(values[best])


PROFILES = {
    "linear std 0.3..3": np.linspace(0.3, 3.0, 256) ** 2,
    "two-point": np.r_[np.full(10, 9.0), np.ones(90)],
    "exponential": np.random.default_rng(3).exponential(1.0, 200),
    "with zero columns": np.r_[np.zeros(5), np.linspace(0.5, 2.0, 45)],
    "one dominant column": np.r_[100.0, np.ones(99)],
}


@pytest.mark.parametrize("profile", sorted(PROFILES))
@pytest.mark.parametrize("n", [150, 5000])
def test_generalized_edge_is_the_minimum_of_z(profile, n):
    variances = PROFILES[profile]
    assert_allclose(nulls.generalized_mp_edge(variances, n), brute_force_edge(variances, n), rtol=1e-9)


def test_generalized_edge_scales_with_the_variances_and_ignores_zero_columns():
    variances = PROFILES["exponential"]
    edge = nulls.generalized_mp_edge(variances, 700)
    assert_allclose(nulls.generalized_mp_edge(37.0 * variances, 700), 37.0 * edge, rtol=1e-12)
    assert_allclose(nulls.generalized_mp_edge(np.r_[variances, np.zeros(30)], 700), edge, rtol=1e-12)
    assert nulls.generalized_mp_edge(np.zeros(8), 700) == 0.0
    with pytest.raises(ValueError, match="1-D"):
        nulls.generalized_mp_edge(np.ones((3, 3)), 10)


@pytest.mark.parametrize("profile", ["linear std 0.3..3", "two-point", "exponential"])
def test_generalized_edge_against_simulated_top_eigenvalues(profile):
    """Gaussian columns of these variances: the top eigenvalue of X^T X / n sits just below the edge b and
    stays under the dpa edge (with its Tracy-Widom margin) in at least 95 % of draws."""
    variances = PROFILES[profile][:100] if profile == "linear std 0.3..3" else PROFILES[profile]
    n, d = 2000, variances.size
    rng = np.random.default_rng([14, d])
    tops = np.array([np.linalg.eigvalsh(x.T @ x / n)[-1]
                     for x in (rng.standard_normal((n, d)) * np.sqrt(variances) for _ in range(40))])
    edge = nulls.generalized_mp_edge(variances, n)
    assert 0.95 * edge < tops.mean() < edge  # finite n: the top sits a Tracy-Widom shift below the edge
    # a wrong profile (the single mean variance) misses the simulated top by far more than that
    assert abs(nulls.generalized_mp_edge(np.full(d, variances.mean()), n) / tops.mean() - 1) > 0.1
    assert np.mean(tops > nulls.dpa_edge(variances, n, d, 0.01) ** 2 / n) <= 0.05


@pytest.mark.parametrize("sigma,n,d,level", [(1.0, 1000, 64, 0.01), (0.3, 200, 500, 0.05), (2.0, 64, 64, 0.0)])
def test_dpa_edge_with_equal_variances_is_the_mp_noise_edge(sigma, n, d, level):
    assert_allclose(nulls.dpa_edge(np.full(d, sigma**2), n, d, level), rmt.noise_edge(sigma, n, d, level), rtol=1e-12)
    edge = rmt.noise_edge(sigma, n, d, level)
    assert_allclose(nulls.equivalent_sigma(edge, n, d, level), sigma, rtol=1e-12)


# --- pure noise stays clean, spikes are found ---------------------------------------------------------


def clean_draws(null: str, n: int, d: int, heteroscedastic: bool, draws: int) -> int:
    stds = column_stds(d, heteroscedastic)
    clean = 0
    for draw in range(draws):
        matrix = np.random.default_rng([14, n, d, draw]).standard_normal((n, d)) * stds
        clean += signal_count(partition_of(matrix, seed=draw, **null_options(null))) == 0
    return clean


@pytest.mark.parametrize("heteroscedastic", [False, True], ids=["unit noise", "column std 0.3..3"])
@pytest.mark.parametrize("null", ["dpa", "ddpa", "permutation", DEFAULT])
@pytest.mark.parametrize("n,d", [(600, 40), (150, 300)])
def test_pure_noise_is_clean_in_at_least_95_percent_of_draws(null, heteroscedastic, n, d):
    assert clean_draws(null, n, d, heteroscedastic, draws=60) >= 57


def test_the_default_null_is_ddpa_and_does_not_read_unequal_variances_as_signal():
    assert AnalysisOptions().null == spectrum.PartitionOptions().null == "ddpa"
    stds = column_stds(64, heteroscedastic=True)
    matrix = np.random.default_rng(1).standard_normal((1000, 64)) * stds
    assert signal_count(partition_of(matrix)) == 0
    assert signal_count(partition_of(matrix, null="mp")) > 32  # the old single-sigma reading: most of it signal


def test_the_issue_case_through_the_cli(tmp_path):
    """5000 x 256, independent columns of std 0.3 .. 3: the default is clean, mp calls most of it signal, and
    the bulk's distance from the single-sigma law is reported with a note; --fail-if reads noise.mp_fit."""
    matrix = np.random.default_rng(14).standard_normal((5000, 256)) * column_stds(256, heteroscedastic=True)
    path = tmp_path / "hetero.npy"
    np.save(path, matrix.astype(np.float32))
    default = json.loads(assert_ok(invoke("analyze", path, "--json", "-", "-q")).stdout)
    assert default["noise"]["null"] == "ddpa"
    assert default["bands"]["strong"]["count"] + default["bands"]["weak"]["count"] == 0
    assert default["bands"]["noise"]["energy_share"] == 1.0
    mp = json.loads(assert_ok(invoke("analyze", path, "--null", "mp", "--json", "-", "-q")).stdout)
    assert mp["noise"]["null"] == "mp"
    assert mp["bands"]["weak"]["count"] + mp["bands"]["strong"]["count"] > 150
    for document in (default, mp):
        assert document["n"] == 5000
        fit = document["noise"]["mp_fit"]
        assert fit["ks"] > 0.1 and fit["fits"] is False and fit["limit"] >= nulls.KS_FIT_LIMIT
        assert "Kolmogorov-Smirnov" in fit["note"] and fit["note"] in document["notes"]
    assert invoke("analyze", path, "--fail-if", "noise.mp_fit.ks > 0.1", "-q").exit_code == 1
    assert invoke("analyze", path, "--fail-if", "noise.mp_fit.ks > 0.9", "-q").exit_code == 0


@pytest.mark.parametrize("null,heteroscedastic", [("ddpa", False), ("ddpa", True), ("mp", False)])
def test_planted_spikes_are_found(null, heteroscedastic):
    """Five spikes at 4 to 10 times the detection threshold: ddpa (and mp in unit noise) finds exactly five, in
    three seeds."""
    stds = column_stds(64, heteroscedastic)
    for seed in range(3):
        matrix = spiked(2000, 64, [10.0, 8.0, 6.0, 5.0, 4.0], stds, [14, seed])
        assert signal_count(partition_of(matrix, null=null, seed=seed)) == 5, (null, seed)


@pytest.mark.parametrize("heteroscedastic", [False, True], ids=["unit noise", "column std 0.3..3"])
@pytest.mark.parametrize("null", ["dpa", "ddpa", "permutation"])
def test_one_spike_is_found_by_every_column_variance_null(null, heteroscedastic):
    stds = column_stds(64, heteroscedastic)
    for seed in range(3):
        matrix = spiked(2000, 64, [5.0], stds, [18, seed])
        assert signal_count(partition_of(matrix, null=null, seed=seed)) == 1, (null, seed)


def test_deflation_recovers_components_a_strong_spike_shadows():
    """One spike at 150x the threshold raises every column variance; the four at 2.5x fall under the dpa edge
    but ddpa, which removes the found component's signal energy and recomputes the edge, finds all five."""
    for seed in range(3):
        matrix = spiked(2000, 64, [150.0, 2.5, 2.5, 2.5, 2.5], np.ones(64), [15, seed])
        shadowed = partition_of(matrix, null="dpa")
        deflated = partition_of(matrix, null="ddpa")
        assert signal_count(shadowed) == 1
        assert signal_count(deflated) == 5
        assert deflated.edge < shadowed.edge / 3  # back near the noise level's own edge
        assert_allclose(deflated.edge, rmt.noise_edge(1.0, 1999, 64, 0.01), rtol=0.05)


def test_deflated_edge_records_each_step():
    matrix = spiked(2000, 64, [150.0, 2.5, 2.5, 2.5, 2.5], np.ones(64), [15, 0])
    centred = matrix - matrix.mean(axis=0)
    _, values, vt = np.linalg.svd(centred, full_matrices=False)
    n, d = 1999, 64
    variances = np.sum(centred**2, axis=0) / n
    deflation = nulls.deflated_edge(values, variances, n, d, lambda k: vt[:k].T, level=0.01)
    assert deflation.found == 5 and len(deflation.edges) == 6
    assert_allclose(deflation.edges[0], nulls.dpa_edge(variances, n, d, 0.01), rtol=1e-12)
    assert all(later <= earlier for earlier, later in zip(deflation.edges, deflation.edges[1:]))
    assert values[4] > deflation.edge >= values[5] and deflation.edge == deflation.edges[-1]
    capped = nulls.deflated_edge(values, variances, n, d, lambda k: vt[:k].T, level=0.01, max_found=2)
    assert capped.found == 2 and capped.edges == deflation.edges[:3]


def test_null_edge_names_what_a_null_lacks():
    values = np.linspace(3.0, 1.0, 10)
    with pytest.raises(ValueError, match="variances and vectors"):
        nulls.null_edge("ddpa", 1.0, values, 100, 10, 0.01)
    with pytest.raises(ValueError, match="permuted_tops"):
        nulls.null_edge("permutation", 1.0, values, 100, 10, 0.01, nulls.NullInputs(variances=np.ones(10)))
    with pytest.raises(ValueError, match="one of mp, dpa, ddpa, permutation"):
        nulls.null_edge("horn", 1.0, values, 100, 10, 0.01)
    mp = nulls.null_edge("mp", 0.5, values, 100, 10, 0.01)
    assert mp.found is None and mp.edge == rmt.noise_edge(0.5, 100, 10, 0.01)


# --- the permutation null ------------------------------------------------------------------------------


def test_permuting_one_column_keeps_its_norm():
    column = np.random.default_rng(2).standard_normal((300, 1)) * 3.0 + 5.0
    tops = nulls.permuted_top_values(column, repeats=4, seed=1)
    assert_allclose(tops, np.linalg.norm(column - column.mean()), rtol=1e-12)


def test_permutation_destroys_correlation_and_is_seeded():
    """Rank-one columns plus a little noise: permuted, the columns are independent Gaussians of the same
    variances, whose top value the generalized law predicts."""
    rng = np.random.default_rng(4)
    rows = np.outer(rng.standard_normal(400), rng.standard_normal(20)) + 0.1 * rng.standard_normal((400, 20))
    centred = rows - rows.mean(axis=0)
    n, d = 399, 20
    variances = np.sum(centred**2, axis=0) / n
    expected = math.sqrt(n * nulls.generalized_mp_edge(variances, n)) * nulls.mean_top_margin(n, d)
    tops = nulls.permuted_top_values(rows, repeats=20, seed=7)
    assert_allclose(tops.mean(), expected, rtol=0.05)
    assert np.linalg.svd(centred, compute_uv=False)[0] > 1.5 * tops.max()
    assert_allclose(nulls.permuted_top_values(rows, repeats=20, seed=7), tops, rtol=0, atol=0)
    assert not np.allclose(nulls.permuted_top_values(rows, repeats=20, seed=8), tops)


@pytest.mark.parametrize("sample_rows", [2001, 501])
def test_permutation_edge_is_the_dpa_edge_when_the_permutations_agree_with_the_law(sample_rows):
    """Permuted tops exactly at the mean the generalized law predicts (no spread): no correction, whatever
    the sample's size; tops above it raise the edge."""
    variances, n, d = PROFILES["two-point"], 2000, 100
    sample_n = sample_rows - 1
    predicted = nulls.generalized_mp_edge(variances, sample_n) * nulls.mean_top_margin(sample_n, d) ** 2
    tops = np.full(10, math.sqrt(predicted * sample_n))
    edge = nulls.permutation_edge(tops, sample_rows, n, variances, 0.01)
    assert_allclose(edge, nulls.dpa_edge(variances, n, d, 0.01), rtol=1e-12)
    assert nulls.permutation_edge(1.05 * tops, sample_rows, n, variances, 0.01) > 1.001 * edge


@pytest.mark.parametrize("heteroscedastic", [False, True], ids=["unit noise", "column std 0.3..3"])
def test_permutation_edge_is_close_to_dpa_on_noise(heteroscedastic):
    stds = column_stds(64, heteroscedastic)
    ratios = []
    for seed in range(8):
        matrix = np.random.default_rng([16, seed]).standard_normal((2000, 64)) * stds
        ratios.append(partition_of(matrix, null="permutation", seed=seed).edge / partition_of(matrix, null="dpa").edge)
    assert 0.97 < min(ratios) and max(ratios) < 1.03, ratios


def test_permutation_null_from_a_row_sample_smaller_than_the_matrix_stays_clean():
    """--null-rows below n: the permutation's correction is measured on the sample and carried to n rows."""
    stds = column_stds(32, heteroscedastic=True)
    clean = 0
    for draw in range(40):
        matrix = np.random.default_rng([17, draw]).standard_normal((3000, 32)) * stds
        part = partition_of(matrix, null="permutation", null_rows=300, seed=draw)
        clean += signal_count(part) == 0
    assert clean >= 38


# --- the Marchenko-Pastur CDF and the Kolmogorov-Smirnov fit -----------------------------------------


@pytest.mark.parametrize("beta", [0.05, 0.3, 0.7, 1.0])
def test_marchenko_pastur_cdf_against_numerical_integration(beta):
    lower, upper = rmt.marchenko_pastur_support(beta)
    points = np.linspace(lower, upper, 9)[1:-1]
    reference = [integrate.quad(rmt.marchenko_pastur_pdf, lower, x, args=(beta,), limit=200)[0] for x in points]
    assert_allclose(nulls.marchenko_pastur_cdf(points, beta), reference, rtol=0, atol=1e-6)
    assert_allclose(nulls.marchenko_pastur_cdf([lower - 1, lower, upper, upper + 1], beta), [0, 0, 1, 1], atol=1e-12)


def test_bulk_ks_distance_is_the_kolmogorov_smirnov_statistic():
    n, d, sigma = 1000, 200, 0.7
    values = np.linalg.svd(np.random.default_rng(5).standard_normal((n, d)) * sigma, compute_uv=False)
    eigenvalues = values**2 / (n * sigma**2)
    reference = stats.kstest(eigenvalues, lambda x: nulls.marchenko_pastur_cdf(x, d / n)).statistic
    assert_allclose(nulls.bulk_ks_distance(values, sigma, n, d), reference, rtol=1e-12)
    assert nulls.bulk_ks_distance(values, sigma, n, d) < 0.05
    assert math.isnan(nulls.bulk_ks_distance(values[:1], sigma, n, d))
    assert math.isnan(nulls.bulk_ks_distance(values, 0.0, n, d))


@pytest.mark.parametrize("heteroscedastic", [False, True], ids=["unit noise", "column std 0.3..3"])
def test_mp_fit_is_small_on_white_noise_and_large_on_unequal_variances(heteroscedastic):
    matrix = np.random.default_rng(6).standard_normal((2000, 128)) * column_stds(128, heteroscedastic)
    part = partition_of(matrix)
    if heteroscedastic:
        assert part.mp_ks > 0.2
    else:
        assert part.mp_ks < 0.05


# --- the report ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def spiked_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("nulls") / "spiked.npy"
    np.save(path, spiked(1500, 48, [20.0, 6.0, 3.0], column_stds(48, heteroscedastic=True), [22, 0]))
    return path


@pytest.mark.parametrize("null", ["mp", "dpa", "ddpa", "permutation"])
def test_noise_edge_is_the_singular_value_edge_in_use(spiked_file, null):
    document = json.loads(assert_ok(invoke("analyze", spiked_file, "--null", null, "--null-repeats", 5,
                                           "--null-rows", 800, "--json", "-", "-q")).stdout)
    noise = document["noise"]
    assert noise["null"] == null and noise["edge_level"] == 0.01
    values = np.asarray(document["singular_values"])
    noise_band = np.asarray(document["components"]["band"]) == "noise"
    assert np.all(values[noise_band] <= noise["edge"]) and np.all(values[~noise_band] > noise["edge"])
    n, d = document["n_effective"], document["dim"]
    assert_allclose(noise["mp_edge"], noise["sigma"] * (math.sqrt(n) + math.sqrt(d)), rtol=1e-12)
    if null == "mp":
        assert_allclose(noise["edge"], rmt.noise_edge(noise["sigma"], n, d, 0.01), rtol=1e-12)
    permutation = null == "permutation"
    assert (noise["null_repeats"], noise["null_rows"]) == ((5, 800) if permutation else (None, None))
    assert document["options"]["null"] == null


def test_permutation_null_reads_its_repeats_and_rows(spiked_file):
    def edge(*args) -> float:
        found = invoke("analyze", spiked_file, "--null", "permutation", *args, "--json", "-", "-q")
        return json.loads(assert_ok(found).stdout)["noise"]["edge"]

    first = edge("--null-repeats", 4, "--null-rows", 600)
    assert edge("--null-repeats", 4, "--null-rows", 600) == first  # seeded
    assert edge("--null-repeats", 4, "--null-rows", 600, "--seed", 1) != first
    assert edge("--null-repeats", 6, "--null-rows", 600) != first
    assert edge("--null-repeats", 4, "--null-rows", 900) != first
