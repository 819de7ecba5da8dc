"""``compare``: the pure comparison of states, its rendering, and ``sdetool compare`` on real files.

The pure part (:func:`sdetool.results.compare.compare_states`) is checked on hand-built states: deltas are
``after - before`` exactly, missing values give null deltas, sets are matched by the documented rules,
and the strong-subspace angles are checked on planted bases against :func:`scipy.linalg.subspace_angles`.
End to end, two stores (2000 x 64, four planted spikes; the second has twice the noise, one spike rotated
by 30 degrees and a fifth spike) are analysed with ``sdetool analyze --json`` and compared as reports and
as stores; two short head fine-tuning runs (one exporting its held-out embeddings) are compared as runs.
"""

from __future__ import annotations

import io
import json
import math
import os

import numpy as np
import pytest
import scipy.linalg
from cli_helpers import assert_error as _assert_error
from cli_helpers import assert_ok as _assert_ok
from cli_helpers import invoke as _invoke
from numpy.testing import assert_allclose
from rich.console import Console

from sdetool import __version__
from sdetool.analysis import checks
from sdetool.cli import main
from sdetool.errors import BadInputError
from sdetool.io import store
from sdetool.results import tables as report
from sdetool.results.compare import (SCHEMA, SET_METRICS, SetState, State, change, compare, compare_paths,
                                     compare_states, match_sets, state_from_analysis, state_from_evaluation,
                                     strong_subspace)
from sdetool.spectral import metrics

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BANDS = ("strong", "weak", "noise")
N_ROWS, DIM = 2000, 64
ROTATION_DEG = 30.0
RECALL_ORDER = [f"{direction}_R@{k}" for direction in ("image_to_text", "text_to_image") for k in (1, 5, 10)]


def _load(path) -> dict:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


# --- hand-built states -----------------------------------------------------------------------------


def _bands(strong, weak, noise, counts=(2, 3, 11)) -> dict:
    return {band: {"count": count, "energy_share": share}
            for band, count, share in zip(BANDS, counts, (strong, weak, noise))}


def _set(shares=(0.7, 0.2, 0.1), counts=(2, 3, 11), basis=None, dim=16, **scores) -> SetState:
    return SetState(_bands(*shares, counts=counts), dict(scores), dim, basis)


def _state(label="x", sets=None, cross=None, evaluation=None) -> State:
    return State(label, f"{label}.json", sets if sets is not None else {"image": _set()}, cross or {}, evaluation)


def _orthonormal(rng, dim, k):
    basis, _ = np.linalg.qr(rng.normal(size=(dim, k)))
    return basis


# --- metrics.principal_angles on planted geometry ---------------------------------------------------


@pytest.mark.parametrize("angle", [0.0, 0.1, math.pi / 6, 1.2, math.pi / 2])
def test_principal_angles_planted_rotation(angle):
    """span(e1, e2) against span(cos t e1 + sin t e3, e2): angles [0, t]."""
    eye = np.eye(5)
    first = eye[:, [0, 1]]
    second = np.stack([math.cos(angle) * eye[:, 0] + math.sin(angle) * eye[:, 2], eye[:, 1]], axis=1)
    got = metrics.principal_angles(first, second)
    assert got.shape == (2,)
    assert_allclose(got, [0.0, angle], rtol=0, atol=1e-7)
    assert_allclose(got, np.sort(scipy.linalg.subspace_angles(first, second)), rtol=0, atol=1e-7)


@pytest.mark.parametrize("k_a, k_b", [(3, 3), (2, 5), (6, 4), (1, 1)])
def test_principal_angles_against_scipy(k_a, k_b):
    rng = np.random.default_rng(k_a * 10 + k_b)
    first, second = _orthonormal(rng, 12, k_a), _orthonormal(rng, 12, k_b)
    got = metrics.principal_angles(first, second)
    assert got.shape == (min(k_a, k_b),)
    assert np.all(np.diff(got) >= 0), got  # ascending
    assert_allclose(got, np.sort(scipy.linalg.subspace_angles(first, second)), rtol=0, atol=1e-7)
    assert_allclose(metrics.principal_angles(second, first), got, rtol=0, atol=1e-10)  # symmetric


def test_principal_angles_nested_and_orthogonal_subspaces():
    rng = np.random.default_rng(3)
    basis = _orthonormal(rng, 10, 6)
    assert_allclose(metrics.principal_angles(basis[:, :2], basis), [0.0, 0.0], rtol=0, atol=1e-7)
    assert_allclose(metrics.principal_angles(basis[:, :3], basis[:, 3:]), [math.pi / 2] * 3, rtol=0, atol=1e-7)


def test_principal_angles_refuses_mismatched_shapes():
    with pytest.raises(ValueError, match="same d"):
        metrics.principal_angles(np.eye(4)[:, :2], np.eye(5)[:, :2])
    with pytest.raises(ValueError):
        metrics.principal_angles(np.ones(4), np.eye(4))


# --- change and compare_states ---------------------------------------------------------------------


def test_change_is_after_minus_before_and_null_when_a_side_is():
    assert change(0.25, 0.75) == {"before": 0.25, "after": 0.75, "delta": 0.5}
    assert change(3, 5) == {"before": 3.0, "after": 5.0, "delta": 2.0}
    assert change(None, 0.5) == {"before": None, "after": 0.5, "delta": None}
    assert change(0.5, None) == {"before": 0.5, "after": None, "delta": None}
    assert change(float("nan"), 1.0) == {"before": None, "after": 1.0, "delta": None}
    assert change(1.0, float("inf"))["delta"] is None
    assert change(True, 1.0)["before"] is None  # a flag is not a number


