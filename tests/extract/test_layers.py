"""``extract --layers``: each layer's pooled hidden state as an ordinary set, checked against the real modules.

- The built-in model: the CNN stages of the image tower (globally average-pooled) and the MiniLM layers; the
  final sets are those of an extraction without ``--layers`` (the same forward pass).
- ``hf:`` (a tiny CLIP built here, no hub): the last layer pooled is the tower's own ``pooler_output``; the
  final set equals ``get_image_features`` / ``get_text_features``.
- ``st:`` (all-MiniLM-L6-v2 from its PyPI package): each layer through the model's own Pooling module; the final
  set equals ``SentenceTransformer.encode`` to 1e-5.
- ``plot layers`` and ``compare`` read the layer sets; bad input is one line.
"""

from __future__ import annotations

import json
import os

import h5py
import numpy as np
import pytest
import torch
from cli_helpers import assert_error, assert_ok, invoke
from extract_fixtures import build_tiny_clip, image_folder, minilm_folder

from sdetool.io import store

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    image_folder(root, 12)
    return str(root)


def _sets(path: str) -> dict:
    matrices = store.open_matrices(path)
    return {key: matrix for key, matrix in matrices.items()}


def _array(path: str, key: str) -> np.ndarray:
    with h5py.File(path, "r") as handle:
        return handle[f"{key}/embeddings"][()]


def _attrs(path: str, key: str) -> dict:
    with h5py.File(path, "r") as handle:
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in handle[key].attrs.items()}


@pytest.fixture(scope="module")
def builtin_layers(images, tmp_path_factory):
    root = tmp_path_factory.mktemp("builtin")
    plain, layered = str(root / "plain.h5"), str(root / "layers.h5")
    common = ["extract", "--model", "builtin:lit-fmnist", "--images", images, "--device", "cpu", "-q"]
    assert_ok(invoke([*common, "--out", plain]))
    result = assert_ok(invoke([*common, "--out", layered, "--layers", "all", "--json", "-"]))
    return {"plain": plain, "layers": layered, "document": json.loads(result.stdout)}


def test_builtin_layers_are_ordinary_sets_beside_the_final_ones(builtin_layers):
    path = builtin_layers["layers"]
    sets = _sets(path)
    assert set(sets) == {"image", "text", "image_L0", "image_L1", "image_L2", *(f"text_L{i}" for i in range(7))}
    assert [sets[f"image_L{i}"].shape[1] for i in range(3)] == [32, 64, 128]
    assert all(sets[f"text_L{i}"].shape[1] == 384 for i in range(7))
    assert builtin_layers["document"]["dims"]["image_L1"] == 64
    attrs = _attrs(path, "image_L1")
    assert attrs["layer"] == 1 and attrs["layer_name"] == "image_tower[4:8]" and attrs["modality"] == "image"
    assert "average" in attrs["pooling"] and attrs["model"] == "builtin:lit-fmnist"
    assert _attrs(path, "text_L0")["layer_name"] == "embeddings"
    # the final sets come from the same forward pass as an extraction without --layers
    for key in ("image", "text"):
        np.testing.assert_array_equal(_array(path, key), _array(builtin_layers["plain"], key))


def test_builtin_image_stages_are_the_towers_own_modules(builtin_layers, images):
    from sdetool.extract.data.items import ItemSource  # noqa: F401  (the folder is read by extract itself)
    from sdetool.extract.models.lit import LiTEncoder

    encoder = LiTEncoder()
    with h5py.File(builtin_layers["layers"], "r") as handle:
        ids = [i.decode() for i in handle["image/ids"][()]]
    transform = encoder.image_transform()
    from PIL import Image

    pixels = torch.stack([transform(Image.open(os.path.join(images, item))) for item in ids])
    with torch.no_grad():
        state = pixels
        expected = []
        for module in encoder.network.image_tower:
            state = module(state)
            if isinstance(module, torch.nn.MaxPool2d):
                expected.append(state.mean(dim=(2, 3)))
        expected.append(state.mean(dim=(2, 3)))  # the last stage has no pooling after it
    for index in range(3):
        np.testing.assert_allclose(_array(builtin_layers["layers"], f"image_L{index}"), expected[index].numpy(),
                                   rtol=1e-5, atol=1e-6)


