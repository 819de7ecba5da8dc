"""Input sources: every supported format, sharding, validation errors, block streaming, prefetch."""

from __future__ import annotations

import threading

import h5py
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from sdetool.errors import BadInputError, BadStoreError, UnknownKeyError
from sdetool.io import sources, store

N, D = 200, 16


def _matrix(seed: int = 0, n: int = N, d: int = D, dtype=np.float32) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(dtype)


def _read_all(shards) -> np.ndarray:
    blocks = []
    for shard in shards:
        with shard.reader() as read:
            blocks.append(np.asarray(read(0, shard.shape[0])))
    return np.concatenate(blocks)


def _assert_bad_input(spec, match=None, keys=None) -> str:
    """The one-line message of the BadInputError that opening ``spec`` raises."""
    with pytest.raises(BadInputError) as info:
        sources.open_inputs([str(spec)], keys)
    message = str(info.value)
    assert "\n" not in message
    if match is not None:
        assert match in message, message
    return message


def _write_marker(path: str) -> None:
    """Would run at unpickling time if a .pt were loaded without weights_only."""
    with open(path, "w") as handle:
        handle.write("code ran")


class ReducesToMarker:
    """Its pickle calls _write_marker(marker) when loaded."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (_write_marker, (self.marker,))


class SetsStateToMarker:
    """Its pickle calls __setstate__, which writes the marker, when loaded."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __getstate__(self):
        return {"marker": self.marker}

    def __setstate__(self, state):
        _write_marker(state["marker"])
        self.__dict__.update(state)


# --- formats -------------------------------------------------------------------------------------


def test_npy_opens_as_embeddings_memory_mapped(tmp_path):
    data = _matrix(0)
    path = tmp_path / "emb.npy"
    np.save(path, data)
    opened = sources.open_inputs([str(path)])
    assert list(opened) == ["embeddings"]
    (shard,) = opened["embeddings"]
    assert isinstance(shard.array, np.memmap)
    assert shard.shape == (N, D)
    assert shard.label == str(path)
    np.testing.assert_array_equal(_read_all(opened["embeddings"]), data)


def test_npz_opens_one_set_per_array_name(tmp_path):
    image, text = _matrix(0), _matrix(1, d=8)
    path = tmp_path / "emb.npz"
    np.savez(path, image=image, text=text)
    opened = sources.open_inputs([str(path)])
    assert list(opened) == ["image", "text"]
    np.testing.assert_array_equal(_read_all(opened["image"]), image)
    np.testing.assert_array_equal(_read_all(opened["text"]), text)
    assert opened["text"][0].label == f"{path}:text"


def test_pt_tensor_opens_as_embeddings(tmp_path):
    data = _matrix(2)
    path = tmp_path / "emb.pt"
    torch.save(torch.from_numpy(data), path)
    opened = sources.open_inputs([str(path)])
    assert list(opened) == ["embeddings"]
    rows = _read_all(opened["embeddings"])
    assert isinstance(rows, np.ndarray) and rows.dtype == np.float32
    np.testing.assert_array_equal(rows, data)


def test_pth_dict_of_tensors_opens_one_set_per_name(tmp_path):
    image, text = _matrix(0), _matrix(1)
    path = tmp_path / "emb.pth"
    torch.save({"image": torch.from_numpy(image), "text": torch.from_numpy(text)}, path)
    opened = sources.open_inputs([str(path)])
    assert list(opened) == ["image", "text"]
    np.testing.assert_array_equal(_read_all(opened["image"]), image)
    np.testing.assert_array_equal(_read_all(opened["text"]), text)


def test_pt_bfloat16_is_widened_to_float32(tmp_path):
    tensor = torch.from_numpy(_matrix(3)).to(torch.bfloat16)
    path = tmp_path / "emb.pt"
    torch.save(tensor, path)
    opened = sources.open_inputs([str(path)])
    assert sources.dtype_name(opened["embeddings"][0].dtype) == "bfloat16"
    rows = _read_all(opened["embeddings"])
    assert rows.dtype == np.float32
    np.testing.assert_array_equal(rows, tensor.to(torch.float32).numpy())


