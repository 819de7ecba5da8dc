"""Input items of ``extract``: image folders, caption sidecars, text files, manifests, built-in Fashion-MNIST."""

from __future__ import annotations

import gzip
import json
import os

import numpy as np
import pandas as pd
import pytest
from extract_fixtures import image_folder as make_folder
from extract_fixtures import write_fake_png, write_image, write_truncated_jpeg

from sdetool.errors import BadInputError
from sdetool.extract.data import fashion_mnist
from sdetool.extract.data.items import (ItemError, ItemSource, builtin_data, image_folder, manifest, open_source,
                                        text_file)

# --- image folders --------------------------------------------------------------------------------


def test_image_folder_lists_images_recursively_sorted_and_skips_other_files(tmp_path):
    for name in ("b.png", "a.jpg", "sub/c.png", "sub/deeper/d.bmp", "e.JPEG"):
        write_image(tmp_path / name, seed=len(name))
    (tmp_path / "readme.txt").write_text("not an image")
    (tmp_path / "sub" / "data.csv").write_text("x\n1\n")
    write_image(tmp_path / ".hidden.png", seed=1)
    write_image(tmp_path / ".cache" / "x.png", seed=2)

    source = image_folder(str(tmp_path))

    assert source.kind == "folder" and source.location == str(tmp_path)
    assert source.ids == ["a.jpg", "b.png", "e.JPEG", "sub/c.png", "sub/deeper/d.bmp"]
    assert source.image_paths == [os.path.join(str(tmp_path), *item.split("/")) for item in source.ids]
    assert source.texts is None and source.modalities == ("image",)
    assert source.notes == ["2 files without an image extension were not listed"]
    assert image_folder(str(tmp_path)).ids == source.ids  # deterministic


def test_load_image_decodes_png_and_jpeg(tmp_path):
    write_image(tmp_path / "sub" / "x.png", seed=3, size=(10, 12))
    write_image(tmp_path / "y.jpg", seed=4, size=(16, 8))
    write_image(tmp_path / "g.png", seed=5, size=(7, 9), mode="L")
    source = image_folder(str(tmp_path))
    assert source.ids == ["g.png", "sub/x.png", "y.jpg"]  # one global sort of the ids
    images = [source.load_image(i) for i in range(len(source))]
    assert [image.size for image in images] == [(9, 7), (12, 10), (8, 16)]  # PIL sizes are (width, height)
    assert images[0].mode == "L" and images[1].mode == "RGB"
    expected = np.random.default_rng(3).integers(0, 256, (10, 12, 3), dtype=np.uint8)
    np.testing.assert_array_equal(np.asarray(images[1]), expected)  # PNG is lossless


def test_load_image_reports_unreadable_files(tmp_path):
    write_image(tmp_path / "good.png", seed=0)
    write_truncated_jpeg(tmp_path / "half.jpg")
    write_fake_png(tmp_path / "fake.png")
    source = image_folder(str(tmp_path))
    assert source.ids == ["fake.png", "good.png", "half.jpg"]
    assert source.load_image(1).size == (24, 20)
    with pytest.raises(ItemError, match=r"^not an image: .*fake\.png$"):
        source.load_image(0)
    with pytest.raises(ItemError, match=r"^corrupt image .*half\.jpg: .*truncated"):
        source.load_image(2)
    os.remove(tmp_path / "good.png")
    with pytest.raises(ItemError, match=r"^missing file .*good\.png$"):
        source.load_image(1)


def test_captions_pair_every_image(tmp_path):
    layout = make_folder(tmp_path, 5)
    with open(tmp_path / "captions.jsonl", "a") as handle:  # blank lines, other key names, unknown extra files
        handle.write("\n" + json.dumps({"image": "not/listed.png", "text": "ignored"}) + "\n")
    source = image_folder(str(tmp_path))
    assert source.ids == ["img0000.png", "img0002.png", "img0004.png", "sub/img0001.png", "sub/img0003.png"]
    assert sorted(source.ids) == sorted(layout["good"])
    assert source.texts == [layout["captions"][item] for item in source.ids]
    assert source.modalities == ("image", "text") and source.template == "captions.jsonl"
    assert source.notes == ["1 files without an image extension were not listed"]  # notes.txt, not captions.jsonl


def test_caption_keys_image_and_text_are_accepted(tmp_path):
    write_image(tmp_path / "sub" / "a.png", seed=0)
    (tmp_path / "captions.jsonl").write_text(json.dumps({"image": "sub/a.png", "text": "a red square"}) + "\n")
    assert image_folder(str(tmp_path)).texts == ["a red square"]


def test_an_image_without_caption_is_refused(tmp_path):
    make_folder(tmp_path, 4)
    write_image(tmp_path / "sub" / "extra.png", seed=7)
    with pytest.raises(BadInputError, match=r"captions\.jsonl: no caption for 1 of 5 images \(first: sub/extra\.png\)"):
        image_folder(str(tmp_path))