def test_band_deltas_are_exact_differences():
    before = _state("base", {"image": _set((0.61, 0.27, 0.12), counts=(2, 3, 11), effective_rank=7.5)})
    after = _state("tuned", {"image": _set((0.55, 0.2, 0.25), counts=(1, 5, 10), effective_rank=9.25)})
    document = compare_states(before, after).to_dict()
    assert document["schema"] == SCHEMA and document["sdetool_version"] == __version__
    assert document["before"] == {"label": "base", "source": "base.json"}
    assert document["after"] == {"label": "tuned", "source": "tuned.json"}
    entry = document["sets"]["image"]
    assert entry["before_key"] == entry["after_key"] == "image"
    for band, b, a in zip(BANDS, (0.61, 0.27, 0.12), (0.55, 0.2, 0.25)):
        assert entry["bands"][band]["energy_share"] == {"before": b, "after": a, "delta": a - b}
    for band, b, a in zip(BANDS, (2, 3, 11), (1, 5, 10)):
        assert entry["bands"][band]["count"] == {"before": b, "after": a, "delta": a - b}
    # every metric is there (a --fail-if path never depends on the inputs); those no side has are null
    assert list(entry["metrics"]) == list(SET_METRICS)
    assert entry["metrics"]["effective_rank"] == {"before": 7.5, "after": 9.25, "delta": 1.75}
    assert all(entry["metrics"][m] == {"before": None, "after": None, "delta": None} for m in SET_METRICS[1:])
    assert all(isinstance(entry["bands"][band]["count"]["delta"], int) for band in BANDS)
    assert document["cross"] == {} and document["evaluation"] is None
    json.dumps(document, allow_nan=False)  # strict JSON


def test_missing_values_give_null_deltas():
    before = _state("a", {"image": _set((0.6, None, 0.4), counts=(2, None, 14), stable_rank=None, mean_cosine=0.1)})
    after = _state("b", {"image": _set((0.5, 0.1, float("nan")), counts=(2, 1, 13), stable_rank=3.0, mean_cosine=None)})
    entry = compare_states(before, after).to_dict()["sets"]["image"]
    assert entry["bands"]["weak"]["energy_share"] == {"before": None, "after": 0.1, "delta": None}
    assert entry["bands"]["weak"]["count"] == {"before": None, "after": 1.0, "delta": None}
    assert entry["bands"]["noise"]["energy_share"] == {"before": 0.4, "after": None, "delta": None}
    assert entry["bands"]["strong"]["energy_share"]["delta"] == 0.5 - 0.6
    assert entry["metrics"]["stable_rank"] == {"before": None, "after": 3.0, "delta": None}
    assert entry["metrics"]["mean_cosine"] == {"before": 0.1, "after": None, "delta": None}
    assert list(entry["metrics"]) == list(SET_METRICS)  # all of them, in SET_METRICS order
    assert entry["metrics"]["effective_rank"] == {"before": None, "after": None, "delta": None}
    assert [m for m in SET_METRICS if m in entry["metrics"]] == list(entry["metrics"])


def test_sets_on_both_sides_are_compared_and_the_rest_noted():
    before = _state("a", {"image": _set(), "text": _set(), "audio": _set()})
    after = _state("b", {"text": _set(), "image": _set(), "video": _set()})
    comparison = compare_states(before, after)
    assert comparison.pairs == (("image", "image", "image"), ("text", "text", "text"))
    document = comparison.to_dict()
    assert list(document["sets"]) == ["image", "text"]
    assert document["notes"][0] == "only on one side, not compared: audio, video"


def test_single_sets_with_different_names_are_paired():
    pairs, notes = match_sets(_state("a", {"A": _set()}), _state("b", {"B": _set()}))
    assert pairs == (("A:B", "A", "B"),) and notes == ()
    document = compare_states(_state("a", {"A": _set()}), _state("b", {"B": _set()})).to_dict()
    assert list(document["sets"]) == ["A:B"]
    assert document["sets"]["A:B"]["before_key"] == "A" and document["sets"]["A:B"]["after_key"] == "B"


def test_no_common_set_is_refused():
    before, after = _state("a", {"image": _set(), "text": _set()}), _state("b", {"audio": _set()})
    with pytest.raises(BadInputError, match="share no embedding set") as error:
        compare_states(before, after)
    assert "a.json" in str(error.value) and "b.json" in str(error.value) and "--key" in str(error.value)


def test_key_selects_sets_and_a_missing_key_is_refused():
    before = _state("a", {"image": _set(), "text": _set()})
    after = _state("b", {"image": _set(), "text": _set(), "extra": _set()})
    document = compare_states(before, after, ["text"]).to_dict()
    assert list(document["sets"]) == ["text"]
    assert not any("one side" in note for note in document["notes"])
    with pytest.raises(BadInputError, match="--key extra: a.json has no such set; it has image, text"):
        compare_states(before, after, ["extra"])
    with pytest.raises(BadInputError, match="--key nope"):
        compare_states(before, after, ["image", "nope"])


