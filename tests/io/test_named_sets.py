"""NAME=PATH inputs and folders of shards: clip-retrieval's img_emb/ and text_emb/ read as two named sets
with the cross-modal section; given as plain shards of one set they are refused (two modalities would
merge); a folder is its files in natural name order."""

from __future__ import annotations

import json

import numpy as np
import pytest
from cli_helpers import assert_error, assert_ok, invoke

from sdetool.errors import BadInputError, UnknownKeyError
from sdetool.io.sources import folder_shards, named_spec, open_inputs

SIZES = (300, 200, 100)  # shards 0, 2 and 10: natural order puts 10 last


@pytest.fixture()
def clip_retrieval(tmp_path):
    """clip-retrieval's layout: img_emb/img_emb_{i}.npy and text_emb/text_emb_{i}.npy, float16, row-aligned."""
    rng = np.random.default_rng(3)
    image, text = [], []
    (tmp_path / "img_emb").mkdir()
    (tmp_path / "text_emb").mkdir()
    for index, rows in zip((0, 2, 10), SIZES):
        shared = rng.standard_normal((rows, 4)) @ rng.standard_normal((4, 24))
        image.append((shared + 0.2 * rng.standard_normal((rows, 24))).astype(np.float16))
        text.append((shared + 0.2 * rng.standard_normal((rows, 24))).astype(np.float16))
        np.save(tmp_path / "img_emb" / f"img_emb_{index}.npy", image[-1])
        np.save(tmp_path / "text_emb" / f"text_emb_{index}.npy", text[-1])
    return tmp_path, np.concatenate(image), np.concatenate(text)


def _read(shards) -> np.ndarray:
    parts = []
    for shard in shards:
        with shard.reader() as read:
            parts.append(np.asarray(read(0, shard.shape[0])))
    return np.concatenate(parts)


def test_named_folders_are_two_sets_in_natural_shard_order(clip_retrieval):
    root, image, text = clip_retrieval
    sets = open_inputs([f"image={root / 'img_emb'}", f"text={root / 'text_emb'}"])
    assert list(sets) == ["image", "text"]
    np.testing.assert_array_equal(_read(sets["image"]), image)
    np.testing.assert_array_equal(_read(sets["text"]), text)
    assert [shard.shape[0] for shard in sets["image"]] == list(SIZES)


def test_a_folder_lists_its_files_by_natural_name_order(clip_retrieval):
    root, _, _ = clip_retrieval
    names = [path.rsplit("/", 1)[1] for path in folder_shards(str(root / "img_emb"))]
    assert names == ["img_emb_0.npy", "img_emb_2.npy", "img_emb_10.npy"]


def test_analyze_gives_named_sets_with_the_cross_modal_section(clip_retrieval, tmp_path):
    root, image, _ = clip_retrieval
    report = tmp_path / "report.json"
    assert_ok(invoke("analyze", f"image={root / 'img_emb'}", f"text={root / 'text_emb'}", "--json", report, "-q"))
    document = json.loads(report.read_text())
    assert sorted(document["sets"]) == ["image", "text"] and "cross" in document
    assert document["sets"]["image"]["n"] == image.shape[0] == sum(SIZES)
    # the same numbers as the image set alone
    alone = tmp_path / "alone.json"
    assert_ok(invoke("analyze", f"image={root / 'img_emb'}", "--json", alone, "-q"))
    single = json.loads(alone.read_text())
    bands = single["sets"]["image"]["bands"] if "sets" in single else single["bands"]
    assert bands == document["sets"]["image"]["bands"]


def test_plain_shards_of_two_modalities_are_refused(clip_retrieval):
    root, _, _ = clip_retrieval
    result = invoke("analyze", root / "img_emb" / "img_emb_0.npy", root / "text_emb" / "text_emb_0.npy", "-q")
    assert_error(result, 2, "two modalities", "image=img_emb/ text=text_emb/")


def test_plain_and_named_inputs_do_not_mix(clip_retrieval):
    root, _, _ = clip_retrieval
    with pytest.raises(BadInputError, match="do not mix"):
        open_inputs([f"image={root / 'img_emb'}", str(root / "text_emb")])


def test_a_named_input_holds_one_set(tmp_path):
    path = tmp_path / "two.npz"
    np.savez(path, a=np.ones((10, 3)), b=np.ones((10, 3)))
    with pytest.raises(BadInputError, match="holds 2 sets"):
        open_inputs([f"image={path}"])


def test_key_selects_among_named_sets(clip_retrieval):
    root, _, _ = clip_retrieval
    sets = open_inputs([f"image={root / 'img_emb'}", f"text={root / 'text_emb'}"], keys=["text"])
    assert list(sets) == ["text"]
    with pytest.raises(UnknownKeyError, match="no input named so"):
        open_inputs([f"image={root / 'img_emb'}"], keys=["audio"])


def test_an_empty_folder_is_bad_input(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInputError, match="no embedding files"):
        open_inputs([str(tmp_path / "empty")])


def test_an_existing_path_with_an_equals_sign_is_a_path(tmp_path):
    path = tmp_path / "a=b.npy"
    np.save(path, np.ones((5, 2)))
    assert named_spec(str(path)) == (None, str(path))
    assert named_spec("image=x.npy") == ("image", "x.npy")


def test_plot_and_compare_take_named_inputs(clip_retrieval, tmp_path):
    root, _, _ = clip_retrieval
    assert_ok(invoke("plot", "spectrum", f"image={root / 'img_emb'}", f"text={root / 'text_emb'}",
                     "--out", tmp_path / "s.png", "-q"))
    assert (tmp_path / "s.png").stat().st_size > 0
    out = tmp_path / "c.json"
    assert_ok(invoke("compare", f"image={root / 'img_emb'}", f"image={root / 'text_emb'}", "--json", out, "-q"))
    assert list(json.loads(out.read_text())["sets"]) == ["image"]
