"""Quantized embeddings (sentence-transformers' ``quantize_embeddings``, the real library): int8 and uint8 are
analyzed as their integer values, widened exactly, with a note; packed binary is refused with the reason."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest
from cli_helpers import assert_error, assert_ok, invoke

from sdetool.analysis.analyze import analyze

quantization = pytest.importorskip("sentence_transformers.util.quantization")


@pytest.fixture(scope="module")
def floats():
    rng = np.random.default_rng(0)
    # three strong directions shared by every dimension (per-dimension scaling, as quantization does, keeps them)
    signal = rng.standard_normal((600, 3)) @ rng.standard_normal((3, 48)) * 2.0
    return (signal + rng.standard_normal((600, 48))).astype(np.float32)


@pytest.mark.parametrize("precision", ["int8", "uint8"])
def test_quantized_stores_are_their_integer_values(floats, precision, tmp_path):
    quantized = quantization.quantize_embeddings(floats, precision=precision)
    assert quantized.dtype == np.dtype(precision)
    path = tmp_path / f"{precision}.npy"
    np.save(path, quantized)
    result = assert_ok(invoke(["analyze", path, "--json", "-", "-q"]))
    document = json.loads(result.stdout)
    widened = quantized.astype(np.float64)
    reference = np.linalg.svd(widened - widened.mean(axis=0), compute_uv=False)
    values = np.array(document["singular_values"])
    np.testing.assert_allclose(values, reference[:values.size], rtol=1e-10, atol=1e-10 * reference[0])
    assert document["dtype"] == precision
    assert any(note.startswith(f"quantized embeddings ({precision})") for note in document["notes"])
    assert document["bands"]["strong"]["count"] >= 3
    # the same through a store and through the API
    store_path = tmp_path / f"{precision}.h5"
    with h5py.File(store_path, "w") as handle:
        handle.attrs["format"], handle.attrs["format_version"] = "sdetool-embeddings", 1
        handle.create_dataset("image/embeddings", data=quantized)
    from_store = json.loads(assert_ok(invoke(["analyze", store_path, "--json", "-", "-q"])).stdout)
    assert from_store["singular_values"] == document["singular_values"]
    assert analyze(quantized).to_dict()["singular_values"] == document["singular_values"]


def test_float_stores_get_no_quantization_note(floats, tmp_path):
    np.save(tmp_path / "f.npy", floats)
    document = json.loads(assert_ok(invoke(["analyze", tmp_path / "f.npy", "--json", "-", "-q"])).stdout)
    assert not any("quantized" in note for note in document["notes"])


@pytest.mark.parametrize("precision", ["binary", "ubinary"])
def test_packed_binary_is_refused_with_the_reason(floats, precision, tmp_path):
    packed = quantization.quantize_embeddings(floats, precision=precision)
    assert packed.shape == (600, 6)  # 8 dimensions per byte
    path = tmp_path / "packed.h5"
    with h5py.File(path, "w") as handle:
        handle.create_dataset("image/embeddings", data=packed)
        handle["image"].attrs["precision"] = precision
    assert_error(invoke(["analyze", path]), 2, "packed binary", "8 dimensions per byte", "unpackbits")


def test_other_integers_are_still_refused(tmp_path):
    np.save(tmp_path / "ids.npy", np.arange(200, dtype=np.int64).reshape(50, 4))
    assert_error(invoke(["analyze", tmp_path / "ids.npy"]), 2, "dtype int64", "int8, uint8")
