"""sdetool export: clip-retrieval's folder, .npy and Parquet, read back with numpy and pandas (the readers
clip-retrieval's index step and autofaiss use), row-aligned with the store's ids and captions."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest
from cli_helpers import assert_error, assert_ok, invoke
from extract_fixtures import fashion_subset, image_folder

from sdetool.api import ExtractOptions, extract
from sdetool.errors import BadInputError
from sdetool.io import store
from sdetool.io.export import export

ROWS = 96


@pytest.fixture(scope="module")
def paired(tmp_path_factory):
    """A real extract of 96 built-in pairs (image + text, ids and captions)."""
    path = str(tmp_path_factory.mktemp("export") / "pairs.h5")
    extract("builtin:lit-fmnist", fashion_subset(ROWS), path, ExtractOptions(batch_size=32, num_workers=0))
    return path


def _store(path: str, key: str) -> np.ndarray:
    with store.open_matrices(path)[key].reader() as read:
        return np.asarray(read(0, ROWS))


def test_clip_retrieval_layout_read_back_with_numpy_and_pandas(paired, tmp_path):
    out = tmp_path / "cr"
    result = assert_ok(invoke("export", paired, "--out", out, "--json", tmp_path / "r.json", "-q"))
    assert result.exit_code == 0
    image = np.load(out / "img_emb" / "img_emb_0.npy")
    text = np.load(out / "text_emb" / "text_emb_0.npy")
    meta = pd.read_parquet(out / "metadata" / "metadata_0.parquet")
    assert image.dtype == text.dtype == np.float16  # as clip-retrieval writes them
    assert image.shape == (ROWS, 256) and text.shape == (ROWS, 256) and len(meta) == ROWS
    np.testing.assert_allclose(image, _store(paired, "image").astype(np.float16), rtol=0, atol=0)
    np.testing.assert_allclose(text, _store(paired, "text").astype(np.float16), rtol=0, atol=0)
    assert list(meta["id"]) == store.read_ids(paired, "image")
    source = fashion_subset(ROWS)
    assert list(meta["caption"]) == list(source.texts)
    assert sorted(os.listdir(out)) == ["img_emb", "metadata", "text_emb"]
    summary = json.loads((tmp_path / "r.json").read_text())
    assert summary["rows"] == ROWS and summary["format"] == "clip-retrieval"


def test_dtype_float32_keeps_the_stored_values(paired, tmp_path):
    export(paired, str(tmp_path / "cr"), dtype="float32")
    np.testing.assert_array_equal(np.load(tmp_path / "cr" / "img_emb" / "img_emb_0.npy"), _store(paired, "image"))


def test_npy_format_one_file_per_set(paired, tmp_path):
    result = export(paired, str(tmp_path / "plain"), format="npy")
    assert sorted(result.files) == ["image.npy", "metadata.parquet", "text.npy"]
    np.testing.assert_array_equal(np.load(tmp_path / "plain" / "text.npy"), _store(paired, "text"))
    assert np.load(tmp_path / "plain" / "text.npy").dtype == np.float32


def test_parquet_format_one_row_per_item_with_vector_columns(paired, tmp_path):
    export(paired, str(tmp_path / "pq"), format="parquet")
    table = pd.read_parquet(tmp_path / "pq" / "embeddings.parquet")
    assert list(table.columns) == ["id", "caption", "image_path", "image", "text"]
    assert len(table) == ROWS
    np.testing.assert_array_equal(np.stack(table["image"].to_numpy()), _store(paired, "image"))
    assert list(table["id"]) == store.read_ids(paired, "image")


def test_image_paths_of_a_folder_extract_reach_the_metadata(tmp_path):
    folder = tmp_path / "images"
    image_folder(folder, 6)
    path = str(tmp_path / "folder.h5")
    assert_ok(invoke("extract", "--images", folder, "--out", path, "-q"))
    export(path, str(tmp_path / "cr"))
    meta = pd.read_parquet(tmp_path / "cr" / "metadata" / "metadata_0.parquet")
    assert all(os.path.isfile(p) for p in meta["image_path"]) and len(meta) == 6
    assert all(meta["caption"].str.len() > 0)


def test_a_folder_that_is_not_empty_is_refused_unless_overwrite(paired, tmp_path):
    out = tmp_path / "busy"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    assert_error(invoke("export", paired, "--out", out, "-q"), 2, "not empty", "--overwrite")
    assert os.listdir(out) == ["notes.txt"]
    assert_ok(invoke("export", paired, "--out", out, "--overwrite", "-q"))
    assert (out / "notes.txt").read_text() == "keep me" and (out / "img_emb" / "img_emb_0.npy").exists()


def test_clip_retrieval_needs_image_or_text_sets(tmp_path):
    path = str(tmp_path / "other.h5")
    store.write_set(path, "audio", np.ones((4, 3), np.float32), mode="w")
    with pytest.raises(BadInputError, match="clip-retrieval's layout holds the sets 'image' and 'text'"):
        export(path, str(tmp_path / "out"))
    export(path, str(tmp_path / "plain"), format="npy")
    assert np.load(tmp_path / "plain" / "audio.npy").shape == (4, 3)


def test_sets_that_are_not_row_aligned_are_refused(tmp_path):
    path = str(tmp_path / "odd.h5")
    store.write_set(path, "image", np.ones((4, 3), np.float32), ids=list("abcd"), mode="w")
    store.write_set(path, "text", np.ones((4, 3), np.float32), ids=list("abce"))
    with pytest.raises(BadInputError, match="not row-aligned"):
        export(path, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_a_missing_store_is_one_line(tmp_path):
    assert_error(invoke("export", tmp_path / "none.h5", "--out", tmp_path / "x", "-q"), 2, "none.h5")