def test_safetensors_opens_one_set_per_tensor_bfloat16_included(tmp_path):
    image = _matrix(0)
    text_bf16 = torch.from_numpy(_matrix(1, d=8)).to(torch.bfloat16)
    path = tmp_path / "emb.safetensors"
    save_file({"image": torch.from_numpy(image), "text": text_bf16}, str(path))
    opened = sources.open_inputs([str(path)])
    assert set(opened) == {"image", "text"}
    assert opened["image"][0].shape == (N, D)
    assert opened["text"][0].dtype == "bfloat16"
    np.testing.assert_array_equal(_read_all(opened["image"]), image)
    rows = _read_all(opened["text"])
    assert rows.dtype == np.float32
    expected = text_bf16.to(torch.float32).numpy()
    np.testing.assert_array_equal(rows, expected)
    # bf16 really lost precision: the values are the bf16 ones, not the original float32 ones.
    assert not np.array_equal(rows, _matrix(1, d=8))


def test_store_and_dataset_spec(tmp_path):
    path = str(tmp_path / "emb.h5")
    image = _matrix(0)
    store.write_set(path, "image", image, attrs={"modality": "image"})
    opened = sources.open_inputs([path])
    assert list(opened) == ["image"]
    assert opened["image"][0].attrs["modality"] == "image"
    np.testing.assert_array_equal(_read_all(opened["image"]), image)

    other = str(tmp_path / "other.h5")
    data = _matrix(1, n=40, d=5)
    with h5py.File(other, "w") as handle:
        handle["deep/path/vectors"] = data
    assert sources.split_spec(f"{other}:/deep/path/vectors") == (other, "/deep/path/vectors")
    opened = sources.open_inputs([f"{other}:/deep/path/vectors"])
    assert list(opened) == ["deep/path/vectors"]
    np.testing.assert_array_equal(_read_all(opened["deep/path/vectors"]), data)


def test_split_spec_leaves_other_colons_alone():
    assert sources.split_spec("emb.npy") == ("emb.npy", None)
    assert sources.split_spec("dir:with:colons/emb.h5") == ("dir:with:colons/emb.h5", None)
    assert sources.split_spec("a.H5:/x") == ("a.H5", "/x")
    assert sources.split_spec("emb.npz:/x") == ("emb.npz:/x", None)


@pytest.mark.parametrize("suffix", [".npz", ".safetensors"])
def test_side_arrays_that_are_not_2d_do_not_block_the_2d_set(tmp_path, suffix):
    data = _matrix(0)
    path = tmp_path / f"emb{suffix}"
    if suffix == ".npz":
        np.savez(path, embeddings=data, labels=np.arange(N))
    else:
        save_file({"embeddings": torch.from_numpy(data), "labels": torch.arange(N)}, str(path))
    opened = sources.open_inputs([str(path)], ["embeddings"])
    np.testing.assert_array_equal(_read_all(opened["embeddings"]), data)


# --- shards and keys -----------------------------------------------------------------------------


def test_shards_concatenate_per_key(tmp_path):
    image, text = _matrix(0), _matrix(1)
    paths = []
    for index, (start, stop) in enumerate([(0, 70), (70, 150), (150, 200)]):
        path = str(tmp_path / f"shard{index}.h5")
        store.write_set(path, "image", image[start:stop])
        store.write_set(path, "text", text[start:stop])
        paths.append(path)
    opened = sources.open_inputs(paths, ["text", "image"])
    assert list(opened) == ["text", "image"]
    assert [s.shape[0] for s in opened["image"]] == [70, 80, 50]
    np.testing.assert_array_equal(_read_all(opened["image"]), image)
    np.testing.assert_array_equal(_read_all(opened["text"]), text)


def test_shards_of_mixed_formats_concatenate(tmp_path):
    data = _matrix(0)
    np.save(tmp_path / "a.npy", data[:120])
    torch.save(torch.from_numpy(data[120:]), tmp_path / "b.pt")
    opened = sources.open_inputs([str(tmp_path / "a.npy"), str(tmp_path / "b.pt")])
    np.testing.assert_array_equal(_read_all(opened["embeddings"]), data)


def test_shard_with_other_dimension_is_refused(tmp_path):
    np.save(tmp_path / "a.npy", _matrix(0, n=10, d=16))
    np.save(tmp_path / "b.npy", _matrix(1, n=10, d=12))
    with pytest.raises(BadInputError) as info:
        sources.open_inputs([str(tmp_path / "a.npy"), str(tmp_path / "b.npy")])
    message = str(info.value)
    assert "b.npy" in message and "d = 12" in message and "d = 16" in message


