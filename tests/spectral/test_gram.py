"""Streaming Gram statistics against float64 references computed in memory."""

import numpy as np
import pytest
from numpy.testing import assert_allclose

from sdetool.spectral.gram import GramAccumulator, GramState, row_keys


def _accumulate(matrix, block, **kwargs):
    accumulator = GramAccumulator(dim=matrix.shape[1], **kwargs)
    for start in range(0, matrix.shape[0], block):
        accumulator.update(matrix[start : start + block])
    return accumulator.finalize()


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("block", [1, 7, 64, 10_000])
def test_scatter_and_mean_equal_float64_reference(dtype, block):
    rng = np.random.default_rng(0)
    matrix = (rng.standard_normal((300, 12)) * 3 + 5).astype(dtype)
    reference = matrix.astype(np.float64)
    centred = reference - reference.mean(axis=0)
    state = _accumulate(matrix, block)
    assert state.n == 300
    assert_allclose(state.mean, reference.mean(axis=0), rtol=1e-12, atol=1e-12)
    assert_allclose(state.scatter, centred.T @ centred, rtol=1e-10, atol=1e-9)
    assert_allclose(state.gram(centered=False), reference.T @ reference, rtol=1e-12)
    assert_allclose(state.scatter, state.scatter.T, atol=0)


def test_shift_avoids_cancellation_in_a_narrow_cone():
    # Rows sit at distance 1e6 from the origin with spread 1e-2: a naive X^T X - n mu mu^T loses
    # every significant digit of the centred scatter in float64 (1e12 vs 1e-4 per entry).
    rng = np.random.default_rng(1)
    axis = rng.standard_normal(16)
    matrix = 1e6 * axis / np.linalg.norm(axis) + 1e-2 * rng.standard_normal((2000, 16))
    centred = matrix - matrix.mean(axis=0)
    reference = np.linalg.svd(centred, compute_uv=False) ** 2
    state = _accumulate(matrix, 128)
    eigenvalues = np.sort(np.linalg.eigvalsh(state.scatter))[::-1]
    assert_allclose(eigenvalues, reference, rtol=1e-6)
    naive = matrix.T @ matrix - 2000 * np.outer(matrix.mean(axis=0), matrix.mean(axis=0))
    naive_error = np.max(np.abs(np.sort(np.linalg.eigvalsh(naive))[::-1] - reference) / reference)
    assert naive_error > 1.0  # the failure the shift prevents is real


def test_merge_of_disjoint_parts_equals_whole():
    rng = np.random.default_rng(2)
    matrix = rng.standard_normal((500, 9)) + 3.0
    whole = _accumulate(matrix, 50)
    parts = [_accumulate(matrix[a:b], 17) for a, b in [(0, 120), (120, 121), (121, 500)]]
    merged = parts[0].merge(parts[1]).merge(parts[2])
    assert merged.n == whole.n
    assert_allclose(merged.mean, whole.mean, rtol=1e-13)
    assert_allclose(merged.scatter, whole.scatter, rtol=1e-11, atol=1e-10)
    assert_allclose(merged.unit_sum, whole.unit_sum, rtol=1e-12)


def test_merge_with_empty_state_is_identity():
    state = _accumulate(np.arange(12.0).reshape(4, 3), 2)
    empty = GramAccumulator(dim=3).finalize()
    merged = empty.merge(state)
    assert merged.n == 4
    assert_allclose(merged.mean, state.mean)
    assert_allclose(merged.scatter, state.scatter)


def test_unit_sum_and_zero_rows():
    matrix = np.array([[3.0, 4.0], [0.0, 0.0], [0.0, 2.0]])
    state = _accumulate(matrix, 2)
    assert state.zero_rows == 1
    assert_allclose(state.unit_sum, [0.6, 1.8])


def test_l2_normalises_rows_before_the_gram():
    rng = np.random.default_rng(3)
    matrix = rng.standard_normal((100, 5)) * rng.uniform(0.1, 10, (100, 1))
    unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
    state = _accumulate(matrix, 30, l2=True)
    assert_allclose(state.gram(centered=False), unit.T @ unit, rtol=1e-12)


