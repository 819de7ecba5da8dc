"""Wide matrices (n <= d) in the row space: the spectrum, vectors, jackknife and memory of
:class:`sdetool.spectral.gram.GramAccumulator` with ``row_space``, against float64 numpy SVDs.

The ground truth is ``numpy.linalg.svd`` of the centred float64 matrix: singular values to 1e-8 relative
wherever they are above 1e-6 s_1 (spikes planted down to 1e-7 s_1 included), right vectors of the
separated leading components to 1e-8. The memory test runs ``sdetool analyze`` in a process whose address
space is smaller than the d x d Gram: it must not allocate it.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys

import numpy as np
import pytest

from sdetool.analysis.analyze import analyze
from sdetool.analysis.options import AnalysisOptions
from sdetool.spectral import spectrum
from sdetool.spectral.gram import GramAccumulator, largest_rows_fitting, memory_needed
from sdetool.spectral.summary import partition_state, singular_values, top_vectors


def _spiked(n: int, d: int, seed: int = 0, dtype=np.float64) -> np.ndarray:
    """Noise of scale 1e-6 plus spikes from 1e3 down to 1e-1: values spanning 10 decades."""
    rng = np.random.default_rng(seed)
    k = min(12, n - 1)
    left = np.linalg.qr(rng.standard_normal((n, k)))[0]
    right = np.linalg.qr(rng.standard_normal((d, k)))[0]
    strengths = np.geomspace(1e3, 1e-1, k)
    return ((left * strengths) @ right.T + 1e-6 * rng.standard_normal((n, d))).astype(dtype)


def _reference(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return np.linalg.svd(x - x.mean(axis=0), compute_uv=False)


def _state(x: np.ndarray, chunk: int = 37, **kwargs):
    accumulator = GramAccumulator(dim=x.shape[1], row_space=True, capacity=x.shape[0], **kwargs)
    for start in range(0, x.shape[0], chunk):
        accumulator.update(x[start:start + chunk])
    return accumulator.finalize()


def test_the_row_space_keeps_no_d_by_d_matrix():
    state = _state(_spiked(30, 400))
    assert state.row_space and state.scatter is None and state.rows.shape == (30, 400)
    with pytest.raises(ValueError, match="row-space state has no d x d Gram"):
        state.gram()


@pytest.mark.parametrize("n,d", [(40, 300), (120, 121), (7, 2000)])
def test_singular_values_match_numpy_above_one_millionth_of_s1(n, d):
    x = _spiked(n, d, seed=n)
    state = _state(x)
    values, floor, _ = singular_values(state, center=True, rank=n - 1)
    reference = _reference(x)[:n - 1]
    above = reference > 1e-6 * reference[0]
    np.testing.assert_allclose(values[above], reference[above], rtol=1e-8)
    assert floor < 1e-6 * reference[0]


def test_leading_vectors_match_numpy():
    x = _spiked(60, 500, seed=3)
    state = _state(x)
    centred = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    got = top_vectors(state, center=True, k=6)
    for i in range(6):  # the leading six spikes are a decade apart: each vector is determined
        assert abs(abs(float(got[:, i] @ vt[i])) - 1.0) < 1e-8, i
        assert got[np.argmax(np.abs(got[:, i])), i] > 0  # signs fixed as on the Gram path


def test_basis_slices_are_computed_once_and_agree():
    x = _spiked(50, 300, seed=4)
    values, basis = spectrum.singular_decomposition(rows=x - x.mean(axis=0))
    assert isinstance(basis, spectrum.RowSpaceBasis) and basis.shape == (300, 50)
    first = basis[:, :3].copy()
    np.testing.assert_array_equal(basis[:, :8][:, :3], first)
    with pytest.raises(IndexError):
        basis[0, :3]


def test_the_partition_is_the_gram_paths():
    x = _spiked(80, 200, seed=5) + np.random.default_rng(1).standard_normal((80, 200))
    options = AnalysisOptions()
    wide = partition_state(_state(x), options).partition
    gram = GramAccumulator(dim=200)
    gram.update(x)
    dense = partition_state(gram.finalize(), options).partition
    np.testing.assert_allclose(wide.singular_values, dense.singular_values, rtol=1e-9, atol=1e-9)
    np.testing.assert_array_equal(wide.labels, dense.labels)
    np.testing.assert_allclose(wide.shares, dense.shares, rtol=1e-9)


def test_identical_rows_have_a_zero_centred_matrix():
    x = np.tile(np.random.default_rng(2).standard_normal(64), (5, 1))
    state = _state(x, chunk=2)
    assert not np.any(state.rows - state.mean)


def test_jackknife_replicates_leave_out_their_block():
    x = _spiked(90, 300, seed=6)
    state = _state(x, blocks=6)
    assert sum(block.n for block in state.blocks) == 90
    for block in state.blocks:
        rest = state.without(block)
        start, stop = block.row_range
        assert rest.n == 90 - (stop - start) and rest.row_space
        np.testing.assert_allclose(np.sort(_reference(rest.rows))[::-1][:5],
                                   singular_values(rest, True, rest.n - 1)[0][:5], rtol=1e-9)


def test_analyze_with_bootstrap_in_the_row_space():
    x = _spiked(60, 240, seed=7) + np.random.default_rng(3).standard_normal((60, 240))
    report = analyze(x.astype(np.float32), options=AnalysisOptions(bootstrap=5)).to_dict()
    assert report["bands"]["strong"]["energy_share_ci"] is not None


def test_memory_plan():
    assert memory_needed(2000, 30000, row_space=False) >= 2 * 30000 ** 2 * 8  # the Gram and eigh's copy
    wide = memory_needed(2000, 30000, row_space=True, vectors=True)
    assert 4 * 2000 * 30000 * 8 <= wide < 30000 ** 2 * 8
    room = 500_000_000
    fitting = largest_rows_fitting(30000, room, vectors=True)
    assert memory_needed(fitting, 30000, row_space=True, vectors=True) <= room
    assert memory_needed(fitting + 1, 30000, row_space=True, vectors=True) > room
    assert largest_rows_fitting(30000, 1000) == 0


def _run_limited(args, limit: int | None = None, env=None):
    def limit_memory() -> None:
        if limit:
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))

    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    result = subprocess.run([sys.executable, "-m", "sdetool", *map(str, args)], capture_output=True, text=True,
                            preexec_fn=limit_memory, env={**os.environ, "OMP_NUM_THREADS": "1", **(env or {})},
                            timeout=300)
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return result, (peak if peak > before * 1024 else None)


def test_a_wide_matrix_never_allocates_the_d_by_d_gram(tmp_path):
    n, d = 300, 30000  # the d x d float64 Gram: 7.2 GB; the rows: 72 MB
    x = _spiked(n, d, seed=8, dtype=np.float32) + np.random.default_rng(4).standard_normal((n, d), dtype=np.float32)
    path = tmp_path / "wide.npy"
    np.save(path, x)
    gram_bytes = d * d * 8
    limit = 3 * 10 ** 9  # below the Gram alone (address space, the interpreter and libraries included)
    result, peak = _run_limited(["analyze", path, "--json", tmp_path / "r.json", "-q"], limit=limit)
    assert result.returncode == 0, result.stderr[-2000:]
    if peak is not None:
        assert peak < gram_bytes / 4, peak
    document = json.loads((tmp_path / "r.json").read_text())
    reference = _reference(x)[:n - 1]
    above = reference > 1e-6 * reference[0]
    np.testing.assert_allclose(np.array(document["singular_values"])[above], reference[above], rtol=1e-8)


def test_too_little_memory_is_refused_before_reading_with_the_numbers(tmp_path):
    path = tmp_path / "wide.npy"
    np.save(path, np.zeros((400, 5000), dtype=np.float32) + np.arange(5000, dtype=np.float32))
    result, _ = _run_limited(["analyze", path, "-q"], env={"SDETOOL_MEMORY_LIMIT": str(30_000_000)})
    assert result.returncode == 2, result.stderr
    line = result.stderr.strip()
    assert "\n" not in line and "Traceback" not in line
    assert "400 x 5,000" in line and "needs about" in line and "30.0 MB is available" in line
    assert "--sample" in line  # what would make it fit
    tall = tmp_path / "tall.npy"
    np.save(tall, np.ones((3000, 2000), dtype=np.float32))
    result, _ = _run_limited(["analyze", tall, "-q"], env={"SDETOOL_MEMORY_LIMIT": str(40_000_000)})
    assert result.returncode == 2 and "2,000 x 2,000 float64 Gram" in result.stderr, result.stderr