def test_shard_missing_a_key_is_refused(tmp_path):
    first, second = str(tmp_path / "a.h5"), str(tmp_path / "b.h5")
    store.write_set(first, "image", _matrix(0, n=10))
    store.write_set(first, "text", _matrix(1, n=10))
    store.write_set(second, "image", _matrix(2, n=10))
    with pytest.raises(UnknownKeyError) as info:
        sources.open_inputs([first, second])
    message = str(info.value)
    assert second in message and "'text'" in message
    # Asking only for the key both have works.
    assert [s.shape[0] for s in sources.open_inputs([first, second], ["image"])["image"]] == [10, 10]


def test_unknown_key_lists_the_keys_found(tmp_path):
    path = str(tmp_path / "emb.npz")
    np.savez(path, image=_matrix(0, n=5), text=_matrix(1, n=5))
    with pytest.raises(UnknownKeyError) as info:
        sources.open_inputs([path], ["audio"])
    message = str(info.value)
    assert isinstance(info.value, BadInputError)
    assert "'audio'" in message and "image, text" in message
    assert not message.startswith('"')  # not KeyError's quoting


def test_no_input_at_all():
    with pytest.raises(BadInputError, match="no input"):
        sources.open_inputs([])


# --- bad inputs ----------------------------------------------------------------------------------


def test_missing_file(tmp_path):
    _assert_bad_input(tmp_path / "missing.npy", "no such file")


def test_folder(tmp_path):
    _assert_bad_input(tmp_path, "is a folder")


def test_unsupported_suffix(tmp_path):
    path = tmp_path / "emb.csv"
    path.write_text("1,2\n3,4\n")
    message = _assert_bad_input(path, "unsupported input format")
    assert "'.csv'" in message and ".npy" in message


def test_not_hdf5_with_h5_suffix(tmp_path):
    path = tmp_path / "emb.h5"
    path.write_bytes(b"\x00garbage" * 50)
    with pytest.raises(BadStoreError, match="not an HDF5 file"):
        sources.open_inputs([str(path)])


@pytest.fixture
def odd_h5(tmp_path):
    path = tmp_path / "odd.h5"
    with h5py.File(path, "w") as handle:
        handle["ints"] = np.arange(30, dtype=np.int32).reshape(10, 3)
        handle.create_dataset("strings", data=np.array([["a", "b"], ["c", "d"]], dtype=object),
                              dtype=h5py.string_dtype("utf-8"))
        handle["cube"] = np.zeros((4, 3, 2), np.float32)
        handle["empty_columns"] = np.zeros((5, 0), np.float32)
        handle["vector"] = np.zeros(6, np.float32)
    return path


@pytest.mark.parametrize(
    "dataset, expected",
    [
        ("/ints", "int32"),
        ("/strings", "dtype object"),
        ("/cube", "3-D"),
        ("/empty_columns", "d = 0"),
        ("/vector", "1-D"),
    ],
)
def test_h5_dataset_of_wrong_kind(odd_h5, dataset, expected):
    message = _assert_bad_input(f"{odd_h5}:{dataset}", expected)
    assert f"{odd_h5}:{dataset}" in message


@pytest.mark.parametrize(
    "array, expected",
    [
        (np.arange(12, dtype=np.int64).reshape(4, 3), "int64"),
        (np.zeros((2, 3, 4), np.float32), "3-D"),
        (np.zeros((5, 0), np.float32), "d = 0"),
        (np.array([["a", "b"]]), "dtype <U1"),
    ],
)
def test_npy_of_wrong_kind(tmp_path, array, expected):
    path = tmp_path / "emb.npy"
    np.save(path, array)
    assert str(path) in _assert_bad_input(path, expected)


def test_pt_integer_tensor(tmp_path):
    path = tmp_path / "emb.pt"
    torch.save(torch.arange(12).reshape(4, 3), path)
    assert str(path) in _assert_bad_input(path, "int64")


@pytest.mark.parametrize("value, kind", [([1, 2, 3], "list"), ("a string", "str"), (7, "int"),
                                         ({"step": 3, "name": "run-1"}, "dict"), ({}, "dict")])