def test_nonfinite_rows_are_counted_and_dropped():
    matrix = np.ones((10, 3))
    matrix[2, 1] = np.nan
    matrix[7, 0] = np.inf
    state = _accumulate(matrix, 4, drop_nonfinite=True)
    assert (state.n, state.nonfinite_rows, state.first_nonfinite) == (8, 2, 2)
    assert_allclose(state.mean, [1, 1, 1])


def test_nonfinite_rows_stop_accumulation_but_keep_counting():
    matrix = np.ones((10, 3))
    matrix[[3, 4, 9], 0] = np.nan
    accumulator = GramAccumulator(dim=3)
    for start in range(0, 10, 4):
        accumulator.update(matrix[start : start + 4])
    state = accumulator.finalize()
    assert accumulator.failed
    assert (state.nonfinite_rows, state.first_nonfinite) == (3, 3)
    assert state.n < 10


def test_kept_rows_are_the_rows():
    matrix = np.random.default_rng(4).standard_normal((20, 4)).astype(np.float32)
    state = _accumulate(matrix, 6, keep_rows=True)
    assert_allclose(state.rows, matrix.astype(np.float64))


def test_row_sample_is_independent_of_chunking_and_merges_like_one_pass():
    matrix = np.random.default_rng(5).standard_normal((1000, 4))
    one = _accumulate(matrix, 1000, sample_rows=50, seed=9)
    many = _accumulate(matrix, 33, sample_rows=50, seed=9)
    order = np.argsort(one.entry_keys)
    assert_allclose(np.sort(many.entry_keys), one.entry_keys[order])
    assert_allclose(many.entry_sample[np.argsort(many.entry_keys)], one.entry_sample[order])
    halves = GramAccumulator(dim=4, sample_rows=50, seed=9)
    halves.update(matrix[:400])
    second = GramAccumulator(dim=4, sample_rows=50, seed=9)
    second.update(matrix[400:], positions=np.arange(400, 1000))
    merged = halves.finalize().merge(second.finalize())
    assert_allclose(np.sort(merged.entry_keys), np.sort(one.entry_keys))


def test_row_keys_are_uniform_and_seeded():
    keys = row_keys(np.arange(200_000), seed=1)
    assert keys.min() >= 0 and keys.max() < 1
    counts, _ = np.histogram(keys, bins=10, range=(0, 1))
    assert np.all(np.abs(counts - 20_000) < 5 * np.sqrt(20_000))
    assert not np.array_equal(keys[:100], row_keys(np.arange(100), seed=2))
    assert_allclose(keys[:100], row_keys(np.arange(100), seed=1))


def test_wrong_chunk_shape_is_refused():
    accumulator = GramAccumulator(dim=3)
    with pytest.raises(ValueError, match=r"\(rows, 3\)"):
        accumulator.update(np.ones((2, 4)))
    with pytest.raises(ValueError):
        GramAccumulator(dim=0)


def test_gram_state_merge_refuses_other_dimension():
    a = GramState(1, np.zeros(2), np.zeros((2, 2)), np.zeros(2))
    b = GramState(1, np.zeros(3), np.zeros((3, 3)), np.zeros(3))
    with pytest.raises(ValueError, match="dimension"):
        a.merge(b)


def test_merge_of_empty_states_keeps_both_samples():
    def state(value, key):
        return GramState(0, np.zeros(2), np.zeros((2, 2)), np.zeros(2), entry_sample=np.full((1, 2), value),
                         entry_keys=np.array([key]), sample_rows=capacity)

    capacity = 1
    merged = state(1.0, 0.2).merge(state(0.0, 0.1))
    assert merged.entry_keys.tolist() == [0.1] and merged.entry_sample.tolist() == [[0.0, 0.0]]
    capacity = 5  # room for both: a merged sample is not cut to the size of its parts
    merged = state(1.0, 0.2).merge(state(0.0, 0.1))
    assert merged.entry_keys.tolist() == [0.1, 0.2]
