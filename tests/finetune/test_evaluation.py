"""Retrieval recalls and zero-shot accuracy (sdetool.finetune.evaluation) against naive loops and constructed data."""

import numpy as np
import pytest
from numpy.testing import assert_allclose

from sdetool.finetune import evaluation


def _unit(matrix):
    matrix = np.asarray(matrix, dtype=np.float64)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def _naive_recalls(image, text, text_rows, ks):
    """The module docstring's semantics as plain loops over queries (float64 cosines)."""
    image, text = _unit(image), _unit(text)
    n, m = len(image), len(text)
    result = {}
    for k in ks:
        hits = 0
        for i in range(n):
            scores = [float(image[i] @ text[j]) for j in range(m)]
            ranked = sorted(range(m), key=lambda j: -scores[j])
            hits += int(text_rows[i] in ranked[:k])
        result[f"image_to_text_R@{k}"] = hits / n
    for k in ks:
        hits = 0
        for j in range(m):
            scores = [float(text[j] @ image[i]) for i in range(n)]
            ranked = sorted(range(n), key=lambda i: -scores[i])
            hits += int(any(text_rows[i] == j for i in ranked[:k]))
        result[f"text_to_image_R@{k}"] = hits / m
    return result


def _paired(n, m, d, seed, noise=1.0):
    """``m`` distinct texts and ``n`` images, image i a noisy copy of its text ``text_rows[i]``."""
    rng = np.random.default_rng(seed)
    text = rng.standard_normal((m, d))
    text_rows = rng.integers(0, m, n) if n != m else rng.permutation(m)
    image = text[text_rows] + noise * rng.standard_normal((n, d))
    return image, text, text_rows


@pytest.mark.parametrize("chunk", [1024, 7])
def test_retrieval_recalls_unique_captions_are_standard_recall_at_k(chunk):
    image, text, text_rows = _paired(40, 40, 12, seed=0)
    got = evaluation.retrieval_recalls(image, text, text_rows, ks=(1, 5, 10), chunk=chunk)
    expected = _naive_recalls(image, text, text_rows, (1, 5, 10))
    assert got.keys() == expected.keys()
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-12), key
    # Not a degenerate check: the noise makes recall grow with k without saturating at k = 1.
    assert 0 < got["image_to_text_R@1"] < got["image_to_text_R@10"] <= 1
    assert 0 < got["text_to_image_R@1"] < got["text_to_image_R@10"] <= 1


@pytest.mark.parametrize("chunk", [1024, 5])
def test_retrieval_recalls_repeated_captions(chunk):
    rng = np.random.default_rng(1)
    m, n, d = 8, 60, 10
    text = rng.standard_normal((m, d))
    text_rows = rng.integers(0, m - 1, n)  # the last distinct text has no image: a text query that cannot hit
    image = text[text_rows] + 1.3 * rng.standard_normal((n, d))
    got = evaluation.retrieval_recalls(image, text, text_rows, ks=(1, 2, 5), chunk=chunk)
    expected = _naive_recalls(image, text, text_rows, (1, 2, 5))
    for key in expected:
        assert got[key] == pytest.approx(expected[key], abs=1e-12), key
    # Denominators: n image queries, m distinct text queries.
    assert got["text_to_image_R@5"] * m == pytest.approx(round(got["text_to_image_R@5"] * m), abs=1e-9)
    assert got["text_to_image_R@5"] <= (m - 1) / m
    assert got["image_to_text_R@1"] * n == pytest.approx(round(got["image_to_text_R@1"] * n), abs=1e-9)


def test_retrieval_recalls_by_hand():
    # Three distinct texts along the axes; four images, two of them with caption 0.
    text = np.eye(3)
    image = np.array([
        [1.0, 0.2, 0.0],   # caption 0, nearest text 0
        [0.1, 1.0, 0.0],   # caption 0, nearest text 1, then text 0
        [0.0, 0.3, 1.0],   # caption 2, nearest text 2
        [0.9, 0.0, 0.5],   # caption 1, ranks texts 0, 2, 1
    ])
    text_rows = np.array([0, 0, 2, 1])
    got = evaluation.retrieval_recalls(image, text, text_rows, ks=(1, 2, 3))
    assert got["image_to_text_R@1"] == pytest.approx(2 / 4)
    assert got["image_to_text_R@2"] == pytest.approx(3 / 4)
    assert got["image_to_text_R@3"] == pytest.approx(1.0)
    # Text 0 ranks images 0, 3, 1, 2: hit at 1. Text 1 ranks 1, 2, 0, 3: image 1 has caption 0, image 2
    # caption 2, image 0 caption 0, so its only image (3) comes last. Text 2 ranks 2, 3, ...: hit at 1.
    assert got["text_to_image_R@1"] == pytest.approx(2 / 3)
    assert got["text_to_image_R@2"] == pytest.approx(2 / 3)
    assert got["text_to_image_R@3"] == pytest.approx(2 / 3)
    assert got == _naive_recalls(image, text, text_rows, (1, 2, 3))


def test_retrieval_recalls_perfect_pairs_and_scale_invariance():
    image, text, text_rows = _paired(30, 30, 16, seed=2, noise=0.0)
    got = evaluation.retrieval_recalls(3.0 * image, 0.5 * text, text_rows)
    assert set(got) == {f"{side}_R@{k}" for side in ("image_to_text", "text_to_image") for k in (1, 5, 10)}
    assert all(value == 1.0 for value in got.values())
    # Ks below 1 are dropped; k beyond the number of candidates is a hit for every query that has one.
    few = evaluation.retrieval_recalls(image, text, text_rows, ks=(0, 1, 100))
    assert set(few) == {"image_to_text_R@1", "image_to_text_R@100", "text_to_image_R@1", "text_to_image_R@100"}
    assert few["image_to_text_R@100"] == 1.0 and few["text_to_image_R@100"] == 1.0


def test_unit_rows_keeps_zero_rows():
    rows = evaluation.unit_rows(np.array([[3.0, 4.0], [0.0, 0.0]]))
    assert rows.dtype == np.float32
    assert_allclose(rows, [[0.6, 0.8], [0.0, 0.0]], atol=1e-7)


def test_zero_shot_accuracy_on_constructed_data():
    rng = np.random.default_rng(3)
    k, d = 4, 6
    prototypes = np.eye(d)[:k] * np.array([[1.0], [5.0], [0.2], [30.0]])  # norms must not matter
    truth = np.repeat(np.arange(k), 5)  # 20 images
    # Each image is its class axis at a random scale plus a small perturbation: nearest prototype = truth.
    image = np.eye(d)[truth] * rng.uniform(0.5, 10.0, (truth.size, 1)) + 0.05 * rng.uniform(-1, 1, (truth.size, d))
    assert evaluation.zero_shot_accuracy(image, prototypes, truth) == 1.0
    labels = truth.copy()
    wrong = [0, 6, 13, 19, 7]
    labels[wrong] = (labels[wrong] + 1) % k
    assert evaluation.zero_shot_accuracy(image, prototypes, labels) == pytest.approx(15 / 20)
    # Against an explicit loop on cosines.
    other = rng.standard_normal((25, d))
    other_labels = rng.integers(0, k, 25)
    cosines = _unit(other) @ _unit(prototypes).T
    expected = np.mean([np.argmax(cosines[i]) == other_labels[i] for i in range(25)])
    assert evaluation.zero_shot_accuracy(other, prototypes, other_labels) == pytest.approx(expected)