def test_pt_holding_a_non_tensor(tmp_path, value, kind):
    path = tmp_path / "emb.pt"
    torch.save(value, path)
    message = _assert_bad_input(path, f"holds a {kind}")
    assert str(path) in message


def test_pt_dict_side_entries_are_skipped(tmp_path):
    data = _matrix(0)
    path = tmp_path / "emb.pt"
    torch.save({"image": torch.from_numpy(data), "step": 3, "name": "run-1"}, path)
    opened = sources.open_inputs([str(path)])
    assert list(opened) == ["image"]
    np.testing.assert_array_equal(_read_all(opened["image"]), data)


@pytest.mark.parametrize("cls", [ReducesToMarker, SetsStateToMarker])
def test_pt_holding_a_pickled_object_is_refused_without_running_it(tmp_path, cls):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pt"
    torch.save(cls(str(marker)), path)
    assert not marker.exists()  # saving did not run it either
    message = _assert_bad_input(path, "weights_only")
    assert str(path) in message
    assert not marker.exists()


def test_pt_tensor_requiring_grad_is_read(tmp_path):
    data = _matrix(0)
    path = tmp_path / "emb.pt"
    torch.save(torch.from_numpy(data).requires_grad_(True), path)
    np.testing.assert_array_equal(_read_all(sources.open_inputs([str(path)])["embeddings"]), data)


def test_pt_sparse_tensor_is_refused_or_read(tmp_path):
    data = _matrix(0, n=20, d=4)
    path = tmp_path / "emb.pt"
    torch.save(torch.from_numpy(data).to_sparse(), path)
    try:
        rows = _read_all(sources.open_inputs([str(path)])["embeddings"])
    except BadInputError as error:
        assert str(path) in str(error)
    else:
        np.testing.assert_array_equal(rows, data)


