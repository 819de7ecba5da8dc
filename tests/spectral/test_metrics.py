"""Scalar metrics and cross-modal distances against closed forms and brute force."""

import math

import numpy as np
import pytest
from numpy.testing import assert_allclose
from scipy.stats import ortho_group

from sdetool.spectral import metrics


def test_effective_rank_closed_forms():
    assert metrics.effective_rank(np.ones(37)) == pytest.approx(37.0)
    assert metrics.effective_rank(np.array([5.0, 0.0, 0.0])) == pytest.approx(1.0)
    values = np.array([3.0, 1.0])
    p = values / values.sum()
    assert metrics.effective_rank(values) == pytest.approx(math.exp(-(p * np.log(p)).sum()))
    assert metrics.effective_rank(np.zeros(4)) == 0.0  # a collapsed set spans no dimension


def test_stable_rank_and_participation_ratio():
    values = np.array([2.0, 1.0, 1.0])
    assert metrics.stable_rank(values) == pytest.approx(6.0 / 4.0)
    eigenvalues = values**2
    assert metrics.participation_ratio(values) == pytest.approx(eigenvalues.sum() ** 2 / (eigenvalues**2).sum())
    assert metrics.participation_ratio(np.ones(10)) == pytest.approx(10.0)


@pytest.mark.parametrize("alpha", [0.5, 1.0, 2.3])
def test_power_law_alpha_is_exact_on_a_power_law(alpha):
    index = np.arange(1, 301, dtype=float)
    values = np.sqrt(7.0 * index**-alpha)  # lambda = s^2 = 7 i^-alpha
    fitted, r2 = metrics.power_law_alpha(values, (10, 100))
    assert fitted == pytest.approx(alpha, rel=1e-10)
    assert r2 == pytest.approx(1.0, abs=1e-12)


def test_power_law_window_is_clipped_and_needs_three_points():
    values = np.geomspace(10, 1, 12)
    alpha, _ = metrics.power_law_alpha(values, (10, 100))  # indices 10..12: three points
    assert np.isfinite(alpha)
    assert all(math.isnan(x) for x in metrics.power_law_alpha(values[:11], (10, 100)))
    assert all(math.isnan(x) for x in metrics.power_law_alpha(values, (5, 4)))


def test_mean_cosine_equals_brute_force():
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((60, 5)) + np.array([2.0, 0, 0, 0, 0])
    unit = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    cosines = unit @ unit.T
    brute = (cosines.sum() - np.trace(cosines)) / (60 * 59)
    assert metrics.mean_cosine(unit.sum(axis=0), 60) == pytest.approx(brute, rel=1e-12)
    assert metrics.mean_cosine(np.array([3.0, 0.0]), 3) == pytest.approx(1.0)
    assert math.isnan(metrics.mean_cosine(np.ones(2), 1))


def test_hellinger_spectral_distance():
    a = np.array([3.0, 2.0, 1.0])
    assert metrics.hellinger_spectral_distance(a, 5 * a) == pytest.approx(0.0, abs=1e-7)
    assert metrics.hellinger_spectral_distance([1.0, 0.0], [0.0, 1.0]) == pytest.approx(1.0)
    # Padding: a shorter spectrum compares as if its missing values were zero.
    assert metrics.hellinger_spectral_distance([1.0], [1.0, 0.0, 0.0]) == pytest.approx(0.0, abs=1e-7)
    p, q = np.array([0.8, 0.2]), np.array([0.5, 0.5])
    expected = math.sqrt(1 - np.sum(np.sqrt(p * q)))
    assert metrics.hellinger_spectral_distance(np.sqrt(p), np.sqrt(q)) == pytest.approx(expected)


def test_subspace_overlap_is_rotation_and_sign_invariant():
    basis = ortho_group.rvs(8, random_state=1)
    a = basis[:, :3]
    rotation = ortho_group.rvs(3, random_state=2)
    overlap, angles = metrics.subspace_overlap(a, -a @ rotation)
    assert overlap == pytest.approx(1.0)
    assert_allclose(angles, 0.0, atol=1e-6)
    overlap, angles = metrics.subspace_overlap(a, basis[:, 3:6])
    assert overlap == pytest.approx(0.0, abs=1e-12)
    assert_allclose(angles, math.pi / 2)


def test_subspace_overlap_partial_and_principal_angle():
    e = np.eye(4)
    theta = 0.3
    a = e[:, :2]
    b = np.stack([e[:, 0], math.cos(theta) * e[:, 1] + math.sin(theta) * e[:, 2]], axis=1)
    overlap, angles = metrics.subspace_overlap(a, b)
    assert overlap == pytest.approx((1 + math.cos(theta) ** 2) / 2)
    assert_allclose(angles, [0.0, theta], atol=1e-7)
    with pytest.raises(ValueError, match="same shape"):
        metrics.subspace_overlap(a, e[:, :3])


def test_modality_gap():
    assert metrics.modality_gap(np.array([1.0, 0.0]), np.array([0.0, 1.0])) == pytest.approx(math.sqrt(2))


def test_empty_spectrum_has_rank_zero_and_no_ratios():
    # one centred row has no singular components: rank 0, the ratios are 0 / 0 (tests/analysis/test_degenerate.py)
    assert metrics.effective_rank(np.array([])) == 0.0
    assert math.isnan(metrics.stable_rank(np.array([]))) and math.isnan(metrics.participation_ratio(np.array([])))
    with pytest.raises(ValueError, match="1-D"):
        metrics.stable_rank(np.zeros((2, 2)))
