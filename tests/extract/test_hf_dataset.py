"""Hugging Face datasets (``--hf-dataset``, read by ``datasets.load_from_disk``) and the ``{"bytes", "path"}``
image struct in Parquet manifests: the same images give the same embeddings as an image folder."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from cli_helpers import assert_error, assert_ok, invoke
from extract_fixtures import caption_of, image_folder

datasets = pytest.importorskip("datasets")  # an optional extra (sdetool[datasets]); the test extra installs it

COUNT = 8


@pytest.fixture(scope="module")
def folder_and_dataset(tmp_path_factory):
    from PIL import Image

    from sdetool.extract.data.items import image_folder as folder_source

    root = tmp_path_factory.mktemp("hf")
    images = root / "images"
    image_folder(images, COUNT)
    source = folder_source(str(images))  # the folder's own order, ids and captions
    names = list(source.ids)
    table = {"id": names, "image": [Image.open(path).copy() for path in source.image_paths],
             "caption": list(source.texts)}
    dataset = datasets.Dataset.from_dict(table, features=datasets.Features(
        {"id": datasets.Value("string"), "image": datasets.Image(), "caption": datasets.Value("string")}))
    dataset.save_to_disk(str(root / "saved"))
    dataset.to_parquet(str(root / "structs.parquet"))
    return root, names


def _embeddings(path) -> dict:
    with h5py.File(path, "r") as handle:
        return {key: handle[f"{key}/embeddings"][...] for key in ("image", "text") if key in handle}


def test_a_saved_dataset_embeds_like_the_image_folder(folder_and_dataset, tmp_path):
    root, names = folder_and_dataset
    assert_ok(invoke("extract", "--hf-dataset", root / "saved", "--out", tmp_path / "hf.h5", "-q"))
    assert_ok(invoke("extract", "--images", root / "images", "--out", tmp_path / "folder.h5", "-q"))
    hf, folder = _embeddings(tmp_path / "hf.h5"), _embeddings(tmp_path / "folder.h5")
    np.testing.assert_allclose(hf["image"], folder["image"], atol=1e-6)
    assert hf["text"].shape == (COUNT, 256)
    with h5py.File(tmp_path / "hf.h5", "r") as handle:
        ids = [v.decode() for v in handle["image/ids"][...]]
        captions = [v.decode() for v in handle["text/captions"][...]]
    assert ids == names
    assert sorted(captions) == sorted(caption_of(i) for i in range(COUNT))


def test_a_parquet_manifest_of_image_structs(folder_and_dataset, tmp_path):
    root, _ = folder_and_dataset
    assert_ok(invoke("extract", "--manifest", root / "structs.parquet", "--out", tmp_path / "pq.h5", "-q"))
    assert_ok(invoke("extract", "--images", root / "images", "--out", tmp_path / "folder.h5", "-q"))
    np.testing.assert_allclose(_embeddings(tmp_path / "pq.h5")["image"], _embeddings(tmp_path / "folder.h5")["image"],
                               atol=1e-6)


def test_a_dataset_dict_names_its_splits(folder_and_dataset, tmp_path):
    root, _ = folder_and_dataset
    both = datasets.DatasetDict({"train": datasets.load_from_disk(str(root / "saved")),
                                 "test": datasets.load_from_disk(str(root / "saved"))})
    both.save_to_disk(str(tmp_path / "dict"))
    assert_error(invoke("extract", "--hf-dataset", tmp_path / "dict", "--out", tmp_path / "x.h5", "-q"), 2,
                 "splits train, test", str(tmp_path / "dict" / "train"))
    assert_ok(invoke("extract", "--hf-dataset", tmp_path / "dict" / "train", "--out", tmp_path / "t.h5", "-q"))


def test_a_column_that_does_not_exist_is_one_line(folder_and_dataset, tmp_path):
    root, _ = folder_and_dataset
    assert_error(invoke("extract", "--hf-dataset", root / "saved", "--text-col", "nope", "--out", tmp_path / "x.h5",
                        "-q"), 2, "--text-col 'nope'", "columns: id, image, caption")
    assert not (tmp_path / "x.h5").exists()


def test_a_folder_that_is_not_a_dataset_is_one_line(tmp_path):
    (tmp_path / "plain").mkdir()
    assert_error(invoke("extract", "--hf-dataset", tmp_path / "plain", "--out", tmp_path / "x.h5", "-q"), 2,
                 "not a datasets save_to_disk folder")


def test_a_struct_with_neither_bytes_nor_path_is_a_failed_item(tmp_path, folder_and_dataset):
    import pandas as pd

    root, _ = folder_and_dataset
    frame = pd.read_parquet(root / "structs.parquet")
    frame.at[2, "image"] = {"bytes": None, "path": None}
    frame.at[5, "image"] = {"bytes": None, "path": "gone.png"}
    frame.to_parquet(tmp_path / "broken.parquet")
    assert_ok(invoke("extract", "--manifest", tmp_path / "broken.parquet", "--out", tmp_path / "b.h5", "-q"))
    with h5py.File(tmp_path / "b.h5", "r") as handle:
        failed = {row["id"].decode(): row["reason"].decode() for row in handle["image/failed"][...]}
        assert handle["image/embeddings"].shape[0] == COUNT - 2
    ids = list(frame["id"])
    assert "neither bytes nor a path" in failed[ids[2]]
    assert "missing file" in failed[ids[5]] and "gone.png" in failed[ids[5]]
