"""The sdetool HDF5 store: layout, atomic writer, reader, and damaged / foreign files."""

from __future__ import annotations

import os
import pickle

import h5py
import numpy as np
import pytest

from sdetool import __version__
from sdetool.errors import BadInputError, BadStoreError, UnknownKeyError
from sdetool.io import store

N, D = 200, 16


def _matrix(seed: int = 0, n: int = N, d: int = D) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


def _read_all(matrix: store.H5Matrix) -> np.ndarray:
    with matrix.reader() as read:
        return read(0, matrix.shape[0])


@pytest.fixture
def two_set_store(tmp_path):
    path = str(tmp_path / "emb.h5")
    image, text = _matrix(0), _matrix(1)
    store.write_set(path, "image", image, ids=[f"img-{i}" for i in range(N)],
                    attrs={"modality": "image", "model": "clip-test", "normalized": True})
    store.write_set(path, "text", text, ids=[f"txt-{i}" for i in range(N)], attrs={"modality": "text"})
    return path, image, text


# --- round trip ----------------------------------------------------------------------------------


def test_root_attributes_declare_the_format(two_set_store):
    path, _, _ = two_set_store
    with h5py.File(path, "r") as handle:
        assert handle.attrs["format"] == store.FORMAT == "sdetool-embeddings"
        assert int(handle.attrs["format_version"]) == store.FORMAT_VERSION == 1
        assert handle.attrs["created_by"] == f"sdetool {__version__}"
        assert store.is_store(handle)
        assert store.store_keys(handle) == ["image", "text"]


def test_group_attributes_given_and_defaulted(two_set_store):
    path, _, _ = two_set_store
    matrices = store.open_matrices(path)
    image, text = matrices["image"].attrs, matrices["text"].attrs
    assert image == {"modality": "image", "model": "clip-test", "normalized": True, "dtype_computed": "float32"}
    assert type(image["normalized"]) is bool
    # Defaults fill what the caller did not give.
    assert text == {"modality": "text", "model": "unknown", "normalized": False, "dtype_computed": "float32"}
    with h5py.File(path, "r") as handle:
        assert set(handle["image"].attrs) == {"modality", "model", "normalized", "dtype_computed"}


def test_float32_round_trip_is_exact(two_set_store):
    path, image, text = two_set_store
    matrices = store.open_matrices(path)
    assert list(matrices) == ["image", "text"]
    assert matrices["image"].shape == (N, D)
    assert matrices["image"].dtype == np.float32
    assert matrices["image"].dataset == "/image/embeddings"
    assert matrices["image"].label == f"{path}:/image/embeddings"
    np.testing.assert_array_equal(_read_all(matrices["image"]), image)
    np.testing.assert_array_equal(_read_all(matrices["text"]), text)


def test_float16_round_trip_keeps_float16(tmp_path):
    path = str(tmp_path / "half.h5")
    data = _matrix(3)
    store.write_set(path, "image", data, dtype="float16", mode="w")
    matrix = store.open_matrices(path)["image"]
    assert matrix.dtype == np.float16
    rows = _read_all(matrix)
    assert rows.dtype == np.float16
    np.testing.assert_array_equal(rows, data.astype(np.float16))


def test_reader_returns_row_windows(two_set_store):
    path, image, _ = two_set_store
    matrix = store.open_matrices(path)["image"]
    with matrix.reader() as read:
        np.testing.assert_array_equal(read(10, 25), image[10:25])
        np.testing.assert_array_equal(read(190, 200), image[190:])


def test_ids_are_utf8_strings(tmp_path):
    path = str(tmp_path / "ids.h5")
    ids = ["café", "日本語", "plain", "emoji-🙂"]
    store.write_set(path, "text", _matrix(0, n=4), ids=ids, mode="w")
    assert store.read_ids(path, "text") == ids
    with h5py.File(path, "r") as handle:
        info = h5py.check_string_dtype(handle["text/ids"].dtype)
        assert info is not None and info.encoding == "utf-8"
        assert handle["text/ids"].shape == (4,)


def test_set_without_ids_has_no_ids_dataset(tmp_path):
    path = str(tmp_path / "noids.h5")
    store.write_set(path, "image", _matrix(0, n=5), mode="w")
    assert store.read_ids(path, "image") is None
    with h5py.File(path, "r") as handle:
        assert "ids" not in handle["image"]


