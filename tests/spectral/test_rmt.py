"""Random-matrix theory functions against published constants and Monte Carlo ground truth."""

import math

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy import integrate

from sdetool.spectral import rmt


def test_tracy_widom_quantiles_match_published_values():
    # Tracy & Widom (1996) tables, also METHOD.md section 3.
    assert_allclose(rmt.tracy_widom1_quantile(0.95), 0.9793, atol=5e-4)
    assert_allclose(rmt.tracy_widom1_quantile(0.99), 2.0234, atol=5e-4)


def test_tracy_widom_mean_and_variance():
    # Mean -1.2065335745820 and variance 1.6077810345810 of TW1 (Bornemann 2010, table 1), from the
    # CDF alone: E[S] = int_0^inf (1 - F) - int_-inf^0 F and E[S^2] = int_0^inf 2s (1 - F) - int_-inf^0 2s F.
    def tail(weight):
        upper = integrate.quad(lambda s: weight(s) * (1 - rmt.tracy_widom1_cdf(s)), 0, 10, epsabs=1e-9)[0]
        lower = integrate.quad(lambda s: weight(s) * rmt.tracy_widom1_cdf(s), -10, 0, epsabs=1e-9)[0]
        return upper - lower

    mean = tail(lambda s: 1.0)
    second = tail(lambda s: 2.0 * s)
    assert_allclose(mean, -1.2065335745820, atol=1e-6)
    assert_allclose(second - mean**2, 1.6077810345810, atol=1e-5)


def test_tracy_widom_cdf_is_monotone_and_bounded():
    values = [rmt.tracy_widom1_cdf(s) for s in np.linspace(-12, 14, 60)]
    assert values[0] == 0.0 and values[-1] == 1.0
    assert all(b >= a - 1e-12 for a, b in zip(values, values[1:]))


@pytest.mark.parametrize("beta", [1.0, 0.5, 0.25, 0.1, 0.01])
def test_marchenko_pastur_pdf_integrates_to_one_and_median_halves_it(beta):
    lower, upper = rmt.marchenko_pastur_support(beta)
    total = integrate.quad(lambda x: rmt.marchenko_pastur_pdf(x, beta), lower, upper, limit=400)[0]
    assert_allclose(total, 1.0, atol=1e-6)
    median = rmt.marchenko_pastur_median(beta)
    below = integrate.quad(lambda x: rmt.marchenko_pastur_pdf(x, beta), lower, median, limit=400)[0]
    assert_allclose(below, 0.5, atol=1e-6)


@pytest.mark.parametrize("n,d", [(4000, 2000), (3000, 300), (2000, 2000)])
def test_marchenko_pastur_median_matches_monte_carlo(n, d):
    rng = np.random.default_rng(1)
    noise = rng.standard_normal((n, d))
    eigenvalues = np.linalg.eigvalsh(noise.T @ noise / max(n, d))
    assert_allclose(np.median(eigenvalues), rmt.marchenko_pastur_median(d / n), rtol=5e-3)


def test_gavish_donoho_lambda_square_case():
    assert_allclose(rmt.gavish_donoho_lambda(1.0), 4.0 / math.sqrt(3.0), rtol=1e-12)
    # Monotone in beta and tends to sqrt(2) * 1 ... (lambda*(0) = sqrt(2)).
    assert rmt.gavish_donoho_lambda(1e-9) == pytest.approx(math.sqrt(2.0), rel=1e-6)


def test_noise_edge_without_margin_is_the_mp_edge():
    assert rmt.noise_edge(2.0, 900, 400, level=0.0) == pytest.approx(2.0 * (30 + 20))


def test_noise_edge_margin_grows_as_level_shrinks():
    edges = [rmt.noise_edge(1.0, 5000, 500, level) for level in (0.5, 0.05, 0.01, 0.001)]
    assert all(b > a for a, b in zip(edges, edges[1:]))


def test_noise_edge_level_is_calibrated_on_pure_noise():
    # With the true sigma, the top singular value of noise exceeds the 5% edge about 5% of the time.
    rng = np.random.default_rng(3)
    n, d, trials = 400, 100, 300
    edge = rmt.noise_edge(1.0, n, d, level=0.05)
    tops = []
    for _ in range(trials):
        noise = rng.standard_normal((n, d))
        tops.append(math.sqrt(np.linalg.eigvalsh(noise.T @ noise)[-1]))
    exceed = sum(top > edge for top in tops)
    assert 3 <= exceed <= 30  # 15 expected; binomial 99.9% range


def test_spike_strength_inverts_spike_observed():
    beta = 0.3
    strengths = np.linspace(rmt.bbp_threshold(beta) * 1.01, 8.0, 50)
    assert_allclose(rmt.spike_strength(rmt.spike_observed(strengths, beta), beta), strengths, rtol=1e-9)
    assert np.isnan(rmt.spike_strength(np.array([1.0 + math.sqrt(beta)]), beta)).all()


def test_spike_observed_matches_simulation():
    rng = np.random.default_rng(5)
    n, d, x = 4000, 1000, 1.5
    beta = d / n
    u = rng.standard_normal(n)
    v = rng.standard_normal(d)
    u /= np.linalg.norm(u)
    v /= np.linalg.norm(v)
    matrix = rng.standard_normal((n, d)) + x * math.sqrt(n) * np.outer(u, v)
    observed = np.linalg.norm(matrix, 2) / math.sqrt(n)
    assert_allclose(observed, rmt.spike_observed(x, beta), rtol=0.01)


@pytest.mark.parametrize("bad", [0.0, -0.1, 1.5, float("nan")])
def test_beta_outside_unit_interval_is_refused(bad):
    with pytest.raises(ValueError, match="beta"):
        rmt.marchenko_pastur_median(bad)
