"""Degenerate but finite inputs are reports, not errors (issue 13).

A collapsed set (identical rows), a zero matrix, one or two rows, a rank-one matrix, constant or duplicate
columns, ``n`` far below ``d``: ``analyze`` reports them (exit 0), a ``--fail-if`` gate on them exits 1, and
every value that cannot be computed is ``null`` with a note saying why. Non-finite rows stay bad input
(exit 2) unless ``--drop-nonfinite``. Checked through the library (exact references: numpy's float64 SVD,
closed forms) and through the CLI (``CliRunner`` against ``sdetool.cli.app``).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from cli_helpers import assert_error, assert_ok, invoke
from numpy.testing import assert_allclose

from sdetool.analysis import checks
from sdetool.analysis.analyze import AnalysisOptions, analyze
from sdetool.analysis.report import report_paths
from sdetool.io import store
from sdetool.results.compare import compare
from sdetool.spectral import batchspectrum, metrics, rmt, spectrum

D = 16


def _save(folder, name: str, matrix) -> str:
    path = str(folder / f"{name}.npy")
    np.save(path, np.asarray(matrix))
    return path


def _identical(n: int = 500, d: int = D, dtype=np.float32, seed: int = 0) -> np.ndarray:
    return np.tile(np.random.default_rng(seed).standard_normal(d) * 3.0 + 1.0, (n, 1)).astype(dtype)


def _strict(text: str) -> dict:
    """Parse JSON refusing NaN and Infinity (what strict JSON is)."""
    def refuse(constant):
        raise ValueError(f"non-strict JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


def _document(path: str, **options) -> dict:
    """The report of one set, through strict JSON."""
    return _strict(json.dumps(analyze(path, options=AnalysisOptions(**options)).to_dict(), allow_nan=False))


def _assert_nulls_explained(entry: dict) -> None:
    """Every null metric, a null noise level and null band shares each have a note naming them."""
    notes = entry["notes"]
    assert all(isinstance(note, str) and note for note in notes)
    for name in ("stable_rank", "participation_ratio", "power_law_alpha", "power_law_r2", "mean_cosine"):
        if entry["metrics"][name] is None:
            assert any(name in note for note in notes), (name, notes)
    if entry["noise"]["sigma"] is None:
        assert entry["noise"]["note"] in notes and "noise level" in entry["noise"]["note"]
        assert entry["noise"]["edge"] is None and entry["strong_rule"]["threshold"] is None
    if any(band["energy_share"] is None for band in entry["bands"].values()):
        assert any("energy shares are null" in note for note in notes), notes


def _skeleton_holds(document, skeleton) -> None:
    """Every key of ``document`` is one ``--fail-if`` may name (results.report_paths)."""
    from sdetool.analysis.checks import ANY, INDEX

    if not isinstance(document, dict) or skeleton is None:
        return
    for key, value in document.items():
        inner = skeleton.get(key, skeleton.get(ANY, skeleton.get(INDEX, "missing")))
        assert inner != "missing", key
        if isinstance(value, list) and isinstance(inner, dict) and INDEX in inner:
            for item in value:
                _skeleton_holds(item, inner[INDEX])
        else:
            _skeleton_holds(value, inner)


# --- spectrum.partition_spectrum: the pure partition -----------------------------------------------------


def test_rank_zero_partition_is_all_noise_with_nan_estimates():
    part = spectrum.partition_spectrum(np.zeros(5), 99, 5)
    assert not part.partitioned and part.numerical_rank == 0
    assert part.labels.tolist() == [2] * 5 and part.counts == {"strong": 0, "weak": 0, "noise": 5}
    for value in (part.sigma, part.edge, part.mp_edge, part.threshold):
        assert math.isnan(value)
    assert np.isnan(part.shares).all() and np.isnan(part.component_shares).all() and np.isnan(part.snr).all()
    assert part.signal_rank is None and part.note.startswith("numerical rank 0")


def test_values_below_the_floor_count_as_zero():
    part = spectrum.partition_spectrum(np.array([3e-10, 2e-10, 1e-10]), 50, 3, floor=1e-9)
    assert part.numerical_rank == 0 and np.isnan(part.component_shares).all()
    single = spectrum.partition_spectrum(np.array([4.0, 1e-12, 1e-13]), 50, 3, floor=1e-9)
    assert single.numerical_rank == 1 and single.note.startswith("numerical rank 1")
    assert_allclose(single.shares, [0.0, 0.0, 1.0], atol=1e-24)  # all energy in the noise band


def test_rank_one_partition_has_no_signal_and_all_energy_in_noise():
    part = spectrum.partition_spectrum(np.array([3.0, 0.0, 0.0]), 39, 3)
    assert part.labels.tolist() == [2, 2, 2] and part.shares.tolist() == [0.0, 0.0, 1.0]
    assert part.component_shares.tolist() == [1.0, 0.0, 0.0]
    assert math.isnan(part.sigma) and math.isnan(part.threshold) and "noise bulk" in part.note
    one = spectrum.partition_spectrum(np.array([2.5]), 1, 8)  # two centred rows: one component
    assert one.counts["noise"] == 1 and one.shares.tolist() == [0.0, 0.0, 1.0]


def test_no_components_at_all():
    part = spectrum.partition_spectrum(np.zeros(0), 0, 8)  # one centred row
    assert part.labels.size == 0 and part.counts == {"strong": 0, "weak": 0, "noise": 0}
    assert np.isnan(part.shares).all() and part.note.startswith("no singular components (p = 0)")
    with pytest.raises(ValueError, match="1-D"):
        spectrum.partition_spectrum(np.zeros((2, 2)), 3, 2)
    with pytest.raises(ValueError, match="n >= 0 and d >= 1"):
        spectrum.partition_spectrum(np.ones(2), 3, 0)


def test_rank_two_and_more_is_partitioned_as_before():
    rng = np.random.default_rng(4)
    n, d = 400, 60
    values = spectrum.singular_values_direct(rng.standard_normal((n, d)))
    values[:3] *= 8.0
    part = spectrum.partition_spectrum(values, n, d, spectrum.PartitionOptions(null="mp"))
    sigma, signal_rank = spectrum.noise_sigma_deflated_median(values, n, d, 0.01)
    assert part.partitioned and part.note is None and part.numerical_rank == d
    assert part.sigma == sigma and part.signal_rank == signal_rank
    assert part.edge == rmt.noise_edge(sigma, n, d, 0.01)
    assert part.threshold == spectrum.strong_threshold_iqr(values, 1.5)
    assert part.labels.tolist() == spectrum.partition(values, part.edge, part.threshold).tolist()
    two = spectrum.partition_spectrum(np.array([5.0, 4.0]), 2, 30, spectrum.PartitionOptions(null="mp"))  # p = 2
    assert two.partitioned and two.numerical_rank == 2


def test_mppca_without_a_bulk_is_a_degenerate_partition():
    with pytest.raises(spectrum.NoNoiseBulkError, match="no Marchenko-Pastur bulk"):
        spectrum.noise_sigma_mppca(np.array([100.0, 1.0]), 1000, 2)
    options = spectrum.PartitionOptions(noise_estimator="mppca")
    part = spectrum.partition_spectrum(np.array([100.0, 1.0]), 1000, 2, options)
    assert not part.partitioned and part.numerical_rank == 2 and part.counts["noise"] == 2
    assert "no Marchenko-Pastur bulk" in part.note and part.shares[2] == pytest.approx(1.0)


# --- batchspectrum.BandTracker: no smoothing step from a batch without a spectrum ----------------------


def test_band_tracker_ignores_degenerate_batches():
    rng = np.random.default_rng(7)
    batch, d = 64, 32
    good = spectrum.singular_values_direct(rng.standard_normal((batch, d)))
    tracker = batchspectrum.BandTracker(spectrum.PartitionOptions(null="mp"), momentum=0.9)
    first = tracker.update(np.zeros(d), batch, d)  # before any usable batch: all noise, nothing smoothed
    assert tracker.edge is None and first.tolist() == [batchspectrum.NOISE] * d
    tracker.update(good, batch, d)
    state = tracker.state()
    for values in (np.zeros(d), np.concatenate([[5.0], np.zeros(d - 1)])):
        labels = tracker.update(values, batch, d)
        assert tracker.state() == state  # the EMA did not move
        assert labels[values == 0].tolist() == [batchspectrum.NOISE] * int((values == 0).sum())
    assert tracker.update(np.array([3.0]), 1, d).tolist() == [batchspectrum.NOISE]  # a one-row batch
    assert tracker.state() == state


# --- metrics -----------------------------------------------------------------------------------------------


def test_metrics_of_a_spectrum_without_energy():
    for values in (np.zeros(6), np.zeros(0)):
        assert metrics.effective_rank(values) == 0.0
        assert math.isnan(metrics.stable_rank(values)) and math.isnan(metrics.participation_ratio(values))
        assert all(math.isnan(x) for x in metrics.power_law_alpha(values))
    assert math.isnan(metrics.hellinger_spectral_distance(np.zeros(3), np.ones(3)))
    assert math.isnan(metrics.mean_cosine(np.zeros(4), 1))


# --- analyze: the library ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype,block_rows", [(np.float32, None), (np.float64, 64)])
def test_identical_rows_are_a_collapsed_report(tmp_path, dtype, block_rows):
    entry = _document(_save(tmp_path, "same", _identical(dtype=dtype)), block_rows=block_rows)
    assert entry["n_samples"] == 500 and entry["distinct_rows"] == 1
    assert entry["n_effective"] == 0  # one distinct row: nothing left after centring
    assert entry["singular_values"] == [0.0] * D
    assert entry["metrics"]["effective_rank"] == 0.0
    assert entry["metrics"]["stable_rank"] is None and entry["metrics"]["participation_ratio"] is None
    assert entry["metrics"]["mean_cosine"] == pytest.approx(1.0, abs=1e-12)  # every row points the same way
    assert {name: band["count"] for name, band in entry["bands"].items()} == {"strong": 0, "weak": 0, "noise": D}
    assert all(band["energy_share"] is None for band in entry["bands"].values())
    assert entry["components"]["energy_share"] == [None] * D and entry["components"]["snr"] == [None] * D
    assert entry["noise"]["numerical_rank"] == 0 and entry["noise"]["signal_rank"] is None
    assert any("the same vector" in note and "collapsed to one point" in note for note in entry["notes"])
    _assert_nulls_explained(entry)


def test_identical_rows_wider_than_tall_go_through_the_direct_svd(tmp_path):
    entry = _document(_save(tmp_path, "same", _identical(n=5, d=40, dtype=np.float64)))
    assert entry["n_effective"] == 0 and entry["singular_values"] == [0.0] * 4
    assert entry["metrics"]["effective_rank"] == 0.0 and entry["bands"]["noise"]["count"] == 4


def test_zero_matrix(tmp_path):
    entry = _document(_save(tmp_path, "zeros", np.zeros((50, 8), np.float32)))
    assert entry["zero_rows"] == 50 and entry["metrics"]["effective_rank"] == 0.0
    assert entry["metrics"]["mean_cosine"] is None and entry["bands"]["noise"]["count"] == 8
    assert "every row is zero: the set spans no direction (effective rank 0)" in entry["notes"]
    assert any("mean_cosine null" in note and "has 0" in note for note in entry["notes"])
    _assert_nulls_explained(entry)


def test_one_row_has_no_components_when_centred(tmp_path):
    row = np.array([[3.0, -4.0, 0.0, 12.0]])
    path = _save(tmp_path, "one", row)
    entry = _document(path)
    assert entry["n_samples"] == 1 and entry["n_effective"] == 0 and entry["singular_values"] == []
    assert {band["count"] for band in entry["bands"].values()} == {0}
    assert all(band["first_index"] is None for band in entry["bands"].values())
    assert entry["metrics"]["effective_rank"] == 0.0 and entry["metrics"]["mean_cosine"] is None
    assert entry["notes"][0].startswith("one row: centring leaves no degree of freedom")
    _assert_nulls_explained(entry)
    raw = _document(path, center=False)  # uncentred: one component, |x| = 13
    assert raw["singular_values"] == [pytest.approx(13.0, rel=1e-14)] and raw["noise"]["numerical_rank"] == 1
    assert raw["metrics"]["effective_rank"] == 1.0 and raw["bands"]["noise"]["energy_share"] == 1.0
    _assert_nulls_explained(raw)


def test_two_rows_have_one_component(tmp_path):
    rows = np.random.default_rng(3).standard_normal((2, 8))
    entry = _document(_save(tmp_path, "two", rows))
    expected = np.linalg.norm(rows[0] - rows[1]) / math.sqrt(2.0)  # the centred rows are +-(x1 - x2) / 2
    assert entry["n_effective"] == 1 and entry["singular_values"] == [pytest.approx(expected, rel=1e-12)]
    assert entry["bands"]["noise"] == {"count": 1, "energy_share": 1.0, "first_index": 1, "energy_share_ci": None,
                                       "count_ci": None}
    assert entry["metrics"]["effective_rank"] == 1.0 and entry["metrics"]["stable_rank"] == 1.0
    assert entry["notes"][0].startswith("two rows") and "numerical rank 1" in entry["noise"]["note"]
    _assert_nulls_explained(entry)


def test_three_rows_are_partitioned(tmp_path):
    rows = np.random.default_rng(5).standard_normal((3, 8))
    entry = _document(_save(tmp_path, "three", rows))
    reference = np.linalg.svd(rows - rows.mean(axis=0), compute_uv=False)[:2]
    assert_allclose(entry["singular_values"], reference, rtol=1e-12)
    assert entry["noise"]["sigma"] is not None and entry["noise"]["note"] is None
    assert sum(band["count"] for band in entry["bands"].values()) == 2
    _assert_nulls_explained(entry)


def test_rank_one_outer_product(tmp_path):
    matrix = np.outer(np.arange(1.0, 41.0), np.array([1.0, -2.0, 0.5, 3.0, 0.0, 1.0]))
    entry = _document(_save(tmp_path, "rank1", matrix))
    centred = matrix - matrix.mean(axis=0)
    assert entry["singular_values"][0] == pytest.approx(np.linalg.norm(centred), rel=1e-12)
    assert entry["noise"]["numerical_rank"] == 1 and entry["noise"]["sigma"] is None
    for name in ("effective_rank", "stable_rank", "participation_ratio"):
        assert entry["metrics"][name] == 1.0  # exactly: the rounding below the floor does not count
    assert entry["bands"]["noise"]["count"] == 6 and entry["bands"]["noise"]["energy_share"] == pytest.approx(1.0)
    assert "the centred rows span a single direction: the set has collapsed to a line" in entry["notes"]
    _assert_nulls_explained(entry)


@pytest.mark.parametrize("layout", ["constant", "duplicate"])
def test_constant_or_duplicate_columns_leave_a_rank_deficient_partition(tmp_path, layout):
    rng = np.random.default_rng(11)
    random = rng.standard_normal((300, 10))
    extra = np.full((300, 6), 2.5) if layout == "constant" else random[:, :6]
    matrix = np.concatenate([random, extra], axis=1)
    entry = _document(_save(tmp_path, layout, matrix))
    assert entry["noise"]["numerical_rank"] == 10 and entry["noise"]["sigma"] is not None
    assert "rank-deficient at working precision" in entry["noise"]["note"]
    assert entry["bands"]["noise"]["count"] >= 6 and entry["metrics"]["effective_rank"] > 5
    assert not any("numerical rank" in note for note in entry["notes"])  # not degenerate
    reference = np.linalg.svd(matrix - matrix.mean(axis=0), compute_uv=False)
    assert_allclose(entry["singular_values"][:10], reference[:10], rtol=1e-6)


def test_n_much_smaller_than_d(tmp_path):
    rows = np.random.default_rng(2).standard_normal((4, 300))
    entry = _document(_save(tmp_path, "wide", rows))
    reference = np.linalg.svd(rows - rows.mean(axis=0), compute_uv=False)[:3]
    assert entry["n_effective"] == 3 and entry["beta"] == pytest.approx(0.01)
    assert_allclose(entry["singular_values"], reference, rtol=1e-12)
    assert entry["noise"]["sigma"] is not None
    _assert_nulls_explained(entry)


def test_dropping_non_finite_rows_down_to_one_or_none_is_a_report(tmp_path):
    rows = np.random.default_rng(6).standard_normal((4, 5))
    rows[1:, 2] = np.nan
    path = _save(tmp_path, "holes", rows)
    entry = _document(path, drop_nonfinite=True)
    assert entry["n_samples"] == 1 and entry["dropped_nonfinite"] == 3 and entry["singular_values"] == []
    rows[0, 0] = np.inf
    entry = _document(_save(tmp_path, "all", rows), drop_nonfinite=True)
    assert entry["n_samples"] == 0 and entry["dropped_nonfinite"] == 4
    assert entry["notes"][0] == "no usable rows: all 4 held NaN or Inf and were dropped"
    assert entry["metrics"]["effective_rank"] == 0.0


@pytest.mark.parametrize("estimator,rule", [("median-gd", "gd"), ("mppca", "iqr"), ("iqr", "gd")])
def test_every_estimator_reports_degenerate_sets(tmp_path, estimator, rule):
    for name, matrix in (("same", _identical(n=60)), ("two", np.eye(2, D))):
        entry = _document(_save(tmp_path, name, matrix), noise_estimator=estimator, strong_rule=rule)
        assert entry["noise"]["sigma"] is None and entry["noise"]["estimator"] == estimator
        _assert_nulls_explained(entry)


def test_report_paths_name_every_key_of_a_degenerate_report(tmp_path):
    path = str(tmp_path / "pair.npz")
    np.savez(path, image=np.zeros((20, 6)), text=np.random.default_rng(1).standard_normal((20, 6)))
    document = analyze(path, options=AnalysisOptions(bands=2)).to_dict()
    assert "notes" in report_paths()
    _skeleton_holds(document, report_paths())
    _skeleton_holds(document["sets"]["image"], report_paths())


# --- two sets: the cross-modal section ---------------------------------------------------------------------


def test_cross_section_with_one_collapsed_set(tmp_path):
    rng = np.random.default_rng(8)
    path = str(tmp_path / "pair.npz")
    np.savez(path, image=_identical(n=40, d=12), text=rng.standard_normal((40, 12)))
    pair = _strict(json.dumps(analyze(path).to_dict(), allow_nan=False))["cross"]["image~text"]
    assert pair["hellinger"] is None and pair["subspace_overlap"] is None and pair["top_k"] == 0
    assert pair["principal_angles_deg"] is None and pair["subspace_distance"] is None
    assert pair["modality_gap"] is not None  # the collapsed rows still have a direction
    assert "image has no spectral energy (numerical rank 0): hellinger is null" in pair["note"]
    assert "subspace_overlap is null" in pair["note"]


def test_cross_section_with_a_zero_set_of_another_dimension(tmp_path):
    path = str(tmp_path / "pair.npz")
    np.savez(path, image=np.zeros((30, 12)), text=np.random.default_rng(9).standard_normal((30, 8)))
    pair = analyze(path).to_dict()["cross"]["image~text"]
    assert pair["hellinger"] is None and pair["modality_gap"] is None
    assert pair["note"].startswith("dimensions differ (12 vs 8)") and "hellinger is null" in pair["note"]
    same = str(tmp_path / "same.npz")
    np.savez(same, image=np.zeros((30, 8)), text=np.random.default_rng(9).standard_normal((30, 8)))
    pair = analyze(same).to_dict()["cross"]["image~text"]
    assert pair["modality_gap"] is None and "image has only zero rows" in pair["note"]


def test_bands_on_degenerate_sets(tmp_path):
    rng = np.random.default_rng(10)
    path = str(tmp_path / "pair.npz")
    np.savez(path, image=_identical(n=40, d=12), text=rng.standard_normal((40, 12)))
    document = _strict(json.dumps(analyze(path, options=AnalysisOptions(bands=3)).to_dict(), allow_nan=False))
    view = document["sets"]["image"]["svd_bands"]
    assert [band["count"] for band in view["bands"]] == [4, 4, 4]
    assert all(band["energy_share"] is None and band["effective_rank"] is None for band in view["bands"])
    assert any(note.startswith("svd_bands energy shares") for note in document["sets"]["image"]["notes"])
    text_view = document["sets"]["text"]["svd_bands"]
    assert sum(band["energy_share"] for band in text_view["bands"]) == pytest.approx(1.0)
    rows = document["cross"]["image~text"]["svd_bands"]
    assert [row["dimensions"] for row in rows] == [0, 0, 0]
    assert all(row["subspace_overlap"] is None and row["hellinger"] is None for row in rows)
    one = _document(_save(tmp_path, "one", rng.standard_normal((1, 12))), bands=2)
    assert one["svd_bands"] is None
    assert "svd_bands null: there are no singular components to split (p = 0)" in one["notes"]


def test_compare_a_collapsed_store_with_a_normal_one(tmp_path):
    rng = np.random.default_rng(12)
    collapsed, normal = str(tmp_path / "collapsed.h5"), str(tmp_path / "normal.h5")
    store.write_set(collapsed, "image", _identical(n=60))
    store.write_set(normal, "image", rng.standard_normal((60, D)).astype(np.float32))
    document = _strict(json.dumps(compare([collapsed, normal]).to_dict(), allow_nan=False))
    entry = document["sets"]["image"]
    assert entry["bands"]["noise"]["energy_share"] == {"before": None, "after": 1.0, "delta": None}
    assert entry["metrics"]["effective_rank"]["before"] == 0.0 and entry["metrics"]["stable_rank"]["before"] is None
    assert entry["strong_subspace"] == {"k_before": 0, "k_after": 0, "principal_angles_deg": [], "overlap": None}
    assert any(note.startswith("image (collapsed): numerical rank 0") for note in document["notes"])
    assert not any("(normal)" in note for note in document["notes"])
    reverse = compare([normal, collapsed]).to_dict()
    assert reverse["sets"]["image"]["bands"]["noise"]["energy_share"]["after"] is None


# --- the CLI -------------------------------------------------------------------------------------------------


def test_gate_on_a_collapsed_set_exits_1(tmp_path):
    path = _save(tmp_path, "collapsed", _identical())
    report = tmp_path / "report.json"
    result = invoke("analyze", path, "--fail-if", "metrics.effective_rank < 5", "--json", report, "-q")
    assert result.exit_code == 1, result.output
    assert "FAILED --fail-if 'metrics.effective_rank < 5': metrics.effective_rank = 0" in result.stderr
    entry = _strict(report.read_text())  # the report is written before the gate exits
    assert entry["metrics"]["effective_rank"] == 0 and entry["notes"]
    null = invoke("analyze", path, "--fail-if", "metrics.stable_rank < 1", "-q")
    assert null.exit_code == 1 and "metrics.stable_rank = null (could not be computed" in null.stderr
    assert_ok(invoke("analyze", path, "--fail-if", "n_samples < 2", "-q"))  # a gate that holds: exit 0
    assert invoke("analyze", path, "--fail-if", "bands.noise.energy_share > 0.85", "-q").exit_code == 1  # null


@pytest.mark.parametrize("name,matrix", [
    ("collapsed", _identical()), ("zeros", np.zeros((30, 6))), ("one", np.ones((1, 6))),
    ("two", np.eye(2, 6)), ("rank1", np.outer(np.arange(1.0, 21.0), np.ones(6))),
])
def test_tables_json_and_csv_of_degenerate_sets(tmp_path, name, matrix):
    path = _save(tmp_path, name, matrix)
    report, components = tmp_path / "report.json", tmp_path / "components.csv"
    result = assert_ok(invoke("analyze", path, "--json", report, "--csv", components))
    assert "note:" in result.output and "Traceback" not in result.output
    entry = _strict(report.read_text())
    assert entry["notes"] and all(note.split(":")[0] in result.output.replace("\n", " ") for note in entry["notes"])
    _assert_nulls_explained(entry)
    lines = components.read_text().splitlines()
    assert lines[0] == "key,index,singular_value,band,energy_share,snr"
    assert len(lines) == 1 + len(entry["singular_values"])


def test_non_finite_rows_stay_bad_input_unless_dropped(tmp_path):
    rows = _identical(n=20, d=6).astype(np.float64)
    rows[3, 1] = np.nan
    path = _save(tmp_path, "holes", rows)
    assert_error(invoke("analyze", path, "-q"), 2, "1 row holds NaN or Inf", "--drop-nonfinite")
    report = tmp_path / "report.json"
    assert_ok(invoke("analyze", path, "--drop-nonfinite", "--json", report, "-q"))
    entry = _strict(report.read_text())
    assert entry["dropped_nonfinite"] == 1 and entry["n_samples"] == 19 and entry["metrics"]["effective_rank"] == 0
    gated = invoke("analyze", path, "--drop-nonfinite", "--fail-if", "metrics.effective_rank < 1", "-q")
    assert gated.exit_code == 1


def test_compare_cli_renders_a_degenerate_side(tmp_path):
    collapsed, normal = str(tmp_path / "collapsed.h5"), str(tmp_path / "normal.h5")
    store.write_set(collapsed, "image", _identical(n=60))
    store.write_set(normal, "image", np.random.default_rng(13).standard_normal((60, D)).astype(np.float32))
    result = assert_ok(invoke("compare", collapsed, normal))
    assert "numerical rank 0" in result.output
    gate = invoke("compare", collapsed, normal, "--fail-if", "bands.noise.energy_share.delta < 0", "-q")
    assert gate.exit_code == 1 and "null" in gate.stderr  # a null delta fails the gate


def _checkerboard_store(path, n=12, h=4, w=6, c=8) -> str:
    """Token grids (-1)^(i+j) a[image, channel]: their mean over (h, w), the pooled embedding, is all zero."""
    sign = (-1.0) ** np.add.outer(np.arange(h), np.arange(w))
    amplitude = np.random.default_rng(2).integers(1, 5, (n, c))
    grids = (sign[None, :, :, None] * amplitude[:, None, None, :]).astype(np.float16)
    rows = grids.astype(np.float32).mean(axis=(1, 2))
    assert not rows.any()
    with store.StoreWriter(str(path)) as writer:
        target = writer.create_set("image", c, attrs={"modality": "image"}, expected_rows=n)
        target.append(rows, [f"image-{i}" for i in range(n)])
        target.append_tokens(grids)
    return str(path)


def test_spatial_bands_of_checkerboards_whose_pooled_rows_are_zero(tmp_path):
    path = _checkerboard_store(tmp_path / "checker.h5")
    report = tmp_path / "report.json"
    result = assert_ok(invoke("analyze", path, "--spatial-bands", 2, "--json", report))
    assert "spatial bands" in result.output and "every row is zero" in result.output.replace("\n", " ")
    entry = _strict(report.read_text())
    assert entry["metrics"]["effective_rank"] == 0 and entry["bands"]["noise"]["count"] == 8
    view = entry["spatial_bands"]
    assert view["n_images"] == 12 and view["empty_images"] == 0
    assert_allclose([band["energy_share"] for band in view["bands"]], [0.0, 1.0], atol=1e-6)
    assert_allclose(view["dc_share"], 0.0, atol=1e-6)
    gate = invoke("analyze", path, "--spatial-bands", 2, "--fail-if", "metrics.effective_rank < 1", "-q")
    assert gate.exit_code == 1
    assert_ok(invoke("analyze", path, "--spatial-bands", 2, "--fail-if", "spatial_bands.bands.1.energy_share < 0.9",
                     "-q"))


def test_checks_fail_on_null_and_read_zero_as_a_number():
    document = {"metrics": {"effective_rank": 0.0, "stable_rank": None}}
    rank, stable = checks.evaluate([checks.parse_check("metrics.effective_rank < 5"),
                                    checks.parse_check("metrics.stable_rank > 100")], document)
    assert rank.failed and rank.actual == 0.0 and rank.describe() == "metrics.effective_rank = 0"
    assert stable.failed and stable.actual is None


@pytest.mark.parametrize("kind", ["spectrum", "energy", "bands"])
def test_figures_of_a_collapsed_set(tmp_path, kind):
    path = _save(tmp_path, "collapsed", _identical())
    report = tmp_path / "report.json"
    assert invoke("analyze", path, "--json", report, "-q").exit_code == 0
    out = tmp_path / f"{kind}.png"
    assert_ok(invoke("plot", kind, report, "--out", out, "-q"))
    assert out.stat().st_size > 0
