"""Sample size (issue 14, item 2): every report states its n, --scale/--repeats band shares of seeded row
subsets, plot scale, compare at equal n and n_mismatch."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import assert_error, assert_ok, invoke
from numpy.testing import assert_allclose
from PIL import Image
from threadpoolctl import threadpool_limits

from sdetool.analysis.options import AnalysisOptions
from sdetool.results import plots
from sdetool.spectral import rmt, spectrum
from sdetool.spectral.gram import GramAccumulator
from sdetool.spectral.scaling import subset_positions
from sdetool.spectral.summary import partition_state

BANDS = ("strong", "weak", "noise")
SPIKES = np.array([10.0, 6.0, 4.0, 2.5, 1.5])  # multiples of the BBP threshold at 2000 rows


@pytest.fixture(autouse=True, scope="module")
def one_blas_thread():
    with threadpool_limits(1):
        yield


def planted(n: int, d: int, seed: int) -> np.ndarray:
    """Independent rows of one population: unit noise plus five latent factors along fixed directions, whose
    strengths are SPIKES times the detection threshold of a 2000-row sample."""
    right, _ = np.linalg.qr(np.random.default_rng(99).standard_normal((d, SPIKES.size)))
    factor_std = rmt.bbp_threshold(d / 2000) * SPIKES  # a 2000-row sample: s ~ sqrt(2000) factor_std
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, SPIKES.size)) * factor_std) @ right.T + rng.standard_normal((n, d))


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """Two sets of the same population: 2000 and 1000 rows (d = 32), as .npy files."""
    folder = tmp_path_factory.mktemp("scale")
    big, small = folder / "big.npy", folder / "small.npy"
    np.save(big, planted(2000, 32, 1))
    np.save(small, planted(1000, 32, 2))
    return big, small


def report(*args) -> dict:
    return json.loads(assert_ok(invoke("analyze", *args, "--json", "-", "-q")).stdout)


def reference_partition(rows: np.ndarray, options: AnalysisOptions) -> spectrum.SpectralPartition:
    n, d = rows.shape
    accumulator = GramAccumulator(d, keep_rows=n <= d, sample_rows=options.sample_rows(d), seed=options.seed)
    accumulator.update(rows)
    return partition_state(accumulator.finalize(), options).partition


# --- --scale -------------------------------------------------------------------------------------------


def test_scale_layout_is_the_issues(stores):
    big, _ = stores
    document = report(big, "--scale", "128,512", "--repeats", 3)
    assert document["n"] == 2000
    scale = document["scale"]
    assert [entry["n"] for entry in scale] == [128, 512] and [entry["repeats"] for entry in scale] == [3, 3]
    for entry in scale:
        assert set(entry) == {"n", "repeats", "bands"} and set(entry["bands"]) == set(BANDS)
        for band in BANDS:
            assert set(entry["bands"][band]) == {"energy_share", "count"}
            for quantity in ("energy_share", "count"):
                assert set(entry["bands"][band][quantity]) == {"mean", "sd"}
        shares = sum(entry["bands"][band]["energy_share"]["mean"] for band in BANDS)
        counts = sum(entry["bands"][band]["count"]["mean"] for band in BANDS)
        assert_allclose(shares, 1.0, rtol=1e-12)
        assert_allclose(counts, min(entry["n"] - 1, 32), rtol=1e-12)  # p = min(N - 1, d) components
    assert report(big)["scale"] is None


def test_scale_entries_are_the_partitions_of_seeded_row_subsets(stores):
    """The mean and sd (ddof 1) over the repeats are those of the subsets' own partitions."""
    big, _ = stores
    rows = np.load(big)
    document = report(big, "--scale", "100,700", "--repeats", 3, "--seed", 5)
    options = AnalysisOptions(seed=5)
    for entry in document["scale"]:
        parts = [reference_partition(rows[subset_positions(2000, entry["n"], repeat, 5)], options)
                 for repeat in range(3)]
        for index, band in enumerate(BANDS):
            shares = [part.shares[index] for part in parts]
            counts = [float(np.sum(part.labels == index)) for part in parts]
            found = entry["bands"][band]
            assert_allclose([found["energy_share"]["mean"], found["energy_share"]["sd"]],
                            [np.mean(shares), np.std(shares, ddof=1)], rtol=1e-9, atol=1e-15)
            assert_allclose([found["count"]["mean"], found["count"]["sd"]],
                            [np.mean(counts), np.std(counts, ddof=1)], rtol=1e-12, atol=1e-15)