def test_a_bad_caption_line_names_its_line(tmp_path):
    write_image(tmp_path / "a.png", seed=0)
    (tmp_path / "captions.jsonl").write_text(json.dumps({"file": "a.png", "caption": "x"}) + "\n{oops\n")
    with pytest.raises(BadInputError, match=r"captions\.jsonl:2: expected a JSON object"):
        image_folder(str(tmp_path))


def test_empty_or_missing_folders_are_refused(tmp_path):
    with pytest.raises(BadInputError, match="no image files"):
        image_folder(str(tmp_path))
    (tmp_path / "notes.txt").write_text("text only")
    with pytest.raises(BadInputError, match=r"--images .*: no image files \(\.png"):
        image_folder(str(tmp_path))
    with pytest.raises(BadInputError, match="--images .*nowhere: no such folder"):
        image_folder(str(tmp_path / "nowhere"))


# --- text files -----------------------------------------------------------------------------------


def test_text_file_keeps_non_blank_lines_with_their_line_numbers(tmp_path):
    path = tmp_path / "texts.txt"
    path.write_bytes("first line\n\n   \nsecond, with ünïcode\r\nthird  \n\n".encode())
    source = text_file(str(path))
    assert source.kind == "texts" and source.modalities == ("text",)
    assert source.ids == ["line-1", "line-4", "line-5"]
    assert source.texts == ["first line", "second, with ünïcode", "third  "]
    assert source.notes == ["3 blank lines skipped"]


def test_text_file_drops_a_byte_order_mark(tmp_path):
    path = tmp_path / "bom.txt"
    path.write_text("hello\nworld\n", encoding="utf-8-sig")
    assert text_file(str(path)).texts == ["hello", "world"]


@pytest.mark.parametrize("content", [b"", b"\n\n  \n"])
def test_empty_text_file_is_refused(tmp_path, content):
    path = tmp_path / "empty.txt"
    path.write_bytes(content)
    with pytest.raises(BadInputError, match="no items to embed"):
        text_file(str(path))


def test_text_file_errors(tmp_path):
    with pytest.raises(BadInputError, match="--texts .*missing.txt: no such file"):
        text_file(str(tmp_path / "missing.txt"))
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(BadInputError, match="not UTF-8 text"):
        text_file(str(tmp_path / "latin1.txt"))


# --- manifests ------------------------------------------------------------------------------------

ROWS = [
    {"id": "a", "image": "pics/a.png", "caption": "an apple"},
    {"id": "b", "image": "pics/b.png", "caption": None},
    {"id": "c", "image": "pics/c.png", "caption": "a cherry"},
]


def _write_manifest(folder, suffix: str, rows=ROWS) -> str:
    path = os.path.join(str(folder), "manifest" + suffix)
    frame = pd.DataFrame(rows)
    if suffix in (".csv", ".tsv"):
        frame.to_csv(path, sep="\t" if suffix == ".tsv" else ",", index=False)  # None -> empty cell
    elif suffix == ".jsonl":
        frame.to_json(path, orient="records", lines=True)  # None -> null
    else:
        frame.to_parquet(path, index=False)  # None -> null
    return path


def test_parquet_manifest_reads_on_the_plain_install():
    import importlib.metadata

    requirements = importlib.metadata.requires("sdetool") or []
    plain = [r for r in requirements if "extra ==" not in r]
    assert any(r.startswith("pyarrow") for r in plain)  # a dependency, not an extra


def test_parquet_without_an_engine_is_one_line(tmp_path, monkeypatch):
    path = _write_manifest(tmp_path, ".parquet")

    def no_engine(*args, **kwargs):
        raise ImportError("Unable to find a usable engine; tried using: 'pyarrow', 'fastparquet'.\n"
                          "A suitable version of pyarrow or fastparquet is required for parquet support.\n"
                          "Trying to import the above resulted in these errors:")

    monkeypatch.setattr(pd, "read_parquet", no_engine)
    with pytest.raises(BadInputError) as caught:
        manifest(path)
    assert "\n" not in str(caught.value) and "needs pyarrow" in str(caught.value)