def test_hf_layers_pool_as_the_tower_pools_its_last_layer(tmp_path, images):
    from sdetool.extract.models.hf import HFDualEncoder

    folder = build_tiny_clip(tmp_path / "clip")
    out = str(tmp_path / "clip.h5")
    assert_ok(invoke(["extract", "--model", f"hf:{folder}", "--images", images, "--out", out, "--layers", "0,2",
                      "--device", "cpu", "-q"]))
    assert {"image_L0", "image_L2", "text_L0", "text_L2"} <= set(_sets(out))
    encoder = HFDualEncoder(f"hf:{folder}", folder)
    pixels = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        output = encoder.encode_images_layers(pixels, [0, 2], tokens=True)
        reference = encoder.model.vision_model(pixel_values=pixels)
        torch.testing.assert_close(output.layers[2], reference.pooler_output, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(output.embeddings, encoder.encode_images(pixels).embeddings, rtol=0, atol=0)
        texts = ["a photo of a cat", "two dogs", "x"]
        final, hidden = encoder.encode_texts_layers(texts, [2])
        text_reference = encoder.model.text_model(**encoder._text_batch(texts)).pooler_output
        torch.testing.assert_close(hidden[2], text_reference, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(final, encoder.encode_texts(texts), rtol=0, atol=0)
    assert encoder.layer_names("image")[0] == "vision_model.embeddings"
    assert _attrs(out, "text_L2")["layer_name"] == "text_model.encoder.layers.1"


def test_st_layers_go_through_the_models_own_pooling(tmp_path):
    from sentence_transformers import SentenceTransformer

    folder = minilm_folder()
    texts = tmp_path / "texts.txt"
    lines = ["a photo of a cat", "a dog running in the park today", "red", "a long sentence about nothing at all"]
    texts.write_text("\n".join(lines) + "\n")
    out = str(tmp_path / "st.h5")
    assert_ok(invoke(["extract", "--model", f"st:{folder}", "--texts", texts, "--out", out, "--layers", "all",
                      "--device", "cpu", "-q"]))
    model = SentenceTransformer(folder, device="cpu")
    np.testing.assert_allclose(_array(out, "text"), model.encode(lines), atol=1e-5)
    model[0].auto_model.config.output_hidden_states = True
    features = model.preprocess(lines) if hasattr(model, "preprocess") else model.tokenize(lines)
    with torch.no_grad():
        output = model(features)
    for index in (0, 3, 6):
        pooled = model[1](dict(output, token_embeddings=output["all_layer_embeddings"][index]))["sentence_embedding"]
        np.testing.assert_allclose(_array(out, f"text_L{index}"), pooled.numpy(), atol=1e-5)
    assert "Pooling" in _attrs(out, "text_L3")["pooling"]


def test_plot_layers_and_compare_read_the_layer_sets(builtin_layers, tmp_path):
    figure = tmp_path / "layers.png"
    assert_ok(invoke(["plot", "layers", builtin_layers["layers"], builtin_layers["layers"], "--out", figure, "-q"]))
    assert figure.stat().st_size > 10_000
    from sdetool.api import plot

    drawn = plot("layers", [builtin_layers["layers"]])
    titles = {axis.get_title() for axis in drawn.axes}
    assert {"image: energy share (%)", "image: effective rank", "text: components"} <= titles
    result = assert_ok(invoke(["compare", builtin_layers["layers"], builtin_layers["layers"], "--json", "-", "-q"]))
    assert {"image_L0", "text_L6"} <= set(json.loads(result.stdout)["sets"])


def test_bad_layer_requests_are_one_line(images, tmp_path):
    common = ["extract", "--model", "builtin:lit-fmnist", "--images", images, "--device", "cpu"]
    line = assert_error(invoke([*common, "--out", tmp_path / "a.h5", "--layers", "0,9"]), 2, "--layers 0,9",
                        "image layers 0..2")
    assert "9 is not one" in line
    assert_error(invoke([*common, "--out", tmp_path / "b.h5", "--layers", "first"]), 2, "--layers 'first'",
                 "'all' or layer indices")
    assert not os.listdir(tmp_path)


def test_a_backend_without_hidden_states_is_named():
    from sdetool.errors import UnknownModelError
    from sdetool.extract.models.base import Encoder

    class Plain(Encoder):
        def to(self, device):
            return self

        def encode_texts(self, texts):
            return torch.zeros(len(texts), 2)

    with pytest.raises(UnknownModelError, match="the open_clip backend cannot give hidden states"):
        Plain(spec="open_clip:x", backend="open_clip", dim=2, modalities=("text",)).layer_names("text")


def test_plot_layers_refuses_layers_of_different_models(tmp_path):
    path = str(tmp_path / "mixed.h5")
    rng = np.random.default_rng(0)
    store.write_set(path, "image_L0", rng.standard_normal((60, 8)).astype(np.float32), mode="w",
                    attrs={"model": "hf:/models/a"})
    store.write_set(path, "image_L1", rng.standard_normal((60, 8)).astype(np.float32), attrs={"model": "hf:/models/b"})
    assert_error(invoke(["plot", "layers", path, "--out", tmp_path / "p.png"]), 2, "different models",
                 "hf:/models/a", "hf:/models/b")
    assert_error(invoke(["plot", "layers", builtin_free(tmp_path), "--out", tmp_path / "q.png"]), 2,
                 "no layer sets")


def builtin_free(tmp_path) -> str:
    path = str(tmp_path / "plain.h5")
    store.write_set(path, "image", np.random.default_rng(1).standard_normal((40, 6)).astype(np.float32), mode="w")
    return path


def test_st_prompts_left_out_of_pooling_stay_out_with_layers(tmp_path):
    """A prompted model whose Pooling leaves the prompt out (include_prompt=False): the final set is encode's,
    with and without --layers (the prompt's length reaches the Pooling module)."""
    from sentence_transformers import SentenceTransformer, models

    transformer = models.Transformer(minilm_folder())
    width = getattr(transformer, "get_embedding_dimension", None) or transformer.get_word_embedding_dimension
    pooling = models.Pooling(width(), "mean", include_prompt=False)
    model = SentenceTransformer(modules=[transformer, pooling], prompts={"query": "query: "},
                                default_prompt_name="query", device="cpu")
    folder = str(tmp_path / "prompted")
    model.save(folder)
    texts = tmp_path / "texts.txt"
    lines = ["a photo of a cat", "a dog running in the park today", "red"]
    texts.write_text("\n".join(lines) + "\n")
    plain, layered = str(tmp_path / "plain.h5"), str(tmp_path / "layers.h5")
    common = ["extract", "--model", f"st:{folder}", "--texts", texts, "--device", "cpu", "-q"]
    assert_ok(invoke([*common, "--out", plain]))
    assert_ok(invoke([*common, "--out", layered, "--layers", "6"]))
    expected = SentenceTransformer(folder, device="cpu").encode(lines)
    np.testing.assert_allclose(_array(plain, "text"), expected, atol=1e-5)
    np.testing.assert_allclose(_array(layered, "text"), expected, atol=1e-5)
    np.testing.assert_allclose(_array(layered, "text_L6"), expected, atol=1e-5)  # no Dense, no Normalize here


def test_an_hf_tower_that_pools_otherwise_is_refused():
    from sdetool.errors import UnknownModelError
    from sdetool.extract.models.hf import HFLayers

    normed = torch.randn(2, 5, 4)
    with pytest.raises(UnknownModelError, match="pools its last layer otherwise"):
        HFLayers._position(normed, normed.mean(dim=1), "hf:/models/meanpooled")
    assert HFLayers._position(normed, normed[:, 3], "hf:x").tolist() == [3, 3]