def test_strong_subspace_from_planted_bases_of_different_sizes():
    """k_before = 2, k_after = 3: the first direction kept, the second rotated by 40 degrees."""
    rng = np.random.default_rng(7)
    frame = _orthonormal(rng, 16, 5)
    angle = math.radians(40.0)
    first = frame[:, :2]
    second = np.stack([frame[:, 0], math.cos(angle) * frame[:, 1] + math.sin(angle) * frame[:, 2], frame[:, 3]], axis=1)
    before = _state("a", {"image": _set(counts=(2, 3, 11), basis=first)})
    after = _state("b", {"image": _set(counts=(3, 2, 11), basis=second)})
    comparison = compare_states(before, after)
    assert comparison.notes == ()
    result = comparison.to_dict()["sets"]["image"]["strong_subspace"]
    assert result["k_before"] == 2 and result["k_after"] == 3
    assert_allclose(result["principal_angles_deg"], [0.0, 40.0], rtol=0, atol=1e-5)
    reference = np.sort(scipy.linalg.subspace_angles(first, second))
    assert_allclose(np.radians(result["principal_angles_deg"]), reference, rtol=0, atol=1e-7)
    assert_allclose(result["overlap"], np.mean(np.cos(reference) ** 2), rtol=1e-12)
    assert_allclose(result["overlap"], (1 + math.cos(angle) ** 2) / 2, rtol=1e-12)


def test_strong_subspace_overlap_is_one_when_nested():
    rng = np.random.default_rng(8)
    frame = _orthonormal(rng, 10, 4)
    result = strong_subspace(_set(basis=frame[:, :2], dim=10), _set(basis=frame, dim=10))
    assert_allclose(result["overlap"], 1.0, rtol=0, atol=1e-12)
    assert_allclose(result["principal_angles_deg"], [0.0, 0.0], rtol=0, atol=1e-5)


def test_strong_subspace_without_strong_components():
    rng = np.random.default_rng(9)
    empty, basis = np.zeros((16, 0)), _orthonormal(rng, 16, 3)
    result = strong_subspace(_set(basis=empty), _set(basis=basis))
    assert result == {"k_before": 0, "k_after": 3, "principal_angles_deg": [], "overlap": None}


def test_missing_bases_or_dimensions_give_null_and_a_note():
    rng = np.random.default_rng(10)
    basis = _orthonormal(rng, 16, 2)
    document = compare_states(_state("a", {"image": _set(basis=basis)}), _state("b", {"image": _set()})).to_dict()
    assert document["sets"]["image"]["strong_subspace"] is None
    assert len(document["notes"]) == 1
    assert document["notes"][0].startswith("image: no principal angles") and "--export-embeddings" in document["notes"][0]

    other = _orthonormal(rng, 8, 2)
    document = compare_states(_state("a", {"image": _set(basis=basis, dim=16)}),
                              _state("b", {"image": _set(basis=other, dim=8)})).to_dict()
    assert document["sets"]["image"]["strong_subspace"] is None
    assert document["notes"] == ["image: no principal angles (dimensions differ: 16 vs 8)"]


def test_evaluation_deltas_and_recall_order():
    shuffled = ["text_to_image_R@10", "image_to_text_R@5", "image_to_text_R@10", "text_to_image_R@1",
                "image_to_text_R@1", "text_to_image_R@5"]
    before_recall = {name: 0.1 * (i + 1) for i, name in enumerate(shuffled)}
    after_recall = {name: value + 0.05 * (i % 3) for i, (name, value) in enumerate(before_recall.items())}
    after_recall["image_to_text_R@50"] = 0.99  # on one side only: left out
    before = _state("a", evaluation={"recall": before_recall, "zero_shot_accuracy": 0.5})
    after = _state("b", evaluation={"recall": after_recall, "zero_shot_accuracy": 0.625})
    evaluation = compare_states(before, after).to_dict()["evaluation"]
    assert list(evaluation["recall"]) == RECALL_ORDER
    for name in RECALL_ORDER:
        assert evaluation["recall"][name] == {"before": before_recall[name], "after": after_recall[name],
                                              "delta": after_recall[name] - before_recall[name]}
    assert evaluation["zero_shot_accuracy"] == {"before": 0.5, "after": 0.625, "delta": 0.125}

    without_accuracy = compare_states(before, _state("b", evaluation={"recall": after_recall})).to_dict()["evaluation"]
    assert "zero_shot_accuracy" not in without_accuracy and list(without_accuracy["recall"]) == RECALL_ORDER
    assert compare_states(before, _state("b")).to_dict()["evaluation"] is None  # one side has no evaluation


def test_cross_metrics_of_pairs_on_both_sides():
    before = _state("a", cross={"image~text": {"hellinger": 0.25, "subspace_overlap": 0.5, "modality_gap": None},
                                "image~audio": {"hellinger": 0.1, "subspace_overlap": 0.2, "modality_gap": 0.3}})
    after = _state("b", cross={"image~text": {"hellinger": 0.125, "subspace_overlap": 0.75, "modality_gap": 0.4}})
    cross = compare_states(before, after).to_dict()["cross"]
    assert list(cross) == ["image~text"]
    assert cross["image~text"] == {"hellinger": {"before": 0.25, "after": 0.125, "delta": -0.125},
                                   "subspace_overlap": {"before": 0.5, "after": 0.75, "delta": 0.25},
                                   "modality_gap": {"before": None, "after": 0.4, "delta": None}}


