"""A checkpoint that does not cover its model is refused, naming the weights; --allow-missing-weights goes
on and records them. sdetool never changes transformers' logging for the process that imports it.

The models are real transformers CLIPModels, built and saved here (no hub: a fake boundary is not needed)."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from cli_helpers import assert_error, assert_ok, invoke
from extract_fixtures import build_tiny_clip

from sdetool.errors import UnknownModelError
from sdetool.extract.models import load_model


def _drop_weights(folder: str, *names: str) -> None:
    from safetensors.torch import load_file, save_file

    path = os.path.join(folder, "model.safetensors")
    tensors = load_file(path)
    for name in names:
        assert name in tensors, sorted(tensors)[:10]
        del tensors[name]
    save_file(tensors, path, metadata={"format": "pt"})


@pytest.fixture(scope="module")
def clip_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("weights")
    whole = build_tiny_clip(root / "whole")
    partial = build_tiny_clip(root / "partial")
    _drop_weights(partial, "visual_projection.weight")
    extra = build_tiny_clip(root / "extra")
    from safetensors.torch import load_file, save_file

    path = os.path.join(extra, "model.safetensors")
    tensors = load_file(path)
    tensors["surplus.weight"] = tensors["visual_projection.weight"].clone()
    save_file(tensors, path, metadata={"format": "pt"})
    return {"whole": whole, "partial": partial, "extra": extra}


def _texts(tmp_path) -> str:
    path = tmp_path / "texts.txt"
    path.write_text("a photo of a cat\na red car\na dog on grass\n")
    return str(path)


def test_a_whole_checkpoint_loads_and_records_nothing(clip_folders):
    encoder = load_model("hf:" + clip_folders["whole"])
    assert "weights_not_loaded" not in encoder.provenance


def test_a_missing_projection_is_refused_by_name(clip_folders):
    with pytest.raises(UnknownModelError, match=r"1 missing \(visual_projection\.weight\)") as caught:
        load_model("hf:" + clip_folders["partial"])
    assert "--allow-missing-weights" in str(caught.value)


def test_an_unexpected_weight_is_refused_by_name(clip_folders):
    with pytest.raises(UnknownModelError, match=r"unexpected \(surplus\.weight\)"):
        load_model("hf:" + clip_folders["extra"])


def test_extract_refuses_with_one_line_and_writes_nothing(clip_folders, tmp_path):
    out = tmp_path / "emb.h5"
    result = invoke("extract", "--model", "hf:" + clip_folders["partial"], "--texts", _texts(tmp_path),
                    "--out", out, "-q")
    assert_error(result, 2, "visual_projection.weight", "--allow-missing-weights")
    assert not out.exists() and not os.path.exists(str(out) + ".partial")


def test_allow_missing_weights_goes_on_and_the_store_says_which(clip_folders, tmp_path):
    out = tmp_path / "emb.h5"
    assert_ok(invoke("extract", "--model", "hf:" + clip_folders["partial"], "--texts", _texts(tmp_path),
                     "--out", out, "--allow-missing-weights", "-q"))
    import h5py

    with h5py.File(out, "r") as handle:
        recorded = {**dict(handle.attrs), **dict(handle["text"].attrs)}
    found = [value for key, value in recorded.items() if key.endswith("weights_not_loaded")]
    assert found, sorted(recorded)
    assert json.loads(found[0]) == {"missing": ["visual_projection.weight"]}
    with h5py.File(out, "r") as handle:
        assert np.isfinite(handle["text/embeddings"][...]).all()


def test_loading_leaves_transformers_logging_as_it_was(clip_folders):
    from transformers.utils import logging

    logging.set_verbosity_info()
    logging.enable_progress_bar()
    try:
        load_model("hf:" + clip_folders["whole"])
        assert logging.get_verbosity() == logging.INFO
        assert logging.is_progress_bar_enabled()
    finally:
        logging.set_verbosity_warning()


def test_importing_sdetool_changes_no_logging():
    import subprocess
    import sys

    code = ("from transformers.utils import logging; before = logging.get_verbosity(); import sdetool.api; "
            "from sdetool.extract.models import load_model; load_model('builtin:lit-fmnist'); "
            "print(before == logging.get_verbosity(), logging.is_progress_bar_enabled())")
    output = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert output.split() == ["True", "True"]
