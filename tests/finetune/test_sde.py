"""SDE fine-tuning (sdetool.finetune.sde) term by term against ground truth: float64 SVDs, the numpy partition
and metrics of sdetool.spectral.spectrum / sdetool.spectral.metrics, naive loops and finite differences."""

import json
import math

import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose

from sdetool.finetune import sde
from sdetool.finetune.sde import NOISE, STRONG, WEAK, SDEConfig, SDEState
from sdetool.spectral import metrics, rmt, spectrum
from sdetool.spectral.batchspectrum import batch_null_inputs
from sdetool.spectral.synthetic import planted_spikes

LOG10 = math.log(10.0)


def _features(b, d, seed, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(b, d, generator=generator, dtype=torch.float64).to(dtype)


def _svd64(features):
    """Centred float64 reference SVD ``C = U diag(s) V^T`` (thin) and the column mean."""
    matrix = np.asarray(features.detach().double().numpy() if torch.is_tensor(features) else features, dtype=np.float64)
    mean = matrix.mean(axis=0)
    u, s, vt = np.linalg.svd(matrix - mean, full_matrices=False)
    return mean, u, s, vt


def _projector(vectors):
    """Orthogonal projector onto the column span of ``vectors`` (not assumed orthonormal)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    q, _ = np.linalg.qr(vectors)
    return q @ q.T


def _info_nce_naive(image, text, groups, logit_scale):
    """Symmetric InfoNCE as a per-row python loop in float64 (targets spread over each row's group)."""
    image = np.asarray(image, dtype=np.float64)
    text = np.asarray(text, dtype=np.float64)
    image = image / np.maximum(np.linalg.norm(image, axis=1, keepdims=True), 1e-12)
    text = text / np.maximum(np.linalg.norm(text, axis=1, keepdims=True), 1e-12)
    scale = math.exp(logit_scale)
    b = image.shape[0]

    def direction(queries, keys):
        total = 0.0
        for i in range(b):
            logits = [scale * float(queries[i] @ keys[j]) for j in range(b)]
            top = max(logits)
            log_norm = top + math.log(sum(math.exp(x - top) for x in logits))
            positives = [j for j in range(b) if groups[j] == groups[i]]
            total += -sum(logits[j] - log_norm for j in positives) / len(positives)
        return total / b

    return 0.5 * (direction(image, text) + direction(text, image))


# --- schedules -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_ramp_endpoints_monotone_and_clipped(kind):
    for warmup in (0.25, 0.5, 1.0):
        assert sde.ramp(0.0, kind, warmup) == 0.0
        assert sde.ramp(warmup, kind, warmup) == pytest.approx(1.0, abs=1e-15)
        assert sde.ramp(1.0, kind, warmup) == pytest.approx(1.0, abs=1e-15)
        assert sde.ramp(-0.3, kind, warmup) == 0.0
        assert sde.ramp(1.7, kind, warmup) == pytest.approx(1.0, abs=1e-15)
        grid = np.linspace(0.0, 1.0, 101)
        values = np.array([sde.ramp(t, kind, warmup) for t in grid])
        assert np.all(np.diff(values) >= 0)
        assert np.all((values >= 0) & (values <= 1))


def test_ramp_linear_and_cosine_shapes():
    warmup = 0.4
    for t in np.linspace(0.0, warmup, 9):
        x = t / warmup
        assert sde.ramp(t, "linear", warmup) == pytest.approx(x, abs=1e-15)
        assert sde.ramp(t, "cosine", warmup) == pytest.approx(0.5 * (1 - math.cos(math.pi * x)), abs=1e-15)
    # The half-cosine meets the line at the midpoint, lags it before and leads it after.
    assert sde.ramp(0.2, "cosine", warmup) == pytest.approx(0.5, abs=1e-15)
    assert sde.ramp(0.1, "cosine", warmup) < sde.ramp(0.1, "linear", warmup)
    assert sde.ramp(0.3, "cosine", warmup) > sde.ramp(0.3, "linear", warmup)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_ramp_without_warmup_is_one_throughout(kind):
    for t in (0.0, 0.01, 0.5, 1.0):
        assert sde.ramp(t, kind, 0.0) == 1.0


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_schedule_formulas(kind):
    config = SDEConfig(alpha_max=0.3, rho_0=0.6, rho_min=0.04, lambda_0=2.0, lambda_min=0.25, ramp=kind, warmup=0.6)
    for t in (0.0, 0.15, 0.3, 0.45, 0.6, 0.9, 1.0):
        r = sde.ramp(t, kind, 0.6)
        weights = sde.schedule(t, config)
        assert weights["ramp"] == r
        assert weights["alpha"] == pytest.approx(0.3 * r, abs=1e-15)
        assert weights["rho"] == pytest.approx(0.6 * (1 - r) + 0.04, abs=1e-15)
        assert weights["lambda"] == pytest.approx(2.0 * (1 - r) + 0.25, abs=1e-15)
    start, end = sde.schedule(0.0, config), sde.schedule(1.0, config)
    assert (start["alpha"], start["rho"], start["lambda"]) == pytest.approx((0.0, 0.64, 2.25))
    assert (end["alpha"], end["rho"], end["lambda"]) == pytest.approx((0.3, 0.04, 0.25))


# --- batch spectrum ------------------------------------------------------------------------------

SHAPES = [(12, 30), (16, 16), (40, 10)]  # B < d, B = d (left basis), B > d (right basis)


@pytest.mark.parametrize("b,d", SHAPES)
def test_batch_spectrum_energies_match_float64_svd(b, d):
    features = _features(b, d, seed=b + d)
    spec = sde.batch_spectrum(features)
    _, _, s, _ = _svd64(features)
    p = min(b, d)
    assert spec.left == (b <= d)
    assert spec.energies.shape == (p,) and spec.energies.dtype == torch.float32
    energies = spec.energies.detach().double().numpy()
    assert np.all(energies >= 0) and np.all(np.diff(energies) <= 0)
    assert_allclose(energies, s[:p] ** 2, rtol=1e-4, atol=1e-5 * s[0] ** 2)
    assert_allclose(spec.singular_values, s[:p], rtol=1e-4, atol=3e-3 * s[0])
    assert_allclose(spec.centred.detach().numpy(), features.numpy() - features.numpy().mean(axis=0), atol=1e-6)


@pytest.mark.parametrize("b,d", SHAPES)
def test_project_is_u_diag_cs_vt(b, d):
    features = _features(b, d, seed=3 * b + d)
    spec = sde.batch_spectrum(features)
    mean, u, s, vt = _svd64(features)
    p = min(b, d)
    c = np.random.default_rng(b).uniform(-1.0, 1.0, p)
    got = spec.project(torch.as_tensor(c, dtype=torch.float32)).numpy()
    expected = (u[:, :p] * (c * s[:p])) @ vt[:p]
    assert_allclose(got, expected, atol=2e-5 * s[0])
    # c = 1 rebuilds the centred batch, c = -1 cancels it.
    ones = spec.project(torch.ones(p)).numpy()
    assert_allclose(ones, features.numpy() - mean, atol=2e-5 * s[0])
    assert_allclose(spec.project(-torch.ones(p)).numpy(), -(features.numpy() - mean), atol=2e-5 * s[0])


@pytest.mark.parametrize("b,d", SHAPES)
def test_top_right_vectors_span_the_reference_subspace(b, d):
    features = _features(b, d, seed=5 * b + d)
    spec = sde.batch_spectrum(features)
    _, _, s, vt = _svd64(features)
    for k in (1, 3, 5):
        vectors = spec.top_right_vectors(k).numpy().astype(np.float64)
        assert vectors.shape == (d, k)
        assert_allclose(vectors.T @ vectors, np.eye(k), atol=1e-4)
        assert_allclose(_projector(vectors), _projector(vt[:k].T), atol=1e-4)


def test_energies_carry_the_gradient_of_the_centred_batch():
    features = _features(20, 8, seed=11).requires_grad_(True)
    spec = sde.batch_spectrum(features)
    # sum of s_i^2 = ||C||_F^2, whose gradient with respect to F is 2 C.
    (total,) = torch.autograd.grad(spec.energies.sum(), features, retain_graph=True)
    _, u, s, vt = _svd64(features)
    assert_allclose(total.numpy(), 2 * spec.centred.detach().numpy(), atol=1e-5)
    # d s_1^2 / dF = 2 s_1 u_1 v_1^T (u_1 is orthogonal to the ones vector, so centring leaves it).
    (top,) = torch.autograd.grad(spec.energies[0], features)
    assert_allclose(top.numpy(), 2 * s[0] * np.outer(u[:, 0], vt[0]), atol=1e-4 * s[0])
    assert spec.basis.requires_grad is False


def test_batch_spectrum_is_float32_for_other_dtypes_and_under_autocast():
    features64 = _features(10, 6, seed=2, dtype=torch.float64)
    spec = sde.batch_spectrum(features64)
    assert spec.energies.dtype == torch.float32
    _, _, s, _ = _svd64(features64)
    assert_allclose(spec.singular_values, s[:6], rtol=1e-4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        spec16 = sde.batch_spectrum(features64.float())
    assert spec16.energies.dtype == torch.float32 and spec16.centred.dtype == torch.float32
    assert_allclose(spec16.singular_values, s[:6], rtol=1e-4)


# --- relative changes and enhancement -----------------------------------------------------------


def test_relative_changes_follow_the_band_rules():
    values = np.array([8.0, 4.0, 3.0, 2.0, 1.0, 0.5])
    labels = np.array([STRONG, STRONG, WEAK, WEAK, NOISE, NOISE])
    signs = np.array([1.0, -1.0, 1.0, -1.0, 1.0, -1.0])
    config = SDEConfig(epsilon=0.7, gamma_weak=0.4, eta=10.0)
    alpha, rho = 0.1, 0.3
    changes = sde.relative_changes(values, labels, signs, alpha, rho, config)
    expected = [0.1 * 0.7 * 1.0 * 1, 0.1 * 0.7 * 0.5 * -1, -0.04, -0.04, -0.3, -0.3]
    assert_allclose(changes, expected, rtol=1e-14)
    # Strong changes follow the signs; weak and noise always shrink, whatever the signs.
    assert changes[0] > 0 > changes[1]
    assert np.all(changes[2:] < 0)
    # The strongest component moves the most in relative terms: |c_i| falls with s_i / s_1.
    assert abs(changes[0]) > abs(changes[1])


def test_relative_changes_respect_the_eta_bound():
    rng = np.random.default_rng(0)
    values = np.sort(rng.uniform(0.1, 5.0, 30))[::-1]
    labels = rng.integers(0, 3, 30)
    signs = rng.choice([-1.0, 1.0], 30)
    loose = sde.relative_changes(values, labels, signs, 0.5, 0.6, SDEConfig(eta=100.0))
    size = np.linalg.norm(loose * values) / np.linalg.norm(values)
    assert size > 0.05
    # Below the bound: unchanged. Above: rescaled onto the bound, proportions kept.
    same = sde.relative_changes(values, labels, signs, 0.5, 0.6, SDEConfig(eta=size * 1.01))
    assert_allclose(same, loose, rtol=1e-14)
    for eta in (0.05, size / 2):
        bounded = sde.relative_changes(values, labels, signs, 0.5, 0.6, SDEConfig(eta=eta))
        assert np.linalg.norm(bounded * values) == pytest.approx(eta * np.linalg.norm(values), rel=1e-12)
        assert_allclose(bounded, loose * (eta / size), rtol=1e-12)
    # An all-zero spectrum gives finite changes and no division by zero.
    zero = sde.relative_changes(np.zeros(4), np.full(4, NOISE), np.ones(4), 0.2, 0.3, SDEConfig())
    assert np.all(np.isfinite(zero))


def test_enhance_passes_the_gradient_through_unchanged():
    image = _features(12, 20, seed=21).requires_grad_(True)
    text = _features(12, 20, seed=22)
    groups = torch.arange(12)
    spec = sde.batch_spectrum(image)
    changes = np.random.default_rng(1).uniform(-0.5, 0.5, 12)
    enhanced = sde.enhance(image, spec, changes)
    # A linear functional: the gradient is exactly its weight.
    weight = _features(12, 20, seed=23)
    (gradient,) = torch.autograd.grad((weight * enhanced).sum(), image, retain_graph=True)
    assert torch.equal(gradient, weight)
    # InfoNCE: the gradient with respect to F is the one at F' taken as a leaf (straight-through).
    (through,) = torch.autograd.grad(sde.info_nce(enhanced, text, groups, torch.tensor(LOG10)), image)
    leaf = enhanced.detach().clone().requires_grad_(True)
    (direct,) = torch.autograd.grad(sde.info_nce(leaf, text, groups, torch.tensor(LOG10)), leaf)
    assert torch.equal(through, direct)
    # And the value is F + U diag(c s) V^T.
    _, u, s, vt = _svd64(image)
    expected = image.detach().numpy() + (u * (changes * s)) @ vt
    assert_allclose(enhanced.detach().numpy(), expected, atol=1e-5 * s[0])


@pytest.mark.parametrize("b,d", [(14, 24), (40, 12)])
def test_enhance_shrinks_noise_components_by_one_minus_rho(b, d):
    features = _features(b, d, seed=b * d)
    spec = sde.batch_spectrum(features)
    values = spec.singular_values
    p = values.size
    labels = np.full(p, NOISE)
    labels[:2] = STRONG
    labels[2:4] = WEAK
    signs = np.ones(p)
    rho, alpha = 0.3, 0.1
    config = SDEConfig(eta=10.0, epsilon=0.5, gamma_weak=0.5)
    changes = sde.relative_changes(values, labels, signs, alpha, rho, config)
    assert_allclose(changes[labels == NOISE], -rho)
    enhanced = sde.enhance(features, spec, changes).numpy()
    mean, u, s, vt = _svd64(features)
    new_mean, _, new_s, new_vt = _svd64(enhanced)
    assert_allclose(new_mean, mean, atol=1e-5)  # the correction has zero column mean
    expected = np.sort(s[:p] * (1 + changes))[::-1]
    assert_allclose(new_s[:p], expected, rtol=1e-4, atol=1e-4 * s[0])
    # Noise components shrink by exactly (1 - rho) and keep their directions.
    noise = np.flatnonzero(labels == NOISE)
    noise = noise[s[noise] > 1e-3 * s[0]]
    assert_allclose((u[:, noise].T @ (enhanced - new_mean) @ vt[noise].T).diagonal(), (1 - rho) * s[noise],
                    rtol=1e-4, atol=1e-4 * s[0])
    assert_allclose(_projector(new_vt[:2].T), _projector(vt[:2].T), atol=1e-4)


# --- spectral loss terms -------------------------------------------------------------------------


def test_hellinger_squared_matches_metrics_distance_squared():
    rng = np.random.default_rng(4)
    for _ in range(5):
        a, b = -np.sort(-rng.uniform(0, 3, 20)), -np.sort(-rng.uniform(0, 3, 20))
        got = float(sde.hellinger_squared(torch.as_tensor(a), torch.as_tensor(b)))
        assert got == pytest.approx(metrics.hellinger_spectral_distance(a, b) ** 2, abs=1e-12)
    a = torch.tensor([4.0, 2.0, 1.0], dtype=torch.float64)
    assert float(sde.hellinger_squared(a, 3 * a)) == pytest.approx(0.0, abs=1e-12)  # scale-invariant
    disjoint = sde.hellinger_squared(torch.tensor([1.0, 0.0], dtype=torch.float64),
                                     torch.tensor([0.0, 1.0], dtype=torch.float64))
    assert float(disjoint) == pytest.approx(1.0, abs=1e-12)
    # Vanishing values (a rank-deficient batch) keep the gradient finite.
    values = torch.tensor([5.0, 1.0, 0.0, 0.0], dtype=torch.float64, requires_grad=True)
    sde.hellinger_squared(values, torch.tensor([3.0, 0.0, 1.0, 0.0], dtype=torch.float64)).backward()
    assert torch.isfinite(values.grad).all()
    # On batch spectra, as sde_loss calls it.
    spec_a, spec_b = sde.batch_spectrum(_features(30, 10, seed=6)), sde.batch_spectrum(_features(30, 10, seed=7))
    got = float(sde.hellinger_squared(spec_a.values, spec_b.values))
    reference = metrics.hellinger_spectral_distance(_svd64(_features(30, 10, seed=6))[2],
                                                    _svd64(_features(30, 10, seed=7))[2]) ** 2
    assert got == pytest.approx(reference, rel=1e-4, abs=1e-6)


def _shared_right_basis(b, d, rank, seed):
    """Two batches with the same right singular vectors (first ``rank`` of ``V``), different U and s."""
    rng = np.random.default_rng(seed)
    v, _ = np.linalg.qr(rng.standard_normal((d, d)))

    def batch(values):
        block = rng.standard_normal((b, rank))
        u, _ = np.linalg.qr(block - block.mean(axis=0))  # orthogonal to the ones vector
        return (u * values) @ v[:, :rank].T + rng.standard_normal(d)  # plus an offset: centring removes it

    first = batch(np.geomspace(20.0, 2.0, rank))
    second = batch(np.geomspace(9.0, 1.0, rank))
    return first, second, v


@pytest.mark.parametrize("b,d", [(20, 30), (60, 30)])
def test_subspace_misalignment_zero_for_identical_one_for_orthogonal_top_subspaces(b, d):
    k = 4
    first, second, v = _shared_right_basis(b, d, rank=10, seed=b)
    spec_a = sde.batch_spectrum(torch.as_tensor(first, dtype=torch.float32))
    spec_b = sde.batch_spectrum(torch.as_tensor(second, dtype=torch.float32))
    assert float(sde.subspace_misalignment(spec_a, spec_a, k)) == pytest.approx(0.0, abs=1e-5)
    assert float(sde.subspace_misalignment(spec_a, spec_b, k)) == pytest.approx(0.0, abs=1e-5)
    # A batch living in the orthogonal complement of the first one's row space.
    rng = np.random.default_rng(b + 1)
    u, _ = np.linalg.qr(rng.standard_normal((b, 10)))
    orthogonal = (u * np.geomspace(15.0, 3.0, 10)) @ v[:, 10:20].T
    spec_c = sde.batch_spectrum(torch.as_tensor(orthogonal, dtype=torch.float32))
    assert float(sde.subspace_misalignment(spec_a, spec_c, k)) == pytest.approx(1.0, abs=1e-5)


def test_subspace_misalignment_is_differentiable_in_the_features():
    image = _features(30, 12, seed=31).requires_grad_(True)
    text = _features(30, 12, seed=32).requires_grad_(True)
    value = sde.subspace_misalignment(sde.batch_spectrum(image), sde.batch_spectrum(text), 3)
    assert 0.0 <= value.item() <= 1.0
    value.backward()
    assert torch.isfinite(image.grad).all() and float(image.grad.abs().sum()) > 0
    assert torch.isfinite(text.grad).all() and float(text.grad.abs().sum()) > 0


@pytest.mark.parametrize("b,d", [(20, 30), (50, 16)])
def test_subspace_alignment_matches_reference_svds(b, d):
    a, c = _features(b, d, seed=41), _features(b, d, seed=42)
    mixed = a + 0.7 * c  # partly aligned with a
    spec_a, spec_m = sde.batch_spectrum(a), sde.batch_spectrum(mixed)
    _, _, _, vt_a = _svd64(a)
    _, _, _, vt_m = _svd64(mixed)
    for k in (1, 3, 6):
        reference = 1.0 - np.sum((vt_a[:k] @ vt_m[:k].T) ** 2) / k
        assert sde.subspace_alignment(spec_a, spec_m, k) == pytest.approx(reference, abs=1e-4)
        overlap, _ = metrics.subspace_overlap(vt_a[:k].T, vt_m[:k].T)
        assert reference == pytest.approx(1.0 - overlap, abs=1e-12)
    assert sde.subspace_alignment(spec_a, spec_a, 5) == pytest.approx(0.0, abs=1e-5)


def test_subspace_terms_stay_in_unit_interval_when_k_reaches_the_batch_rank():
    # B = 8 <= d = 16, k = 8 (SDEConfig's default subspace_k): the 8th component is the centring null direction.
    bad = []
    for seed in range(6):
        spec_a = sde.batch_spectrum(_features(8, 16, seed=2 * seed))
        spec_b = sde.batch_spectrum(_features(8, 16, seed=2 * seed + 1))
        misalignment = float(sde.subspace_misalignment(spec_a, spec_b, 8))
        alignment = sde.subspace_alignment(spec_a, spec_b, 8)
        if not (-1e-5 <= misalignment <= 1 + 1e-5 and -1e-5 <= alignment <= 1 + 1e-5):
            bad.append((seed, misalignment, alignment))
    assert not bad, f"out of [0, 1]: {bad}"


def test_noise_share_and_band_shares_match_energy_shares():
    rng = np.random.default_rng(5)
    values = np.sort(rng.uniform(0.1, 4.0, 25))[::-1]
    labels = spectrum.partition(values, edge=1.5, threshold=3.0)
    energies = torch.tensor(values**2, dtype=torch.float64, requires_grad=True)
    shares = spectrum.energy_shares(values, labels)
    share = sde.noise_share(energies, labels)
    assert share.item() == pytest.approx(shares[2], rel=1e-12)
    assert_allclose(sde.band_shares(energies, labels), shares, rtol=1e-12)
    # d(share)/dE_i = (1[noise] - share) / sum E
    share.backward()
    expected = ((labels == NOISE).astype(float) - shares[2]) / np.sum(values**2)
    assert_allclose(energies.grad.numpy(), expected, rtol=1e-10)
    assert float(sde.noise_share(torch.zeros(4), np.full(4, NOISE))) == 0.0


# --- adversarial signs ---------------------------------------------------------------------------


@pytest.mark.parametrize("b,d", [(24, 10), (10, 24)])
def test_loss_gradient_signs_agree_with_finite_differences(b, d):
    image, text = _features(b, d, seed=51), _features(b, d, seed=52)
    image = image + 0.8 * text  # correlated pairs: a non-trivial loss landscape
    groups = torch.arange(b)
    scale = torch.tensor(math.log(20.0))
    spectra = [sde.batch_spectrum(image), sde.batch_spectrum(text)]
    signs = sde.loss_gradient_signs(spectra, (image, text), groups, scale, np.random.default_rng(0))
    features = [image, text]
    checked = 0
    for which in range(2):
        mean, u, s, vt = _svd64(features[which])
        assert signs[which].shape == (min(b, d),)
        for i in range(4):
            h = 1e-2 * s[i]

            def loss(step):
                values = s.copy()
                values[i] += step
                rebuilt = mean + (u * values) @ vt  # float64 reconstruction with s_i moved
                pair = [torch.as_tensor(rebuilt), features[1 - which]]
                if which == 1:
                    pair.reverse()
                return float(sde.info_nce(pair[0], pair[1], groups, scale))

            derivative = (loss(h) - loss(-h)) / (2 * h)
            if abs(derivative) < 1e-4:  # below float32 resolution: no sign to compare
                continue
            assert signs[which][i] == np.sign(derivative), (which, i, derivative)
            checked += 1
    assert checked >= 6


def test_loss_gradient_signs_zero_derivative_gets_random_sign():
    # One row: the loss is identically zero, so every derivative is zero and the signs come from the generator.
    image, text = _features(1, 5, seed=1), _features(1, 5, seed=2)
    spectra = [sde.batch_spectrum(image), sde.batch_spectrum(text)]
    generator = np.random.default_rng(7)
    signs = sde.loss_gradient_signs(spectra, (image, text), torch.arange(1), torch.tensor(LOG10), generator)
    reference = np.random.default_rng(7)
    for sign in signs:
        assert_allclose(sign, reference.choice([-1.0, 1.0], size=1))


# --- band tracker --------------------------------------------------------------------------------


def _planted(b, d, seed, multiples=(8.0, 5.0, 3.5, 2.5)):
    """Planted spikes at the given multiples of the BBP threshold of the centred ``(b - 1) x d`` batch."""
    beta = min(b - 1, d) / max(b - 1, d)
    strengths = rmt.bbp_threshold(beta) * np.asarray(multiples)
    return planted_spikes(b, d, strengths, sigma=0.5, seed=seed).matrix


def _analyze_partition(values, b, d):
    """What ``analyze`` runs for a centred ``b x d`` matrix: the ``min(b - 1, d)`` leading values, ``n = b - 1``."""
    rank = min(b - 1, d)
    return spectrum.partition_spectrum(values[:rank], b - 1, d, spectrum.PartitionOptions(null="mp"), floor=1e-3 * values[0])


@pytest.mark.parametrize("b,d", [(200, 40), (64, 63), (40, 100), (64, 64)])
def test_band_tracker_first_update_matches_partition_spectrum(b, d):
    features = torch.as_tensor(_planted(b, d, seed=1), dtype=torch.float32)
    values = sde.batch_spectrum(features).singular_values
    tracker = sde.BandTracker(spectrum.PartitionOptions(null="mp"), momentum=0.9)
    labels = tracker.update(values, b, d)
    assert labels.shape == values.shape
    # Ground truth: the four spikes are signal, everything else noise (a null centring direction included).
    assert np.all(labels[:4] != NOISE) and np.all(labels[4:] == NOISE), labels[:8]
    reference = _analyze_partition(values, b, d)
    assert labels[: reference.labels.size].tolist() == reference.labels.tolist()
    assert tracker.edge == pytest.approx(reference.edge, rel=1e-12)
    assert tracker.threshold == pytest.approx(reference.threshold, rel=1e-12)
    # Same labels from the float64 reference values.
    _, _, s, _ = _svd64(features)
    exact = spectrum.partition_spectrum(s[: min(b - 1, d)], b - 1, d, spectrum.PartitionOptions(null="mp"))
    assert labels[: exact.labels.size].tolist() == exact.labels.tolist()


def test_band_tracker_second_update_follows_the_momentum_rule():
    b, d, momentum = 120, 30, 0.8
    tracker = sde.BandTracker(spectrum.PartitionOptions(null="mp"), momentum=momentum)
    first = sde.batch_spectrum(torch.as_tensor(_planted(b, d, seed=2), dtype=torch.float32)).singular_values
    tracker.update(first, b, d)
    edge_1, threshold_1 = tracker.edge, tracker.threshold
    second = 1.3 * sde.batch_spectrum(torch.as_tensor(_planted(b, d, seed=3), dtype=torch.float32)).singular_values
    labels = tracker.update(second, b, d)
    batch = spectrum.partition_spectrum(second, b - 1, d, spectrum.PartitionOptions(null="mp"), floor=1e-3 * second[0])
    assert tracker.edge == pytest.approx(momentum * edge_1 + (1 - momentum) * batch.edge, rel=1e-14)
    assert tracker.threshold == pytest.approx(momentum * threshold_1 + (1 - momentum) * batch.threshold, rel=1e-14)
    assert tracker.edge != pytest.approx(batch.edge, rel=1e-3)  # smoothing really moved it
    assert labels.tolist() == spectrum.partition(second, tracker.edge, tracker.threshold).tolist()
    # momentum 0: no smoothing, the second batch's own partition.
    plain = sde.BandTracker(spectrum.PartitionOptions(null="mp"), momentum=0.0)
    plain.update(first, b, d)
    assert plain.update(second, b, d).tolist() == batch.labels.tolist()
    assert plain.edge == batch.edge and plain.threshold == batch.threshold


def test_band_tracker_state_round_trip_and_degenerate_batches():
    b, d = 80, 20
    values = sde.batch_spectrum(torch.as_tensor(_planted(b, d, seed=4), dtype=torch.float32)).singular_values
    tracker = sde.BandTracker(spectrum.PartitionOptions(null="mp"), momentum=0.9)
    # Before any estimate, a spectrum with fewer than two nonzero values is all noise and sets nothing.
    assert tracker.update(np.array([3.0, 0.0, 0.0]), b, d).tolist() == [NOISE] * 3
    assert tracker.state() == {"edge": None, "threshold": None}
    tracker.update(values, b, d)
    saved = json.loads(json.dumps(tracker.state()))
    restored = sde.BandTracker(spectrum.PartitionOptions(null="mp"), momentum=0.9)
    restored.load(saved)
    assert restored.state() == tracker.state()
    following = values * 1.1
    assert restored.update(following, b, d).tolist() == tracker.update(following, b, d).tolist()
    assert restored.state() == tracker.state()
    # A degenerate batch after an estimate keeps the smoothed edge; its zero values are noise.
    edge = tracker.edge
    labels = tracker.update(np.array([1e3, 0.0, 0.0]), b, d)
    assert tracker.edge == edge and labels[1:].tolist() == [NOISE, NOISE]


# --- info_nce ------------------------------------------------------------------------------------


def test_info_nce_equals_naive_loop():
    image, text = _features(9, 6, seed=61), _features(9, 6, seed=62)
    for scale in (0.0, LOG10, math.log(50.0)):
        got = float(sde.info_nce(image, text, torch.arange(9), torch.tensor(scale)))
        expected = _info_nce_naive(image.numpy(), text.numpy(), list(range(9)), scale)
        assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)


def test_info_nce_spreads_targets_over_groups():
    image, text = _features(8, 5, seed=63), _features(8, 5, seed=64)
    groups = [0, 1, 0, 2, 1, 3, 0, 4]
    got = float(sde.info_nce(image, text, torch.tensor(groups), torch.tensor(LOG10)))
    expected = _info_nce_naive(image.numpy(), text.numpy(), groups, LOG10)
    assert got == pytest.approx(expected, rel=1e-5, abs=1e-6)
    # By hand: two orthogonal pairs, logits [[10, 0], [0, 10]]. One group: the target is (1/2, 1/2) per row.
    eye = torch.eye(2)
    log_norm = math.log(math.exp(10.0) + 1.0)
    plain = float(sde.info_nce(eye, eye, torch.tensor([0, 1]), torch.tensor(LOG10)))
    grouped = float(sde.info_nce(eye, eye, torch.tensor([0, 0]), torch.tensor(LOG10)))
    assert plain == pytest.approx(log_norm - 10.0, rel=1e-5, abs=1e-6)
    assert grouped == pytest.approx(log_norm - 5.0, rel=1e-6)
    # Exact duplicate texts: the group targets only move mass between identical columns, so the value is
    # that of the one-positive loss.
    text_same = torch.stack([text[groups[i]] for i in range(8)])
    plain = float(sde.info_nce(image, text_same, torch.arange(8), torch.tensor(LOG10)))
    grouped = float(sde.info_nce(image, text_same, torch.tensor(groups), torch.tensor(LOG10)))
    assert grouped == pytest.approx(plain, rel=1e-5)
    assert grouped == pytest.approx(_info_nce_naive(image.numpy(), text_same.numpy(), groups, LOG10), rel=1e-5)


def test_info_nce_gradient_reaches_logit_scale():
    scale = torch.tensor(LOG10, requires_grad=True)
    sde.info_nce(_features(6, 4, seed=65), _features(6, 4, seed=66), torch.arange(6), scale).backward()
    assert torch.isfinite(scale.grad) and float(scale.grad) != 0.0


# --- the whole loss ------------------------------------------------------------------------------


def _pair(b, d, seed):
    image, text = _features(b, d, seed), _features(b, d, seed + 1000)
    return image + 0.5 * text, text


def test_baseline_is_exactly_info_nce():
    image, text = _pair(16, 8, seed=71)
    image.requires_grad_(True)
    groups, scale = torch.arange(16), torch.tensor(LOG10)
    config = SDEConfig.baseline()
    assert not config.spectral
    loss, terms = sde.sde_loss(image, text, groups, scale, 0.3, config, SDEState.create(config, 0))
    expected = sde.info_nce(image, text, groups, scale)
    assert torch.equal(loss, expected)
    assert terms["loss"] == terms["infonce"] == expected.item()
    assert not {"hellinger2", "subspace", "snr", "delta_ratio", "image_shares"} & set(terms)
    (g1,) = torch.autograd.grad(loss, image)
    (g2,) = torch.autograd.grad(sde.info_nce(image, text, groups, scale), image)
    assert torch.equal(g1, g2)


def test_sde_loss_is_the_sum_of_its_terms():
    b, d = 48, 16  # B > d + 1: no rank deficiency
    image, text = _pair(b, d, seed=72)
    groups, scale, progress = torch.arange(b), torch.tensor(LOG10), 0.2
    config = SDEConfig(perturbation="random", subspace_k=4, hellinger_weight=0.7, subspace_weight=1.3, snr_weight=0.4)
    loss, terms = sde.sde_loss(image, text, groups, scale, progress, config, SDEState.create(config, 5))
    weights = sde.schedule(progress, config)
    assert (terms["alpha"], terms["rho"], terms["lambda"]) == (weights["alpha"], weights["rho"], weights["lambda"])
    total = (terms["infonce"] + weights["lambda"] * (0.7 * terms["hellinger2"] + 1.3 * terms["subspace"])
             + weights["rho"] * 0.4 * terms["snr"])
    assert loss.item() == pytest.approx(total, rel=1e-6) and terms["loss"] == loss.item()
    # Each term against its reference, replaying the state by hand.
    spectra = [sde.batch_spectrum(image), sde.batch_spectrum(text)]
    trackers = [sde.BandTracker(config.partition, config.momentum) for _ in range(2)]
    generator = np.random.default_rng(5)
    labels = []
    for tracker, spec in zip(trackers, spectra):  # the default null (ddpa) reads the batch's variances and vectors
        inputs, distinct = batch_null_inputs(spec, config.partition.null, generator)
        labels.append(tracker.update(spec.singular_values, b, d, inputs=inputs, distinct=distinct))
    signs = [generator.choice([-1.0, 1.0], size=len(lab)) for lab in labels]
    changes = [sde.relative_changes(s.singular_values, lab, sg, weights["alpha"], weights["rho"], config)
               for s, lab, sg in zip(spectra, labels, signs)]
    enhanced = [sde.enhance(f, s, c) for f, s, c in zip((image, text), spectra, changes)]
    assert terms["infonce"] == pytest.approx(float(sde.info_nce(enhanced[0], enhanced[1], groups, scale)), rel=1e-6)
    values = [s.singular_values for s in spectra]
    assert terms["hellinger2"] == pytest.approx(metrics.hellinger_spectral_distance(*values) ** 2, abs=1e-6)
    snr = 0.5 * sum(spectrum.energy_shares(v, lab)[2] for v, lab in zip(values, labels))
    assert terms["snr"] == pytest.approx(snr, rel=1e-5)
    assert 0.0 <= terms["subspace"] <= 1.0
    assert_allclose(terms["image_shares"], spectrum.energy_shares(values[0], labels[0]), rtol=1e-12)
    assert terms["delta_ratio"] <= config.eta + 1e-12


@pytest.mark.parametrize("switch,removed", [
    ({"hellinger_weight": 0.0}, {"hellinger2"}),
    ({"subspace_weight": 0.0}, {"subspace"}),
    ({"snr_weight": 0.0}, {"snr"}),
    ({"enhance": False}, {"delta_ratio"}),
    ({"enhance": False, "hellinger_weight": 0.0, "subspace_weight": 0.0, "snr_weight": 0.0},
     {"hellinger2", "subspace", "snr", "delta_ratio", "image_shares", "text_shares", "bands"}),
])
def test_each_switch_removes_its_term(switch, removed):
    b, d = 40, 12
    image, text = _pair(b, d, seed=73)
    groups, scale = torch.arange(b), torch.tensor(LOG10)
    full_config = SDEConfig(subspace_k=4)
    _, full = sde.sde_loss(image, text, groups, scale, 0.3, full_config, SDEState.create(full_config, 0))
    assert {"hellinger2", "subspace", "snr", "delta_ratio", "image_shares", "text_shares"} <= set(full)
    config = sde.with_overrides(full_config, **switch)
    loss, terms = sde.sde_loss(image, text, groups, scale, 0.3, config, SDEState.create(config, 0))
    assert set(full) - set(terms) == removed
    assert math.isfinite(loss.item())
    kept = ["infonce"] + sorted({"hellinger2", "subspace", "snr"} - removed)
    if "delta_ratio" not in removed:
        assert terms["infonce"] == full["infonce"]
    else:
        assert terms["infonce"] == pytest.approx(float(sde.info_nce(image, text, groups, scale)), rel=1e-6)
    for name in kept[1:]:
        assert terms[name] == full[name]


def _rank_deficient_cases():
    dup = _features(3, 16, seed=81)
    return {
        "duplicated_rows": (dup.repeat(4, 1), _features(12, 16, seed=82)),
        "b_below_d": (_features(6, 32, seed=83), _features(6, 32, seed=84)),
        "all_zero": (torch.zeros(8, 16), torch.zeros(8, 16)),
        "b_equals_2": (_features(2, 16, seed=85), _features(2, 16, seed=86)),
    }


@pytest.mark.parametrize("case", ["duplicated_rows", "b_below_d", "all_zero", "b_equals_2"])
@pytest.mark.parametrize("perturbation", ["adversarial", "random"])
def test_sde_loss_finite_for_rank_deficient_batches(case, perturbation):
    image, text = (x.clone().requires_grad_(True) for x in _rank_deficient_cases()[case])
    b = image.shape[0]
    scale = torch.tensor(LOG10, requires_grad=True)
    config = SDEConfig(perturbation=perturbation)
    for progress in (0.0, 0.7):
        loss, terms = sde.sde_loss(image, text, torch.arange(b), scale, progress, config, SDEState.create(config, 0))
        grads = torch.autograd.grad(loss, (image, text, scale))
        assert math.isfinite(loss.item())
        assert all(torch.isfinite(g).all() for g in grads)
        assert all(math.isfinite(v) for v in terms.values() if isinstance(v, float))


def test_sde_loss_bounded_for_rank_deficient_batches():
    config = SDEConfig()  # subspace_k = 8
    bad = {}
    for case in ("duplicated_rows", "b_below_d", "b_equals_2"):
        image, text = _rank_deficient_cases()[case]
        loss, terms = sde.sde_loss(image, text, torch.arange(image.shape[0]), torch.tensor(LOG10), 0.3, config,
                                   SDEState.create(config, 0))
        if not (0.0 <= terms["subspace"] <= 1.0 and abs(loss.item()) < 100):
            bad[case] = (loss.item(), terms["subspace"])
    assert not bad, f"unbounded loss: {bad}"


def test_sde_loss_reports_nan_for_non_finite_features():
    image, text = _pair(16, 8, seed=75)
    image[3, 2] = float("nan")
    config = SDEConfig()
    loss, terms = sde.sde_loss(image, text, torch.arange(16), torch.tensor(LOG10), 0.3, config,
                               SDEState.create(config, 0))
    assert math.isnan(loss.item()) and math.isnan(terms["loss"])


@pytest.mark.parametrize("perturbation", ["adversarial", "random"])
def test_sde_loss_is_deterministic_for_a_seed(perturbation):
    b, d = 32, 12
    image, text = _pair(b, d, seed=74)
    config = SDEConfig(perturbation=perturbation, subspace_k=4)
    outputs = []
    for _ in range(2):
        x = image.clone().requires_grad_(True)
        state = SDEState.create(config, 9)
        loss, terms = sde.sde_loss(x, text, torch.arange(b), torch.tensor(LOG10), 0.25, config, state)
        loss.backward()
        outputs.append((loss.item(), terms, x.grad.clone(), state.state()))
    assert outputs[0][0] == outputs[1][0] and outputs[0][1] == outputs[1][1]
    assert torch.equal(outputs[0][2], outputs[1][2])
    assert outputs[0][3]["trackers"] == outputs[1][3]["trackers"]
    # A saved state resumes the same sequence.
    state = SDEState.create(config, 9)
    sde.sde_loss(image, text, torch.arange(b), torch.tensor(LOG10), 0.25, config, state)
    resumed = SDEState.create(config, 123)
    resumed.load(json.loads(json.dumps(state.state())))
    a = sde.sde_loss(image, text, torch.arange(b), torch.tensor(LOG10), 0.5, config, state)
    c = sde.sde_loss(image, text, torch.arange(b), torch.tensor(LOG10), 0.5, config, resumed)
    assert float(a[0]) == float(c[0]) and a[1] == c[1]


# --- config --------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [
    {"ramp": "exponential"}, {"perturbation": "gaussian"}, {"alpha_max": -0.1}, {"epsilon": float("nan")},
    {"gamma_weak": float("inf")}, {"rho_0": -1.0}, {"rho_min": -1e-9}, {"eta": float("nan")},
    {"lambda_0": -2.0}, {"lambda_min": float("-inf")}, {"hellinger_weight": -1.0}, {"subspace_weight": float("nan")},
    {"snr_weight": -0.5}, {"subspace_k": 0}, {"warmup": -0.1}, {"warmup": 1.5}, {"warmup": float("nan")},
    {"momentum": 1.0}, {"momentum": -0.1},
])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        SDEConfig(**bad)


def test_config_round_trip_and_overrides():
    config = SDEConfig(perturbation="random", alpha_max=0.3, subspace_k=5, ramp="cosine", warmup=0.0,
                       partition=spectrum.PartitionOptions(noise_estimator="mppca", strong_rule="gd"))
    assert SDEConfig.from_dict(config.to_dict()) == config
    assert SDEConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    assert SDEConfig.from_dict(SDEConfig.baseline().to_dict()) == SDEConfig.baseline()
    values = config.to_dict()
    values["partition"]["strong_rule"] = "median"
    with pytest.raises(ValueError):
        SDEConfig.from_dict(values)
    assert sde.with_overrides(config, eta=0.5, epsilon=None) == SDEConfig(**{**config.__dict__, "eta": 0.5})
    with pytest.raises(ValueError):
        sde.with_overrides(config, momentum=2.0)
    assert SDEConfig().spectral and not SDEConfig.baseline().spectral
    assert SDEConfig(enhance=False, hellinger_weight=0, subspace_weight=0, snr_weight=0.1).spectral