def test_states_from_documents():
    entry = {"key": "image", "dim": 8, "bands": {band: {"count": c, "energy_share": s, "first_index": 1}
                                                 for band, c, s in zip(BANDS, (1, 2, 5), (0.5, 0.3, 0.2))},
             "metrics": {"effective_rank": 4.5, "stable_rank": 2.0, "power_law_r2": 0.9}}
    state = state_from_analysis({"schema": "sdetool.analysis/1", **entry}, "lab", "src.json")
    assert state.label == "lab" and state.source == "src.json" and list(state.sets) == ["image"]
    assert state.sets["image"].bands["noise"] == {"count": 5, "energy_share": 0.2}
    assert state.sets["image"].metrics["effective_rank"] == 4.5 and state.sets["image"].metrics["mean_cosine"] is None
    assert state.sets["image"].dim == 8 and state.sets["image"].strong_basis is None

    several = {"schema": "sdetool.analysis/1", "sets": {"image": entry, "text": {**entry, "key": "text"}},
               "cross": {"image~text": {"hellinger": 0.1, "subspace_overlap": 0.9, "modality_gap": 0.2, "top_k": 5}}}
    state = state_from_analysis(several, "lab", "src.json")
    assert list(state.sets) == ["image", "text"]
    assert state.cross == {"image~text": {"hellinger": 0.1, "subspace_overlap": 0.9, "modality_gap": 0.2}}

    stage = {"bands": {"image": {**_bands(0.8, 0.15, 0.05), "effective_rank": 3.5}},
             "recall": {"image_to_text_R@1": 0.25}, "zero_shot_accuracy": 0.75, "pairs": 10}
    state = state_from_evaluation(stage, "run after", "run (after)")
    assert state.sets["image"].metrics == {"effective_rank": 3.5}
    assert state.sets["image"].bands["strong"] == {"count": 2, "energy_share": 0.8}
    assert state.evaluation == {"recall": {"image_to_text_R@1": 0.25}, "zero_shot_accuracy": 0.75}


def test_compare_paths_know_every_documented_path():
    skeleton = compare_paths()
    good = ["bands.noise.energy_share.delta", "sets.image.bands.strong.count.delta", "metrics.effective_rank.delta",
            "strong_subspace.overlap", "strong_subspace.principal_angles_deg.0", "cross.image~text.hellinger.delta",
            "evaluation.zero_shot_accuracy.delta", "evaluation.recall.image_to_text_R@1.delta"]
    checks.check_paths([checks.parse_check(f"{path} > 0") for path in good], skeleton)
    for typo in ("bands.nosie.energy_share.delta", "metrics.efective_rank.delta", "evaluation.accuracy.delta",
                 "strong_subspace.angle"):
        with pytest.raises(BadInputError, match="a report has no value"):
            checks.check_paths([checks.parse_check(f"{typo} > 0")], skeleton)


# --- rendering --------------------------------------------------------------------------------------


def _rendered_document() -> dict:
    rng = np.random.default_rng(11)
    frame = _orthonormal(rng, 16, 3)
    before = _state("base", {"image": _set((0.6123, 0.2877, 0.1), counts=(2, 3, 11), basis=frame[:, :2],
                                           effective_rank=7.5, stable_rank=None)},
                    cross={"image~text": {"hellinger": 0.25, "subspace_overlap": None, "modality_gap": 0.5}},
                    evaluation={"recall": {"image_to_text_R@10": 0.5, "image_to_text_R@1": 0.125},
                                "zero_shot_accuracy": 0.5})
    after = _state("tuned", {"image": _set((0.55, 0.2, 0.25), counts=(3, 2, 11), basis=frame, effective_rank=9.25,
                                           stable_rank=2.5)},
                   cross={"image~text": {"hellinger": 0.125, "subspace_overlap": None, "modality_gap": 0.25}},
                   evaluation={"recall": {"image_to_text_R@10": 0.75, "image_to_text_R@1": 0.1},
                               "zero_shot_accuracy": 0.5625})
    return compare_states(before, after).to_dict()


def test_compare_rows():
    document = _rendered_document()
    entry = document["sets"]["image"]
    assert report.compare_band_rows(entry) == [
        ("strong", "2", "3", "+1", "61.23%", "55.00%", "-6.23 pt"),
        ("weak", "3", "2", "-1", "28.77%", "20.00%", "-8.77 pt"),
        ("noise", "11", "11", "+0", "10.00%", "25.00%", "+15.00 pt"),
    ]
    assert report.compare_metric_rows(entry) == [("effective rank", "7.5", "9.25", "+1.75"),
                                                 ("stable rank", "-", "2.5", "")]
    assert report.compare_evaluation_rows(document) == [
        ("zero-shot accuracy", "50.00%", "56.25%", "+6.25 pt"),
        ("image to text R@1", "12.50%", "10.00%", "-2.50 pt"),
        ("image to text R@10", "50.00%", "75.00%", "+25.00 pt"),
    ]
    assert report.compare_evaluation_rows({"evaluation": None}) == []