def test_h5matrix_pickles(two_set_store):
    path, image, _ = two_set_store
    matrix = store.open_matrices(path)["image"]
    clone = pickle.loads(pickle.dumps(matrix))
    assert clone == matrix
    np.testing.assert_array_equal(_read_all(clone), image)


def test_streaming_writer_appends_blocks(tmp_path):
    path = str(tmp_path / "stream.h5")
    data = _matrix(4)
    with store.StoreWriter(path, mode="w") as writer:
        target = writer.create_set("image", D, attrs={"modality": "image"})
        for start in range(0, N, 64):
            target.append(data[start:start + 64], [str(i) for i in range(start, min(start + 64, N))])
        assert target.rows == N
    np.testing.assert_array_equal(_read_all(store.open_matrices(path)["image"]), data)
    assert store.read_ids(path, "image") == [str(i) for i in range(N)]


def test_writer_rejects_bad_arguments(tmp_path):
    path = str(tmp_path / "bad.h5")
    with pytest.raises(ValueError, match="mode"):
        store.StoreWriter(path, mode="r")
    with pytest.raises(ValueError, match="2-D"):
        store.write_set(path, "image", np.zeros(5, np.float32))
    with store.StoreWriter(path, mode="w") as writer:
        with pytest.raises(ValueError, match="dtype"):
            writer.create_set("image", 4, dtype="float64")
        with pytest.raises(ValueError, match="key"):
            writer.create_set("a/b", 4)
        target = writer.create_set("image", 4)
        with pytest.raises(ValueError, match="ids"):
            target.append(np.zeros((2, 4), np.float32))
        with pytest.raises(ValueError, match=r"\(k, 4\)"):
            target.append(np.zeros((2, 3), np.float32), ["a", "b"])


def test_writer_into_missing_folder_is_bad_store(tmp_path):
    with pytest.raises(BadStoreError, match="does not exist"):
        with store.StoreWriter(str(tmp_path / "nope" / "x.h5")):
            pass
    assert not (tmp_path / "nope").exists()


# --- append mode ---------------------------------------------------------------------------------


def test_append_mode_adds_a_set_and_keeps_the_others(tmp_path):
    path = str(tmp_path / "emb.h5")
    image, text = _matrix(0), _matrix(1, d=8)
    store.write_set(path, "image", image, ids=[str(i) for i in range(N)], attrs={"modality": "image"}, mode="w")
    store.write_set(path, "text", text, attrs={"modality": "text"}, mode="a")
    matrices = store.open_matrices(path)
    assert list(matrices) == ["image", "text"]
    np.testing.assert_array_equal(_read_all(matrices["image"]), image)
    np.testing.assert_array_equal(_read_all(matrices["text"]), text)
    assert matrices["image"].attrs["modality"] == "image"
    assert store.read_ids(path, "image") == [str(i) for i in range(N)]
    with h5py.File(path, "r") as handle:
        assert handle.attrs["format"] == store.FORMAT


def test_append_mode_replaces_a_set_of_the_same_key(tmp_path):
    path = str(tmp_path / "emb.h5")
    store.write_set(path, "image", _matrix(0), mode="w")
    store.write_set(path, "text", _matrix(1), mode="a")
    replacement = _matrix(2, n=30, d=4)
    store.write_set(path, "image", replacement, mode="a")
    matrices = store.open_matrices(path)
    assert set(matrices) == {"image", "text"}
    assert matrices["image"].shape == (30, 4)
    np.testing.assert_array_equal(_read_all(matrices["image"]), replacement)


def test_write_mode_replaces_the_whole_file(tmp_path):
    path = str(tmp_path / "emb.h5")
    store.write_set(path, "image", _matrix(0), mode="w")
    store.write_set(path, "text", _matrix(1), mode="w")
    assert list(store.open_matrices(path)) == ["text"]


# --- atomicity -----------------------------------------------------------------------------------


class _Boom(RuntimeError):
    pass


def test_failed_write_leaves_no_file_and_no_temp(tmp_path):
    path = tmp_path / "new.h5"
    with pytest.raises(_Boom):
        with store.StoreWriter(str(path), mode="w") as writer:
            writer.create_set("image", D).append(_matrix(0), [str(i) for i in range(N)])
            raise _Boom("stop half-way")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mode", ["a", "w"])