def test_truncated_npz(tmp_path):
    path = tmp_path / "emb.npz"
    np.savez(path, image=_matrix(0))
    payload = path.read_bytes()
    path.write_bytes(payload[: len(payload) // 2])
    _assert_bad_input(path, str(path))


def test_truncated_pt(tmp_path):
    path = tmp_path / "emb.pt"
    torch.save(torch.from_numpy(_matrix(0)), path)
    payload = path.read_bytes()
    path.write_bytes(payload[: len(payload) // 2])
    _assert_bad_input(path, str(path))


@pytest.mark.parametrize("suffix", [".npy", ".safetensors"])
def test_truncated_npy_and_safetensors(tmp_path, suffix):
    path = tmp_path / f"emb{suffix}"
    if suffix == ".npy":
        np.save(path, _matrix(0))
    else:
        save_file({"image": torch.from_numpy(_matrix(0))}, str(path))
    payload = path.read_bytes()
    path.write_bytes(payload[: len(payload) // 2])
    _assert_bad_input(path, str(path))


def test_truncated_store(tmp_path):
    path = tmp_path / "emb.h5"
    store.write_set(str(path), "image", _matrix(0))
    with open(path, "r+b") as handle:
        handle.truncate(path.stat().st_size // 2)
    with pytest.raises(BadStoreError) as info:
        opened = sources.open_inputs([str(path)])
        _read_all(opened["image"])
    assert str(path) in str(info.value)


# --- streaming -----------------------------------------------------------------------------------


@pytest.fixture
def chunked_shards(tmp_path):
    """Three HDF5 shards with 16-row chunks (so block reads are chunk-aligned) and their rows."""
    data = _matrix(7)
    bounds = [(0, 90), (90, 91), (91, 200)]
    shards, offset = [], 0
    for index, (start, stop) in enumerate(bounds):
        path = tmp_path / f"s{index}.h5"
        with h5py.File(path, "w") as handle:
            handle.create_dataset("x", data=data[start:stop], chunks=(min(16, stop - start), D))
        (matrix,) = sources.open_spec(f"{path}:/x").values()
        shards.append((matrix, offset))
        offset += stop - start
    return shards, data


def test_iter_blocks_without_selection(chunked_shards):
    shards, data = chunked_shards
    blocks = list(sources.iter_blocks(shards, block_rows=40))
    rows = np.concatenate([b.rows for b in blocks])
    positions = np.concatenate([b.positions for b in blocks])
    np.testing.assert_array_equal(rows, data)
    np.testing.assert_array_equal(positions, np.arange(N))
    assert sum(b.scanned for b in blocks) == N
    # 40 rows aligned down to the 16-row chunk: blocks of 32 rows (and the shard tails).
    assert max(b.rows.shape[0] for b in blocks) == 32
    for block in blocks:
        np.testing.assert_array_equal(block.rows, data[block.positions])


def test_iter_blocks_with_selection(chunked_shards):
    shards, data = chunked_shards
    rng = np.random.default_rng(11)
    selection = np.sort(rng.choice(N, size=37, replace=False)).astype(np.int64)
    selection = np.union1d(selection, [0, 90, 199]).astype(np.int64)  # shard edges and the 1-row shard
    blocks = list(sources.iter_blocks(shards, block_rows=40, selection=selection))
    positions = np.concatenate([b.positions for b in blocks])
    rows = np.concatenate([b.rows for b in blocks])
    np.testing.assert_array_equal(positions, selection)
    np.testing.assert_array_equal(rows, data[selection])
    assert sum(b.scanned for b in blocks) == N
    for block in blocks:
        assert block.rows.shape == (block.positions.size, D)


def test_iter_blocks_with_selection_missing_whole_windows(tmp_path):
    data = _matrix(8, n=100, d=4)
    np.save(tmp_path / "a.npy", data)
    (matrix,) = sources.open_spec(str(tmp_path / "a.npy")).values()
    selection = np.array([3, 95], dtype=np.int64)
    blocks = list(sources.iter_blocks([(matrix, 0)], block_rows=10, selection=selection))
    assert len(blocks) == 10
    assert [b.positions.size for b in blocks] == [1, 0, 0, 0, 0, 0, 0, 0, 0, 1]
    np.testing.assert_array_equal(np.concatenate([b.rows for b in blocks]), data[[3, 95]])


def test_iter_blocks_of_a_store_across_shards_with_offsets(tmp_path):
    data = _matrix(9)
    first, second = str(tmp_path / "a.h5"), str(tmp_path / "b.h5")
    store.write_set(first, "image", data[:77])
    store.write_set(second, "image", data[77:])
    shards = sources.open_inputs([first, second])["image"]
    blocks = list(sources.iter_blocks([(shards[0], 0), (shards[1], 77)], block_rows=25))
    np.testing.assert_array_equal(np.concatenate([b.rows for b in blocks]), data)
    np.testing.assert_array_equal(np.concatenate([b.positions for b in blocks]), np.arange(N))


def test_prefetch_yields_items_in_order():
    assert list(sources.prefetch(iter(range(500)), depth=1)) == list(range(500))
    assert list(sources.prefetch(iter(range(500)), depth=4)) == list(range(500))
    assert list(sources.prefetch(iter([]))) == []


def test_prefetch_reraises_the_producers_exception_after_its_items():
    class ProducerError(RuntimeError):
        pass

    def produce():
        yield 1
        yield 2
        raise ProducerError("disk fell off")

    received = []
    with pytest.raises(ProducerError, match="disk fell off"):
        for item in sources.prefetch(produce()):
            received.append(item)
    assert received == [1, 2]


def test_prefetch_reraises_errors_of_block_reads(tmp_path):
    path = tmp_path / "emb.h5"
    store.write_set(str(path), "image", _matrix(0))
    (matrix,) = sources.open_inputs([str(path)])["image"]
    path.write_bytes(b"gone")  # the file is replaced before streaming starts
    with pytest.raises(BadStoreError, match="not an HDF5 file"):
        list(sources.prefetch(sources.iter_blocks([(matrix, 0)], block_rows=50)))


def test_prefetch_stops_its_thread_when_abandoned():
    def endless():
        count = 0
        while True:
            yield count
            count += 1

    stream = sources.prefetch(endless(), depth=2)
    assert [next(stream) for _ in range(5)] == [0, 1, 2, 3, 4]
    stream.close()
    alive = [t for t in threading.enumerate() if t.name == "sdetool-prefetch" and t.is_alive()]
    assert alive == []


def test_legacy_pt_format_is_read_without_mmap(tmp_path):
    data = _matrix(0)
    path = tmp_path / "legacy.pt"
    torch.save(torch.from_numpy(data), path, _use_new_zipfile_serialization=False)
    np.testing.assert_array_equal(_read_all(sources.open_inputs([str(path)])["embeddings"]), data)