def test_subspace_line():
    entry = _rendered_document()["sets"]["image"]
    line = report.subspace_line(entry)
    assert line == "strong subspaces (2 -> 3 dims): principal angles 0.0 to 0.0 deg (median 0.0), overlap 1.000"
    planted = {"strong_subspace": {"k_before": 3, "k_after": 5, "principal_angles_deg": [1.0, 2.0, 30.0],
                                   "overlap": 0.8}}
    assert report.subspace_line(planted) == ("strong subspaces (3 -> 5 dims): principal angles 1.0 to 30.0 deg "
                                             "(median 2.0), overlap 0.800")
    assert report.subspace_line({"strong_subspace": None}) is None
    assert report.subspace_line({"strong_subspace": {"k_before": 0, "k_after": 2, "principal_angles_deg": [],
                                                     "overlap": None}}) is None


def test_subspace_line_median_of_an_even_count():
    planted = {"strong_subspace": {"k_before": 4, "k_after": 5, "principal_angles_deg": [1.0, 2.0, 10.0, 30.0],
                                   "overlap": 0.8}}
    assert f"(median {np.median([1.0, 2.0, 10.0, 30.0]):.1f})" in report.subspace_line(planted)


def test_render_compare_prints_every_section():
    document = _rendered_document()
    document["notes"] = ["a note [with brackets]"]
    buffer = io.StringIO()
    report.render_compare(document, Console(file=buffer, width=200, color_system=None))
    text = buffer.getvalue()
    assert "image: base -> tuned" in text
    for fragment in ("61.23%", "-6.23 pt", "+15.00 pt", "effective rank", "+1.75", "strong subspaces (2 -> 3 dims)",
                     "image~text: hellinger 0.25 -> 0.125, modality_gap 0.5 -> 0.25",
                     "held-out evaluation of the runs", "zero-shot accuracy", "+6.25 pt",
                     "note: a note [with brackets]"):
        assert fragment in text, (fragment, text)
    assert "subspace_overlap" not in text  # null on both sides: left out


# --- end to end: stores and reports -----------------------------------------------------------------


def _spiked(frame, strengths, noise, seed) -> np.ndarray:
    """(N_ROWS, DIM) float32: spikes along the columns of ``frame`` plus white noise."""
    rng = np.random.default_rng(seed)
    signal = rng.normal(size=(N_ROWS, frame.shape[1])) * np.asarray(strengths)
    return (signal @ frame.T + noise * rng.normal(size=(N_ROWS, DIM))).astype(np.float32)


def _strong_basis(matrix, k) -> np.ndarray:
    centred = matrix.astype(np.float64) - matrix.astype(np.float64).mean(axis=0)
    return np.linalg.svd(centred, full_matrices=False)[2][:k].T


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """A: 4 spikes, noise 1. B: the same spikes with the 4th rotated by 30 degrees, a 5th spike, noise 2."""
    root = tmp_path_factory.mktemp("stores")
    rng = np.random.default_rng(0)
    frame = _orthonormal(rng, DIM, 6)
    angle = math.radians(ROTATION_DEG)
    rotated = frame.copy()
    rotated[:, 3] = math.cos(angle) * frame[:, 3] + math.sin(angle) * frame[:, 4]
    rotated[:, 4] = frame[:, 5]
    before = _spiked(frame[:, :4], [20.0, 15.0, 10.0, 6.0], 1.0, seed=1)
    after = _spiked(rotated[:, :5], [20.0, 15.0, 10.0, 6.0, 8.0], 2.0, seed=2)
    ids = [f"row-{i:05d}" for i in range(N_ROWS)]
    paths = {"A.h5": before, "B.h5": after}
    for name, matrix in paths.items():
        store.write_set(str(root / name), "emb", matrix, ids=ids, attrs={"modality": "image"}, mode="w")
    for name in ("A", "B"):
        _assert_ok(_invoke("analyze", root / f"{name}.h5", "--json", root / f"{name}.json", "-q"))
    return {"root": root, "A": before, "B": after, "A.h5": str(root / "A.h5"), "B.h5": str(root / "B.h5"),
            "A.json": str(root / "A.json"), "B.json": str(root / "B.json")}


def test_analysis_reports_see_the_planted_spikes(stores):
    first, second = _load(stores["A.json"]), _load(stores["B.json"])
    assert first["bands"]["strong"]["count"] == 4 and second["bands"]["strong"]["count"] == 5
    assert second["bands"]["noise"]["energy_share"] > first["bands"]["noise"]["energy_share"]


def test_compare_reports_matches_the_analysis_reports(stores, tmp_path):
    out = tmp_path / "D.json"
    result = _assert_ok(_invoke("compare", stores["A.json"], stores["B.json"], "--json", out))
    document = _load(out)
    first, second = _load(stores["A.json"]), _load(stores["B.json"])
    assert document["schema"] == SCHEMA
    assert document["before"] == {"label": "A", "source": stores["A.json"]}
    assert document["after"] == {"label": "B", "source": stores["B.json"]}
    assert list(document["sets"]) == ["emb"]
    entry = document["sets"]["emb"]
    for band in BANDS:
        for quantity in ("count", "energy_share"):
            values = entry["bands"][band][quantity]
            assert values["before"] == first["bands"][band][quantity]
            assert values["after"] == second["bands"][band][quantity]
            assert values["delta"] == values["after"] - values["before"]
    assert set(entry["metrics"]) == set(SET_METRICS)
    for name in SET_METRICS:
        assert entry["metrics"][name]["before"] == first["metrics"][name]
        assert entry["metrics"][name]["after"] == second["metrics"][name]
    assert entry["strong_subspace"] is None
    assert document["evaluation"] is None and document["cross"] == {}
    assert len(document["notes"]) == 1 and document["notes"][0].startswith("emb: no principal angles")
    assert "emb: A -> B" in result.stdout and "note:" in result.stdout
    assert result.stderr == ""