def test_failed_write_leaves_existing_store_byte_identical(tmp_path, mode):
    path = tmp_path / "emb.h5"
    store.write_set(str(path), "image", _matrix(0), ids=[str(i) for i in range(N)], mode="w")
    before = path.read_bytes()
    with pytest.raises(_Boom):
        with store.StoreWriter(str(path), mode=mode) as writer:
            writer.create_set("text", D).append(_matrix(1), [str(i) for i in range(N)])
            writer.create_set("image", 4)  # would replace the existing set
            raise _Boom("stop half-way")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.h5"]
    assert list(store.open_matrices(str(path))) == ["image"]


def test_write_set_failing_on_bad_ids_leaves_existing_store(tmp_path):
    path = tmp_path / "emb.h5"
    store.write_set(str(path), "image", _matrix(0), mode="w")
    before = path.read_bytes()
    with pytest.raises(ValueError, match="ids"):
        store.write_set(str(path), "text", _matrix(1), ids=["only-one"], mode="a")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.h5"]


def test_append_onto_damaged_file_leaves_no_temp(tmp_path):
    path = tmp_path / "emb.h5"
    path.write_bytes(b"not an hdf5 file at all " * 8)
    before = path.read_bytes()
    with pytest.raises(BadStoreError):
        store.write_set(str(path), "image", _matrix(0), mode="a")
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["emb.h5"]


def test_new_store_honours_umask(tmp_path, umask_022):
    path = tmp_path / "emb.h5"
    store.write_set(str(path), "image", _matrix(0), mode="w")
    assert os.stat(path).st_mode & 0o777 == 0o644


# --- reading foreign, damaged and wrong files ----------------------------------------------------


@pytest.fixture
def foreign_file(tmp_path):
    """An HDF5 file written by someone else (raw h5py, no sdetool layout)."""
    path = str(tmp_path / "other.h5")
    data = _matrix(5, n=50, d=6)
    with h5py.File(path, "w") as handle:
        handle.create_dataset("grp/ds", data=data, chunks=(8, 6))
        handle["grp/ds"].attrs["origin"] = "someone else"
        handle["weights"] = np.ones((3, 3), np.float64)
        handle["vector"] = np.ones(7, np.float32)
    return path, data


def test_foreign_file_without_dataset_path_lists_2d_datasets(foreign_file):
    path, _ = foreign_file
    with h5py.File(path, "r") as handle:
        assert not store.is_store(handle)
        assert store.matrix_datasets(handle) == ["/grp/ds", "/weights"]
    with pytest.raises(BadStoreError) as info:
        store.open_matrices(path)
    message = str(info.value)
    assert "not an sdetool store" in message
    assert "/grp/ds" in message and "/weights" in message
    assert "/vector" not in message
    assert "\n" not in message


def test_foreign_file_with_dataset_path(foreign_file):
    path, data = foreign_file
    matrices = store.open_matrices(path, "/grp/ds")
    assert list(matrices) == ["grp/ds"]
    matrix = matrices["grp/ds"]
    assert matrix.shape == (50, 6)
    assert matrix.chunk_rows == 8
    assert matrix.attrs == {"origin": "someone else"}
    np.testing.assert_array_equal(_read_all(matrix), data)


def test_foreign_file_with_missing_dataset_path(foreign_file):
    path, _ = foreign_file
    with pytest.raises(UnknownKeyError) as info:
        store.open_matrices(path, "/grp/nope")
    assert isinstance(info.value, BadInputError)
    assert "/grp/nope" in str(info.value) and "/grp/ds" in str(info.value)


def test_truncated_store_is_a_bad_store_error(tmp_path):
    path = tmp_path / "emb.h5"
    store.write_set(str(path), "image", _matrix(0), ids=[str(i) for i in range(N)], mode="w")
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.truncate(size // 2)
    with pytest.raises(BadStoreError) as info:
        for matrix in store.open_matrices(str(path)).values():
            _read_all(matrix)
    assert str(path) in str(info.value)
    assert "\n" not in str(info.value)


def test_not_hdf5_is_a_bad_store_error(tmp_path):
    path = tmp_path / "fake.h5"
    path.write_text("just some text, not HDF5\n")
    with pytest.raises(BadStoreError, match="not an HDF5 file"):
        store.open_matrices(str(path))
    with pytest.raises(BadStoreError, match="not an HDF5 file"):
        store.open_file(str(path))


def test_missing_file_and_folder_are_bad_store_errors(tmp_path):
    with pytest.raises(BadStoreError, match="no such file"):
        store.open_file(str(tmp_path / "missing.h5"))
    with pytest.raises(BadStoreError, match="folder"):
        store.open_file(str(tmp_path))