def test_subsets_are_seeded_uniform_and_without_repeats():
    first = subset_positions(5000, 300, 0, seed=1)
    assert first.size == np.unique(first).size == 300 and np.all(np.diff(first) > 0)
    assert 0 <= first.min() and first.max() < 5000
    assert np.array_equal(subset_positions(5000, 300, 0, seed=1), first)
    assert not np.array_equal(subset_positions(5000, 300, 1, seed=1), first)  # each repeat differs
    assert not np.array_equal(subset_positions(5000, 300, 0, seed=2), first)  # each seed differs
    draws = np.concatenate([subset_positions(5000, 300, repeat, seed=1) for repeat in range(50)])
    counts = np.bincount(draws // 500, minlength=10)  # uniform: about 1500 per tenth
    assert counts.min() > 1300 and counts.max() < 1700


def test_scale_is_deterministic_by_seed(stores):
    big, _ = stores
    first = report(big, "--scale", "200", "--repeats", 4, "--seed", 3)["scale"]
    assert report(big, "--scale", "200", "--repeats", 4, "--seed", 3)["scale"] == first
    assert report(big, "--scale", "200", "--repeats", 4, "--seed", 4)["scale"] != first


def test_one_repeat_has_sd_zero_and_the_whole_set_has_its_own_partition(stores):
    big, _ = stores
    document = report(big, "--scale", "300,2000", "--repeats", 1)
    for entry in document["scale"]:
        spreads = [entry["bands"][band][quantity]["sd"] for band in BANDS for quantity in ("energy_share", "count")]
        assert spreads == [0.0] * 6
    whole = report(big, "--scale", "2000", "--repeats", 3)  # every subset of n rows is the set itself
    for band in BANDS:
        found = whole["scale"][0]["bands"][band]
        assert_allclose(found["energy_share"]["mean"], whole["bands"][band]["energy_share"], rtol=1e-9, atol=1e-15)
        assert found["energy_share"]["sd"] < 1e-12 and found["count"]["mean"] == whole["bands"][band]["count"]


def test_band_shares_depend_on_n(stores):
    """The noise edge falls like 1 / sqrt(n) relative to the spikes: small subsets put more energy in noise."""
    big, _ = stores
    scale = report(big, "--scale", "64,256,1024", "--repeats", 4)["scale"]
    noise = [entry["bands"]["noise"]["energy_share"]["mean"] for entry in scale]
    signal = [entry["bands"]["strong"]["count"]["mean"] + entry["bands"]["weak"]["count"]["mean"] for entry in scale]
    assert noise[0] > max(noise[1:]) + 0.02
    assert signal[0] < signal[1] <= signal[2] <= SPIKES.size


def test_a_size_larger_than_the_set_is_refused(stores):
    big, _ = stores
    line = assert_error(invoke("analyze", big, "--scale", "128,4096", "-q"), 2, "--scale", "4,096")
    assert "2,000" in line
    assert_error(invoke("analyze", big, "--sample", 500, "--scale", "600", "-q"), 2, "--scale", "500")
    assert_error(invoke("analyze", big, "--scale", "1", "-q"), 2, "--scale")


def test_fail_if_reads_the_scale_list(stores):
    big, _ = stores
    args = ("analyze", big, "--scale", "64,1024", "--repeats", 2, "-q")
    document = report(*args[1:-1])
    small_n = document["scale"][0]["bands"]["noise"]["energy_share"]["mean"]
    assert invoke(*args, "--fail-if", f"scale.0.bands.noise.energy_share.mean > {small_n - 0.01}").exit_code == 1
    assert invoke(*args, "--fail-if", f"scale.0.bands.noise.energy_share.mean > {small_n + 0.01}").exit_code == 0
    assert invoke(*args, "--fail-if", "scale.1.n != 1024").exit_code == 0
    assert invoke(*args, "--fail-if", "scale.1.bands.strong.count.sd < 0").exit_code == 0


def test_every_report_states_its_n(stores):
    big, _ = stores
    assert report(big)["n"] == 2000
    sampled = report(big, "--sample", 700)
    assert sampled["n"] == 700 and sampled["n_rows"] == 2000 and sampled["n_effective"] == 699


# --- plot scale ---------------------------------------------------------------------------------------------


def test_plot_scale_draws_the_means_against_n(stores, tmp_path):
    big, _ = stores
    document = report(big, "--scale", "128,512", "--repeats", 2)
    saved = tmp_path / "report.json"
    saved.write_text(json.dumps(document))
    out = tmp_path / "scale.png"
    assert_ok(invoke("plot", "scale", saved, "--out", out, "-q"))
    assert Image.open(out).size[0] > 600
    figure = plots.scale_figure([("big", document)])
    panels = {axes.get_label(): axes for axes in figure.axes}
    for band in BANDS:
        line, low_caps, high_caps = panels[band].get_lines()[:3]
        means = np.array([100 * entry["bands"][band]["energy_share"]["mean"] for entry in document["scale"]])
        spreads = np.array([100 * entry["bands"][band]["energy_share"]["sd"] for entry in document["scale"]])
        assert_allclose(line.get_xdata().astype(float), [128, 512])
        assert_allclose(line.get_ydata().astype(float), means, rtol=1e-12)
        # mean -+ sd, cut at 0 and 100 %: a share cannot leave them
        assert_allclose(low_caps.get_ydata().astype(float), np.maximum(means - spreads, 0.0), rtol=1e-12, atol=1e-12)
        assert_allclose(high_caps.get_ydata().astype(float), np.minimum(means + spreads, 100.0), rtol=1e-12)


def test_plot_scale_of_a_store_and_of_a_report_without_scale(stores, tmp_path):
    big, _ = stores
    out = tmp_path / "store.svg"
    assert_ok(invoke("plot", "scale", big, "--scale", "128,256", "--repeats", 2, "--out", out, "-q"))
    assert out.read_text().lstrip().startswith("<?xml")
    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(report(big)))
    assert_error(invoke("plot", "scale", plain, "--out", tmp_path / "no.png", "-q"), 2, "--scale")
    assert not (tmp_path / "no.png").exists()