def test_compare_stores_gives_the_principal_angles(stores, tmp_path):
    out = tmp_path / "D.json"
    result = _assert_ok(_invoke("compare", stores["A.h5"], stores["B.h5"], "--json", out))
    document = _load(out)
    entry = document["sets"]["emb"]
    strong = entry["strong_subspace"]
    assert strong["k_before"] == 4 and strong["k_after"] == 5
    angles = strong["principal_angles_deg"]
    assert len(angles) == 4 and angles == sorted(angles)
    # the planted geometry: three spikes kept, one rotated by 30 degrees (noise moves them slightly)
    assert_allclose(angles, [0.0, 0.0, 0.0, ROTATION_DEG], rtol=0, atol=5.0)
    # exactly: the angles between the top right singular vectors of the centred matrices
    reference = np.degrees(np.sort(scipy.linalg.subspace_angles(_strong_basis(stores["A"], 4),
                                                                _strong_basis(stores["B"], 5))))
    assert_allclose(angles, reference, rtol=0, atol=1e-3)
    assert_allclose(strong["overlap"], np.mean(np.cos(np.radians(reference)) ** 2), rtol=1e-6)
    assert document["notes"] == []
    assert document["before"]["label"] == "A" and document["before"]["source"] == stores["A.h5"]
    # the bands are those of `analyze` with default options
    first, second = _load(stores["A.json"]), _load(stores["B.json"])
    for band in BANDS:
        assert entry["bands"][band]["count"]["before"] == first["bands"][band]["count"]
        assert entry["bands"][band]["count"]["after"] == second["bands"][band]["count"]
        assert_allclose(entry["bands"][band]["energy_share"]["before"], first["bands"][band]["energy_share"],
                        rtol=1e-9, atol=1e-12)
        assert_allclose(entry["bands"][band]["energy_share"]["after"], second["bands"][band]["energy_share"],
                        rtol=1e-9, atol=1e-12)
    assert "strong subspaces (4 -> 5 dims)" in result.stdout


def test_compare_a_report_with_a_store(stores):
    comparison = compare([stores["A.json"], stores["B.h5"]]).to_dict()
    assert comparison["sets"]["emb"]["strong_subspace"] is None  # only one side has vectors
    assert comparison["sets"]["emb"]["bands"]["strong"]["count"] == {"before": 4.0, "after": 5.0, "delta": 1.0}


def test_compare_single_sets_with_different_keys(stores, tmp_path):
    document = _load(stores["A.json"])
    document["key"] = "img"
    renamed = tmp_path / "renamed.json"
    renamed.write_text(json.dumps(document))
    comparison = _load_compare(tmp_path, renamed, stores["B.json"])
    assert list(comparison["sets"]) == ["img:emb"]
    assert comparison["sets"]["img:emb"]["before_key"] == "img"
    _assert_error(_invoke("compare", renamed, stores["B.json"], "--key", "emb"), 2, "--key emb", "no such set", "img")


def test_fail_if_can_address_a_paired_set(stores, tmp_path):
    document = _load(stores["A.json"])
    document["key"] = "img"
    renamed = tmp_path / "renamed.json"
    renamed.write_text(json.dumps(document))
    result = _invoke("compare", renamed, stores["B.json"], "-q", "--fail-if",
                     "sets.img:emb.bands.noise.energy_share.delta > 0")
    assert result.exit_code == 1, (result.exit_code, result.stderr)


def _load_compare(tmp_path, *inputs, extra=()) -> dict:
    out = tmp_path / "compare.json"
    _assert_ok(_invoke("compare", *inputs, "--json", out, "-q", *extra))
    return _load(out)


def test_fail_if_on_the_noise_share(stores, tmp_path):
    check = "bands.noise.energy_share.delta > 0"
    rose = _invoke("compare", stores["A.json"], stores["B.json"], "-q", "--fail-if", check)
    assert rose.exit_code == 1, (rose.output, rose.exception)
    assert "FAILED" in rose.stderr and "[emb] bands.noise.energy_share.delta" in rose.stderr
    assert "Traceback" not in rose.output
    fell = _invoke("compare", stores["B.json"], stores["A.json"], "-q", "--fail-if", check)
    assert fell.exit_code == 0, (fell.output, fell.exception)
    assert fell.stderr == "" and fell.stdout == ""
    # one set by name, and several checks at once
    one = _invoke("compare", stores["B.json"], stores["A.json"], "-q", "--fail-if",
                  "sets.emb.bands.noise.energy_share.delta < 0", "--fail-if", "metrics.effective_rank.delta > 1e9")
    assert one.exit_code == 1 and one.stderr.count("FAILED") == 1


