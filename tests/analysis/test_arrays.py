"""Arrays and tensors in the API (a notebook): the same report as the CLI gives for the same matrix saved as
.npy; named sets with the cross-modal section; compare and plot on arrays; bad arrays as one sentence."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import sdetool
from sdetool.errors import BadInputError


@pytest.fixture(scope="module")
def matrix():
    rng = np.random.default_rng(11)
    signal = rng.standard_normal((3000, 4)) @ rng.standard_normal((4, 48)) * 3
    return (signal + rng.standard_normal((3000, 48))).astype(np.float32)


def _cli_report(path) -> dict:
    completed = subprocess.run([sys.executable, "-m", "sdetool", "analyze", str(path), "--json", "-", "-q"],
                               capture_output=True, text=True, check=True)
    return json.loads(completed.stdout)


def _without_source(document: dict) -> dict:
    return {key: value for key, value in document.items() if key not in ("source", "shards")}


def test_an_array_gives_the_cli_report_of_its_npy(matrix, tmp_path):
    np.save(tmp_path / "x.npy", matrix)
    cli = _cli_report(tmp_path / "x.npy")
    report = sdetool.analyze(matrix).to_dict()
    assert _without_source(report) == _without_source(cli)
    assert report["source"] == "array"


def test_a_tensor_gives_the_same_report(matrix):
    assert (_without_source(sdetool.analyze(torch.from_numpy(matrix)).to_dict())
            == _without_source(sdetool.analyze(matrix).to_dict()))
    gradient = torch.from_numpy(matrix).requires_grad_(True)
    assert sdetool.analyze(gradient).to_dict()["n"] == matrix.shape[0]  # detached, not refused


def test_a_mapping_gives_named_sets_with_the_cross_modal_section(matrix):
    document = sdetool.analyze({"image": matrix, "text": matrix[:, ::-1].copy()}).to_dict()
    assert sorted(document["sets"]) == ["image", "text"] and "cross" in document


def test_compare_takes_two_arrays(matrix):
    rng = np.random.default_rng(1)
    noisy = matrix + 3 * rng.standard_normal(matrix.shape).astype(np.float32)
    document = sdetool.compare(matrix, noisy).to_dict()
    noise = document["sets"]["embeddings"]["bands"]["noise"]["energy_share"]
    assert noise["after"] > noise["before"]
    assert document["before"]["label"] == "before" and document["after"]["label"] == "after"
    assert sdetool.compare([matrix, noisy]).to_dict()["sets"] == document["sets"]


def test_plot_returns_a_figure_without_out(matrix, tmp_path):
    from matplotlib.figure import Figure

    assert isinstance(sdetool.plot("spectrum", matrix), Figure)
    assert isinstance(sdetool.plot("bands", [matrix, 2 * matrix]), Figure)
    written = sdetool.plot("energy", [matrix], str(tmp_path / "e.png"))
    assert written["out"] == str(tmp_path / "e.png") and (tmp_path / "e.png").stat().st_size > 0


@pytest.mark.parametrize("bad,fragment", [
    (np.ones((4, 5, 6), np.float32), "inputs: is 3-D"),
    (np.array([[1.0, np.nan], [0.0, 1.0]], np.float32), "inputs: row 0 holds a non-finite value"),
    (np.ones((4, 3), np.int64), "inputs: has dtype int64"),
    ({"image": np.ones((4, 3), np.float32), "text": np.ones((5, 3), np.float32)}, "different row counts"),
    ({"image": np.ones((4, 3), np.float32), "text": np.ones((4, 3), np.float64)}, "mix dtypes"),
])
def test_bad_arrays_are_one_sentence_naming_the_argument(bad, fragment):
    with pytest.raises(BadInputError) as caught:
        sdetool.analyze(bad)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_the_package_root_has_the_notebook_names():
    from sdetool import api

    for name in sdetool.NOTEBOOK:
        assert getattr(sdetool, name) is getattr(api, name)
    assert "analyze" in dir(sdetool)
