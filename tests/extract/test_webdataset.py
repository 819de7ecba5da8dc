"""``extract --webdataset``: tar shards written here with ``tarfile`` in webdataset's layout (key.ext members),
brace patterns expanded as webdataset expands them; the images embed as the same files in a folder do."""

from __future__ import annotations

import io
import json
import tarfile

import h5py
import numpy as np
import pytest
from cli_helpers import assert_error, assert_ok, invoke
from extract_fixtures import image_folder, write_truncated_jpeg

pytest.importorskip("webdataset")  # an optional extra (sdetool[webdataset]); the test extra installs it

COUNT = 9


def _add(archive: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    archive.addfile(info, io.BytesIO(data))


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Three shards of three samples: jpg-less PNG images with txt captions, and in shard 2 a json caption."""
    from sdetool.extract.data.items import image_folder as folder_source

    root = tmp_path_factory.mktemp("wds")
    image_folder(root / "images", COUNT)
    source = folder_source(str(root / "images"))
    (root / "shards").mkdir()
    for shard in range(3):
        with tarfile.open(root / "shards" / f"{shard:05d}.tar", "w") as archive:
            for index in range(shard * 3, shard * 3 + 3):
                key = f"sample{index:04d}"
                with open(source.image_paths[index], "rb") as handle:
                    _add(archive, f"{key}.png", handle.read())
                if shard == 2:
                    _add(archive, f"{key}.json", json.dumps({"caption": source.texts[index]}).encode())
                else:
                    _add(archive, f"{key}.txt", source.texts[index].encode())
    return root, source


def _read(path):
    with h5py.File(path, "r") as handle:
        return {key: handle[f"{key}/embeddings"][...] for key in ("image", "text")}, \
            [v.decode() for v in handle["image/ids"][...]]


def test_brace_pattern_shards_embed_like_the_folder(shards, tmp_path):
    root, _ = shards
    pattern = str(root / "shards" / "{00000..00002}.tar")
    assert_ok(invoke("extract", "--webdataset", pattern, "--out", tmp_path / "wds.h5", "-q"))
    assert_ok(invoke("extract", "--images", root / "images", "--out", tmp_path / "folder.h5", "-q"))
    (wds, ids), (folder, _) = _read(tmp_path / "wds.h5"), _read(tmp_path / "folder.h5")
    assert ids == [f"sample{i:04d}" for i in range(COUNT)]
    np.testing.assert_allclose(wds["image"], folder["image"], atol=1e-6)
    np.testing.assert_allclose(wds["text"], folder["text"], atol=1e-6)  # txt and json captions alike


def test_a_list_of_tars_and_a_resumed_run(shards, tmp_path):
    root, _ = shards
    listed = "::".join(str(root / "shards" / f"{i:05d}.tar") for i in range(3))
    out = tmp_path / "list.h5"
    assert_ok(invoke("extract", "--webdataset", listed, "--out", out, "--chunk-items", "4", "-q"))
    again = invoke("extract", "--webdataset", listed, "--out", out, "--chunk-items", "4", "-q")
    assert again.exit_code == 0
    assert _read(out)[1] == [f"sample{i:04d}" for i in range(COUNT)]


def test_a_bad_member_and_a_sample_without_image_are_failed_items(tmp_path, shards):
    root, source = shards
    path = tmp_path / "mixed.tar"
    write_truncated_jpeg(tmp_path / "broken.jpg")
    with tarfile.open(path, "w") as archive:
        with open(source.image_paths[0], "rb") as handle:
            _add(archive, "good.png", handle.read())
        _add(archive, "good.txt", b"a photo of a sneaker.")
        _add(archive, "broken.jpg", (tmp_path / "broken.jpg").read_bytes())
        _add(archive, "broken.txt", b"a broken photo.")
        _add(archive, "textonly.txt", b"no picture here.")
    assert_ok(invoke("extract", "--webdataset", path, "--out", tmp_path / "m.h5", "-q"))
    with h5py.File(tmp_path / "m.h5", "r") as handle:
        failed = {row["id"].decode(): row["reason"].decode() for row in handle["image/failed"][...]}
        assert [v.decode() for v in handle["image/ids"][...]] == ["good"]
    assert "corrupt image" in failed["broken"] and "no jpg, jpeg, png or webp" in failed["textonly"]


def test_a_file_that_is_not_a_tar_is_one_line(tmp_path):
    path = tmp_path / "fake.tar"
    path.write_bytes(b"this is not a tar archive at all" * 40)
    assert_error(invoke("extract", "--webdataset", path, "--out", tmp_path / "x.h5", "-q"), 2, "not a tar file")
    assert_error(invoke("extract", "--webdataset", tmp_path / "none-{0..1}.tar", "--out", tmp_path / "x.h5", "-q"), 2,
                 "no such file")
    assert not (tmp_path / "x.h5").exists()