def test_fail_if_with_a_typo_is_refused_before_any_work(stores, tmp_path):
    out = tmp_path / "never.json"
    result = _invoke("compare", tmp_path / "missing.h5", stores["B.json"], "--json", out,
                     "--fail-if", "bands.nosie.energy_share.delta > 0")
    _assert_error(result, 2, "bands.nosie.energy_share.delta", "no value")  # not the missing input
    assert not out.exists()
    _assert_error(_invoke("compare", stores["A.json"], stores["B.json"], "--fail-if", "bands.noise >> 0"), 2, "--fail-if")


def test_fail_if_on_a_null_strong_subspace_fails_the_check(stores):
    result = _invoke("compare", stores["A.json"], stores["B.json"], "-q", "--fail-if", "strong_subspace.overlap < 0.9")
    assert result.exit_code == 1, (result.exit_code, result.stderr)


def test_json_to_stdout_is_valid_json(stores):
    result = _assert_ok(_invoke("compare", stores["A.json"], stores["B.json"], "--json", "-"))
    document = json.loads(result.stdout)
    assert document["schema"] == SCHEMA and list(document["sets"]) == ["emb"]
    assert "emb: A -> B" in result.stderr  # the tables moved to stderr


def test_json_into_a_missing_folder_is_refused(stores, tmp_path):
    result = _invoke("compare", stores["A.json"], stores["B.json"], "--json", tmp_path / "no" / "D.json")
    _assert_error(result, 2, "--json", "does not exist")