# --- compare at equal n --------------------------------------------------------------------------------------


def compare(*args) -> dict:
    return json.loads(assert_ok(invoke("compare", *args, "--json", "-", "-q")).stdout)


def test_compare_of_two_stores_analyses_both_at_the_same_n(stores):
    big, small = stores
    document = compare(big, small)
    entry = document["sets"]["embeddings"]
    assert entry["n"] == {"before": 1000, "after": 1000, "delta": 0}
    assert entry["n_mismatch"] is False and document["n_mismatch"] is False
    assert not any("not comparable" in note for note in document["notes"])
    sampled = report(big, "--sample", 1000)  # the larger side is a seeded subsample of 1000 rows
    for band in BANDS:
        assert entry["bands"][band]["energy_share"]["before"] == sampled["bands"][band]["energy_share"]
        assert entry["bands"][band]["count"]["before"] == sampled["bands"][band]["count"]
    assert compare(big, small) == document  # seeded


def test_compare_without_equal_n_reports_the_mismatch(stores):
    big, small = stores
    document = compare(big, small, "--no-equal-n")
    entry = document["sets"]["embeddings"]
    assert entry["n"] == {"before": 2000, "after": 1000, "delta": -1000}
    assert entry["n_mismatch"] is True and document["n_mismatch"] is True
    notes = [note for note in document["notes"] if "n = 2,000 and n = 1,000" in note]
    assert len(notes) == 1 and "not comparable" in notes[0]
    assert invoke("compare", big, small, "--no-equal-n", "-q", "--fail-if", "n_mismatch == 1").exit_code == 1
    assert invoke("compare", big, small, "-q", "--fail-if", "n_mismatch == 1").exit_code == 0


@pytest.mark.parametrize("second_rows,mismatch", [(1000, True), (1850, False), (1790, True)])
def test_compare_of_reports_whose_n_differ(stores, tmp_path, second_rows, mismatch):
    """Reports are compared as they are: n differing by more than 10 % of the larger is a mismatch."""
    big, _ = stores
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    first.write_text(json.dumps(report(big)))
    second.write_text(json.dumps(report(big, "--sample", second_rows)))
    document = compare(first, second)
    assert document["sets"]["embeddings"]["n"]["after"] == second_rows
    assert document["n_mismatch"] is mismatch and document["sets"]["embeddings"]["n_mismatch"] is mismatch
    assert any(f"n = 2,000 and n = {second_rows:,}" in note for note in document["notes"]) is mismatch
    code = invoke("compare", first, second, "-q", "--fail-if", "sets.embeddings.n_mismatch == 1").exit_code
    assert code == (1 if mismatch else 0)


def test_compare_names_a_difference_of_null(stores, tmp_path):
    big, _ = stores
    default, single = tmp_path / "ddpa.json", tmp_path / "mp.json"
    default.write_text(json.dumps(report(big)))
    single.write_text(json.dumps(report(big, "--null", "mp")))
    notes = compare(default, single)["notes"]
    assert any("different options (null ddpa vs mp)" in note for note in notes), notes
    assert not any("different options" in note for note in compare(default, default)["notes"])
    old = json.loads(single.read_text())  # a report from before the nulls: no null option, the mp law
    del old["options"]["null"]
    older = tmp_path / "old.json"
    older.write_text(json.dumps(old))
    assert not any("different options" in note for note in compare(older, single)["notes"])
