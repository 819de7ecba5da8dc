"""sdetool.SpectralBands: a scikit-learn transformer with the analysis's own numbers. It passes
sklearn.utils.estimator_checks (one check skipped by scikit-learn itself: the array-API input check runs only
with SCIPY_ARRAY_API set), works under clone and in a Pipeline, and removes the noise band by default."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")

import sdetool  # noqa: E402
from sdetool.spectral.synthetic import planted_spikes  # noqa: E402


@pytest.fixture(scope="module")
def planted():
    spikes = planted_spikes(3000, 64, np.array([8.0, 6.0, 4.0, 1.5]), seed=5)
    return spikes.matrix.astype(np.float64)


def test_every_applicable_estimator_check_passes():
    from sklearn.utils.estimator_checks import check_estimator

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = check_estimator(sdetool.SpectralBands(), on_fail=None)
    failed = [(r["check_name"], str(r["exception"])[:200]) for r in results if r["status"] == "failed"]
    skipped = {r["check_name"] for r in results if r["status"] == "skipped"}
    assert not failed, failed
    assert skipped <= {"check_array_api_input"}, skipped
    assert len(results) > 40


def test_fitted_attributes_are_the_analysis(planted):
    bands = sdetool.SpectralBands().fit(planted)
    report = sdetool.analyze(planted).to_dict()
    assert bands.energy_shares_ == {band: report["bands"][band]["energy_share"] for band in ("strong", "weak", "noise")}
    assert bands.n_components_ == {band: report["bands"][band]["count"] for band in ("strong", "weak", "noise")}
    assert bands.noise_edge_ == pytest.approx(report["noise"]["edge"])
    np.testing.assert_allclose(bands.singular_values_, report["singular_values"], rtol=1e-12)
    # components_ rows are the right singular vectors, in the order of singular_values_
    centred = planted - planted.mean(axis=0)
    reference = np.linalg.svd(centred, full_matrices=False)
    for row in range(4):
        assert abs(bands.components_[row] @ reference.Vh[row]) == pytest.approx(1.0, abs=1e-8)
    np.testing.assert_allclose(bands.singular_values_[:10], reference.S[:10], rtol=1e-9)


def test_transform_keeps_the_signal_and_inverse_maps_back(planted):
    bands = sdetool.SpectralBands()
    Z = bands.fit_transform(planted)
    kept = bands.n_components_["strong"] + bands.n_components_["weak"]
    assert Z.shape == (planted.shape[0], kept)
    back = bands.inverse_transform(Z)
    all_bands = ("strong", "weak", "noise")
    full = bands.inverse_transform(bands.transform(planted, keep=all_bands), keep=all_bands)
    np.testing.assert_allclose(full, planted, atol=1e-8)  # every band: X itself
    removed = np.linalg.norm(planted - back) ** 2 / np.linalg.norm(planted - planted.mean(0)) ** 2
    assert removed == pytest.approx(bands.energy_shares_["noise"], rel=1e-6)  # what is removed is the noise band
    with pytest.raises(ValueError, match="not a band"):
        bands.transform(planted, keep=("signal",))


def test_clone_and_pipeline():
    from sklearn.base import clone
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline

    estimator = sdetool.SpectralBands(null="mp", strong_rule="gd", center=False)
    copy = clone(estimator)
    assert copy.get_params() == estimator.get_params() and copy is not estimator
    copy.set_params(null="ddpa")
    assert copy.null == "ddpa"
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 600)
    direction = rng.standard_normal(32)
    direction /= np.linalg.norm(direction)  # not along one column: that would be unequal variance, noise to dpa
    X = rng.standard_normal((600, 32)) + 8 * labels[:, None] * direction
    pipeline = make_pipeline(sdetool.SpectralBands(), LogisticRegression()).fit(X, labels)
    assert pipeline[0].n_components_["strong"] + pipeline[0].n_components_["weak"] >= 1
    assert pipeline.score(X, labels) > 0.9