# --- end to end: fine-tuning runs -------------------------------------------------------------------


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two 5-step head runs on 400 cached pairs (text rows repeat every 20): one exports its embeddings."""
    root = tmp_path_factory.mktemp("runs")
    rng = np.random.default_rng(0)
    n_pairs, dim, n_texts = 400, 16, 20
    rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))  # signal along mixed directions, not along columns
    distinct = ((rng.normal(size=(n_texts, dim)) * np.array([6.0, 5.0, 4.0] + [1.0] * (dim - 3))) @ rotation
                ).astype(np.float32)
    text = distinct[np.arange(n_pairs) % n_texts]
    image = (text + 0.5 * rng.normal(size=(n_pairs, dim))).astype(np.float32)
    ids = [f"pair-{i:04d}" for i in range(n_pairs)]
    pairs = str(root / "pairs.h5")
    store.write_set(pairs, "image", image, ids=ids, mode="w")
    store.write_set(pairs, "text", text, ids=ids)
    common = ["finetune", "--target", "head", "--embeddings", pairs, "--steps", 5, "--batch-size", 64,
              "--eval-fraction", 0.5, "--device", "cpu", "-q"]  # ~200 held-out pairs: enough for the default null
    exported, plain = str(root / "RUN"), str(root / "PLAIN")
    _assert_ok(_invoke(*common, "--out", exported, "--export-embeddings", "--json", root / "run.json"))
    _assert_ok(_invoke(*common, "--out", plain))
    return {"root": root, "RUN": exported, "PLAIN": plain, "run.json": str(root / "run.json")}


def _check_evaluation(document, before_stage, after_stage):
    evaluation = document["evaluation"]
    assert list(evaluation["recall"]) == RECALL_ORDER
    for name in RECALL_ORDER:
        values = evaluation["recall"][name]
        assert values["before"] == before_stage["recall"][name] and values["after"] == after_stage["recall"][name]
        assert values["delta"] == values["after"] - values["before"]
    assert "zero_shot_accuracy" not in evaluation  # cached pairs have no classes


def test_compare_one_run_with_exported_embeddings(runs, tmp_path):
    document = _load_compare(tmp_path, runs["RUN"])
    evaluation = _load(os.path.join(runs["RUN"], "eval.json"))
    assert document["before"] == {"label": "RUN before", "source": f"{runs['RUN']} (before)"}
    assert document["after"] == {"label": "RUN after", "source": f"{runs['RUN']} (after)"}
    assert list(document["sets"]) == ["image", "text"]
    assert document["notes"] == []
    _check_evaluation(document, evaluation["before"], evaluation["after"])
    assert set(document["cross"]) == {"image~text"}
    for key, entry in document["sets"].items():
        assert set(entry["metrics"]) == set(SET_METRICS)  # analysed from the exported embeddings
        strong = entry["strong_subspace"]
        assert strong is not None
        assert strong["k_before"] == evaluation["before"]["bands"][key]["strong"]["count"]
        assert strong["k_before"] > 0 or key == "text"  # 20 distinct texts in 16 dims: ddpa finds no signal there
        assert strong["k_after"] == evaluation["after"]["bands"][key]["strong"]["count"]
        assert len(strong["principal_angles_deg"]) == min(strong["k_before"], strong["k_after"])
        assert all(0.0 <= angle <= 90.0 for angle in strong["principal_angles_deg"])
        if strong["principal_angles_deg"]:
            assert 0.0 <= strong["overlap"] <= 1.0 + 1e-12
        else:  # no strong subspace on one side: no angles, no overlap
            assert strong["overlap"] is None
        for stage in ("before", "after"):  # eval.json's bands are analyze's on the same embeddings
            for band in BANDS:
                assert entry["bands"][band]["count"][stage] == evaluation[stage]["bands"][key][band]["count"]
                assert_allclose(entry["bands"][band]["energy_share"][stage],
                                evaluation[stage]["bands"][key][band]["energy_share"], rtol=1e-5, atol=1e-9)
            assert_allclose(entry["metrics"]["effective_rank"][stage], evaluation[stage]["bands"][key]["effective_rank"],
                            rtol=1e-5)
    # the same run through its eval.json and through finetune --json
    assert _load_compare(tmp_path, os.path.join(runs["RUN"], "eval.json")) == document
    assert _load_compare(tmp_path, runs["run.json"]) == document


def test_compare_one_run_without_exported_embeddings(runs, tmp_path):
    document = _load_compare(tmp_path, runs["PLAIN"])
    evaluation = _load(os.path.join(runs["PLAIN"], "eval.json"))
    _check_evaluation(document, evaluation["before"], evaluation["after"])
    assert document["cross"] == {}
    for key, entry in document["sets"].items():
        assert entry["strong_subspace"] is None
        assert [m for m, v in entry["metrics"].items() if v["before"] is not None] == ["effective_rank"]
        for band in BANDS:
            values = entry["bands"][band]["energy_share"]
            assert values["before"] == evaluation["before"]["bands"][key][band]["energy_share"]
            assert values["after"] == evaluation["after"]["bands"][key][band]["energy_share"]
            assert values["delta"] == values["after"] - values["before"]
    assert len(document["notes"]) == 2
    assert all("no principal angles" in note and "--export-embeddings" in note for note in document["notes"])


def test_fail_if_on_the_evaluation_of_a_run(runs):
    for check, code in (("evaluation.recall.image_to_text_R@1.delta < -2", 0),
                        ("evaluation.recall.image_to_text_R@1.delta > -2", 1),
                        ("sets.text.bands.strong.energy_share.after < 2", 1)):
        result = _invoke("compare", runs["PLAIN"], "-q", "--fail-if", check)
        assert result.exit_code == code, (check, result.exit_code, result.output)
        assert ("FAILED" in result.stderr) == bool(code)


def test_compare_two_runs_after_training(runs, tmp_path):
    document = _load_compare(tmp_path, os.path.join(runs["RUN"], "eval.json"), os.path.join(runs["PLAIN"], "eval.json"))
    assert document["before"]["label"] == "RUN after" and document["after"]["label"] == "PLAIN after"
    first, second = _load(os.path.join(runs["RUN"], "eval.json")), _load(os.path.join(runs["PLAIN"], "eval.json"))
    _check_evaluation(document, first["after"], second["after"])
    for entry in document["sets"].values():
        assert entry["strong_subspace"] is None  # the second run has no vectors
    assert len(document["notes"]) == 2
    # a store as the "after" side of a run
    mixed = _load_compare(tmp_path, runs["RUN"], os.path.join(runs["RUN"], "embeddings_after.h5"))
    assert mixed["evaluation"] is None and list(mixed["sets"]) == ["image", "text"]
    for entry in mixed["sets"].values():
        assert_allclose(entry["strong_subspace"]["principal_angles_deg"], 0.0, rtol=0, atol=1e-3)


def test_render_a_run_comparison(runs):
    result = _assert_ok(_invoke("compare", runs["RUN"]))
    for fragment in ("image: RUN before -> RUN after", "text: RUN before -> RUN after", "strong subspaces",
                     "held-out evaluation of the runs", "image to text R@1", "image~text:"):
        assert fragment in result.stdout, (fragment, result.stdout)


# --- bad input --------------------------------------------------------------------------------------


def _main_error(capsys, argv, *fragments):
    with pytest.raises(SystemExit) as exited:
        main([str(a) for a in argv])
    assert exited.value.code == 2
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("sdetool: error: "), lines
    assert "Traceback" not in captured.err
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def test_no_input_is_a_usage_error(capsys):
    line = _main_error(capsys, ["compare"], "Missing argument")
    assert "sdetool compare --help" in line  # the usage hint names the command


def test_bad_inputs_are_one_line_errors(stores, tmp_path):
    a, b = stores["A.json"], stores["B.json"]
    _assert_error(_invoke("compare", a, b, a), 2, "two inputs", "got 3")
    _assert_error(_invoke("compare", a), 2, a, "one input must be a fine-tuning run")
    _assert_error(_invoke("compare", stores["A.h5"]), 2, "one input must be a fine-tuning run")

    other = tmp_path / "other.json"
    other.write_text(json.dumps({"schema": "something.else/1", "sets": {}}))
    _assert_error(_invoke("compare", other, b), 2, str(other), "'something.else/1'")
    broken = tmp_path / "broken.json"
    broken.write_text('{"schema": "sdetool.analysis/1", ')
    _assert_error(_invoke("compare", a, broken), 2, str(broken), "not a readable JSON file")
    listed = tmp_path / "list.json"
    listed.write_text("[1, 2]")
    _assert_error(_invoke("compare", listed, b), 2, "expected a JSON object")
    _assert_error(_invoke("compare", tmp_path / "missing.json", b), 2, "missing.json: no such file")
    _assert_error(_invoke("compare", a, tmp_path / "missing.h5"), 2, "missing.h5")
    folder = tmp_path / "folder"
    folder.mkdir()
    _assert_error(_invoke("compare", folder), 2, "without eval.json")
    _assert_error(_invoke("compare", a, b, "--key", "nope"), 2, "--key nope", "no such set", "emb")


def test_library_refuses_wrong_input_counts(stores):
    with pytest.raises(BadInputError, match="got 0"):
        compare([])
    with pytest.raises(BadInputError, match="got 3"):
        compare([stores["A.json"]] * 3)