@pytest.mark.parametrize("suffix", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_manifest_formats_detect_columns_and_missing_texts(tmp_path, monkeypatch, suffix):
    data = tmp_path / "data"
    data.mkdir()
    path = _write_manifest(data, suffix)
    monkeypatch.chdir(tmp_path)  # paths are relative to the manifest's folder, not the working directory
    source = manifest(path)
    assert source.kind == "manifest" and source.modalities == ("image", "text")
    assert source.ids == ["a", "b", "c"]
    assert source.image_paths == [os.path.join(str(data), "pics", name) for name in ("a.png", "b.png", "c.png")]
    assert source.texts == ["an apple", None, "a cherry"]
    assert source.template == "column caption"


def test_empty_image_cell_is_reported_as_such(tmp_path):
    rows = [{"id": "a", "image": "a.png", "text": "x"}, {"id": "b", "image": "", "text": "y"}]
    write_image(tmp_path / "a.png", seed=0)
    source = manifest(_write_manifest(tmp_path, ".csv", rows))
    assert source.load_image(0).size == (24, 20)
    with pytest.raises(ItemError) as caught:
        source.load_image(1)
    assert "empty" in str(caught.value) or "no image" in str(caught.value)


def test_manifest_without_id_column_numbers_rows_and_takes_named_columns(tmp_path):
    rows = [{"picture": "x.png", "alt": "one", "text": "ignored"}, {"picture": "y.png", "alt": "two", "text": "no"}]
    path = _write_manifest(tmp_path, ".csv", rows)
    source = manifest(path, image_column="picture", text_column="alt")
    assert source.ids == ["row-0", "row-1"]
    assert source.texts == ["one", "two"]
    assert [os.path.basename(p) for p in source.image_paths] == ["x.png", "y.png"]


def test_text_only_manifest(tmp_path):
    path = _write_manifest(tmp_path, ".jsonl", [{"id": 7, "sentence": "seven"}, {"id": 8, "sentence": "eight"}])
    source = manifest(path)
    assert source.modalities == ("text",) and source.image_paths is None
    assert source.ids == ["7", "8"] and source.texts == ["seven", "eight"]


@pytest.mark.parametrize("option, keyword", [("--image-col", "image_column"), ("--text-col", "text_column"),
                                             ("--id-col", "id_column")])
def test_unknown_manifest_column_names_the_option_and_lists_columns(tmp_path, option, keyword):
    path = _write_manifest(tmp_path, ".csv")
    with pytest.raises(BadInputError) as caught:
        manifest(path, **{keyword: "nope"})
    message = str(caught.value)
    assert message.startswith(f"{option} 'nope': no such column in {path}")
    assert "(columns: id, image, caption)" in message


def test_manifest_without_usable_columns_is_refused(tmp_path):
    path = _write_manifest(tmp_path, ".csv", [{"id": "a", "score": 1}])
    with pytest.raises(BadInputError, match=r"no image or text column found \(columns: id, score\); name them with --image-col"):
        manifest(path)


def test_manifest_duplicate_ids_are_refused(tmp_path):
    rows = [{"id": "same", "text": "one"}, {"id": "other", "text": "two"}, {"id": "same", "text": "three"}]
    with pytest.raises(BadInputError, match="id 'same' appears more than once"):
        manifest(_write_manifest(tmp_path, ".csv", rows))


def test_manifest_file_errors(tmp_path):
    with pytest.raises(BadInputError, match="--manifest .*: no such file"):
        manifest(str(tmp_path / "none.csv"))
    (tmp_path / "table.xlsx").write_text("x")
    with pytest.raises(BadInputError, match=r"expected \.csv, \.tsv, \.jsonl or \.parquet"):
        manifest(str(tmp_path / "table.xlsx"))
    (tmp_path / "bad.jsonl").write_text("{not json\n")
    with pytest.raises(BadInputError, match="--manifest .*bad.jsonl: cannot parse"):
        manifest(str(tmp_path / "bad.jsonl"))
    (tmp_path / "header.csv").write_text("id,text\n")
    with pytest.raises(BadInputError, match="no items to embed"):
        manifest(str(tmp_path / "header.csv"))


# --- the item list itself -------------------------------------------------------------------------


def test_item_source_requires_unique_non_empty_ids():
    with pytest.raises(BadInputError, match="no items to embed"):
        ItemSource(kind="texts", location="x", ids=[], texts=[])
    with pytest.raises(BadInputError, match="id 'a' appears more than once"):
        ItemSource(kind="texts", location="x", ids=["a", "b", "a"], texts=["1", "2", "3"])


def test_fingerprint_is_stable_and_follows_ids_texts_and_paths(tmp_path):
    def source(ids=("a", "b"), texts=("x", "y"), paths=("/p/a.png", "/p/b.png")):
        return ItemSource(kind="manifest", location="m.csv", ids=list(ids), texts=list(texts), image_paths=list(paths))

    base = source().fingerprint()
    assert base.startswith("sha256:") and len(base) == len("sha256:") + 64
    assert source().fingerprint() == base
    assert source(ids=("a", "c")).fingerprint() != base
    assert source(texts=("x", "z")).fingerprint() != base
    assert source(texts=("x", None)).fingerprint() != base
    assert source(texts=("x", None)).fingerprint() != source(texts=("x", "")).fingerprint()
    assert source(paths=("/p/a.png", "/q/b.png")).fingerprint() != base
    assert source(ids=("b", "a"), texts=("y", "x"), paths=("/p/b.png", "/p/a.png")).fingerprint() != base  # order

    make_folder(tmp_path / "f", 4)
    first = image_folder(str(tmp_path / "f")).fingerprint()
    assert image_folder(str(tmp_path / "f")).fingerprint() == first
    captions = (tmp_path / "f" / "captions.jsonl").read_text().replace("a small picture of a bag.", "a bag.")
    (tmp_path / "f" / "captions.jsonl").write_text(captions)
    assert image_folder(str(tmp_path / "f")).fingerprint() != first


def test_fingerprint_of_in_memory_pixels_follows_the_pixels():
    pixels = np.zeros((2, 4, 4), np.uint8)
    one = ItemSource(kind="builtin", location="b", ids=["a", "b"], pixels=pixels, texts=["x", "y"])
    changed = pixels.copy()
    changed[1, 2, 3] = 1
    two = ItemSource(kind="builtin", location="b", ids=["a", "b"], pixels=changed, texts=["x", "y"])
    assert one.fingerprint() == ItemSource(kind="builtin", location="b", ids=["a", "b"], pixels=pixels.copy(),
                                           texts=["x", "y"]).fingerprint()
    assert one.fingerprint() != two.fingerprint()


# --- built-in Fashion-MNIST -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def fashion_test():
    return builtin_data("fashion-mnist")


def test_builtin_fashion_mnist_test_split(fashion_test):
    source = fashion_test
    assert source.kind == "builtin" and source.location == "builtin:fashion-mnist:test"
    assert len(source) == 10000 and source.modalities == ("image", "text")
    assert source.pixels.shape == (10000, 28, 28) and source.pixels.dtype == np.uint8
    assert source.labels.shape == (10000,) and set(np.unique(source.labels)) == set(range(10))
    assert np.bincount(source.labels).tolist() == [1000] * 10
    assert source.ids[0] == "fashion-mnist-test-00000" and source.ids[-1] == "fashion-mnist-test-09999"
    assert source.classes == fashion_mnist.CLASSES
    for index in (0, 1, 5, 6, 4321, 9999):
        label = int(source.labels[index])
        template = fashion_mnist.TEMPLATES[index % 6]
        assert source.texts[index] == template.format(fashion_mnist.PHRASES[label])
    assert source.texts[0] == "a photo of an ankle boot."  # the first test image is an ankle boot (label 9)
    image = source.load_image(3)
    assert image.mode == "L" and image.size == (28, 28)
    np.testing.assert_array_equal(np.asarray(image), source.pixels[3])
    assert builtin_data("fashion-mnist:test").fingerprint() == source.fingerprint()


def test_builtin_fashion_mnist_train_split_ships_with_sdetool():
    source = builtin_data("fashion-mnist:train")
    assert len(source) == 60000 and source.ids[0] == "fashion-mnist-train-00000"
    assert source.location == "builtin:fashion-mnist:train"
    assert source.origin == fashion_mnist.PACKAGED
    counts = np.bincount(source.labels, minlength=10)
    assert counts.tolist() == [6000] * 10  # Fashion-MNIST's train split is balanced


def test_fashion_mnist_refuses_a_damaged_shipped_file(tmp_path, monkeypatch):
    damaged = tmp_path / "fashion_mnist"
    damaged.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (damaged / name).write_bytes(open(os.path.join(fashion_mnist.PACKAGED, name), "rb").read())
    (damaged / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(bytes(8) + bytes(10000)))
    monkeypatch.setattr(fashion_mnist, "PACKAGED", str(damaged))
    fashion_mnist._load_packaged.cache_clear()
    try:
        with pytest.raises(BadInputError, match="damaged"):
            fashion_mnist.load("test")
    finally:
        fashion_mnist._load_packaged.cache_clear()


def test_unknown_builtin_data_lists_what_exists():
    with pytest.raises(BadInputError, match="no such built-in data; available: builtin:fashion-mnist"):
        builtin_data("mnist")
    with pytest.raises(BadInputError, match="split must be 'train' or 'test'"):
        builtin_data("fashion-mnist:valid")


def test_open_source_takes_exactly_one_source(tmp_path):
    texts = tmp_path / "t.txt"
    texts.write_text("hello\n")
    assert open_source(texts=str(texts)).ids == ["line-1"]
    with pytest.raises(BadInputError, match="--images and --texts: give one data source"):
        open_source(images=str(tmp_path), texts=str(texts))
    with pytest.raises(BadInputError, match="expected builtin:NAME; for files use --images"):
        open_source(data="fashion-mnist")
    assert open_source().location == "builtin:fashion-mnist:test"
