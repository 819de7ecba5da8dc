"""Model backends: spec parsing, ``st:`` pooling against a manual reference, ``hf:`` against the model's own
features (a tiny random CLIP), the built-in LiT model's card numbers, and the optional open_clip backend."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from extract_fixtures import TINY_CLIP, build_tiny_clip, minilm_folder, write_image

import sdetool.extract.models
from sdetool.errors import UnknownModelError
from sdetool.extract.models import BACKENDS, BUILTINS, ModelSpec, backend_status, load_model, parse_spec

LIT_CARD = os.path.join(os.path.dirname(sdetool.extract.models.__file__), "lit_fmnist.json")
SENTENCES = ["a photo of a sneaker.", "hi", "a much longer sentence about a grey wool coat hanging on a door.", "hi"]


def _open_clip_imports() -> bool:
    try:
        import open_clip  # noqa: F401
    except Exception:  # ImportError, or torchvision failing to register its operators
        return False
    return True


OPEN_CLIP = _open_clip_imports()

# --- parse_spec -----------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, expected", [
    ("hf:openai/clip-vit-base-patch32", ModelSpec("hf", "openai/clip-vit-base-patch32")),
    ("hf:google/siglip-base-patch16-224@a1b2c3", ModelSpec("hf", "google/siglip-base-patch16-224", "a1b2c3")),
    ("hf:/models/clip", ModelSpec("hf", "/models/clip")),
    ("st:/models/minilm", ModelSpec("st", "/models/minilm")),
    ("st:sentence-transformers/all-MiniLM-L6-v2@main", ModelSpec("st", "sentence-transformers/all-MiniLM-L6-v2", "main")),
    ("open_clip:ViT-B-32@laion2b_s34b_b79k", ModelSpec("open_clip", "ViT-B-32", "laion2b_s34b_b79k")),
    ("open_clip:ViT-B-32", ModelSpec("open_clip", "ViT-B-32")),
    ("builtin:lit-fmnist", ModelSpec("builtin", "lit-fmnist")),
])
def test_parse_spec_splits_backend_name_and_revision(spec, expected):
    parsed = parse_spec(spec)
    assert parsed == expected
    assert str(parsed) == spec


@pytest.mark.parametrize("spec", ["", "clip", "lit-fmnist", "torch:resnet", "hf:", "st:", "HF:org/name",
                                  "builtin:", "builtin:clip", "builtin:lit-fmnist@v2"])
def test_parse_spec_refuses_bad_specs_and_lists_what_exists(spec):
    with pytest.raises(UnknownModelError) as caught:
        parse_spec(spec)
    message = str(caught.value)
    assert message.startswith(f"--model {spec!r}: ")
    assert "backends: hf:, st:, open_clip:, builtin:" in message
    assert "built-in models: builtin:lit-fmnist" in message
    assert "\n" not in message


# --- st: (the real all-MiniLM-L6-v2) ----------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    return load_model("st:" + minilm_folder())


def test_st_minilm_reads_its_sentence_transformers_metadata(minilm):
    assert minilm.backend == "st" and minilm.dim == 384 and minilm.modalities == ("text",)
    assert minilm.provenance["pooling"] == "mean" and minilm.provenance["model_normalizes"] is True
    assert minilm.provenance["max_length"] == 256 and minilm.provenance["library"] == "sentence-transformers"
    assert minilm.provenance["revision"].startswith("sha256:")
    assert minilm.has_tokens is False
    with pytest.raises(UnknownModelError, match="no image tower"):
        minilm.image_transform()


def test_st_mean_pooling_equals_a_manual_masked_mean(minilm):
    from transformers import AutoModel, AutoTokenizer

    folder = minilm_folder()
    tokenizer, model = AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        embeddings = minilm.encode_texts(SENTENCES).numpy()
        expected = []
        for sentence in SENTENCES:  # one at a time: no padding at all
            batch = tokenizer([sentence], return_tensors="pt")
            states = model(**batch).last_hidden_state[0].numpy().astype(np.float64)  # (T, 384)
            mask = batch["attention_mask"][0].numpy().astype(bool)
            mean = states[mask].mean(axis=0)
            expected.append(mean / np.linalg.norm(mean))
    assert embeddings.shape == (4, 384) and embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(embeddings, np.array(expected), atol=1e-5)
    np.testing.assert_array_equal(embeddings[1], embeddings[3])  # the same text in the same batch


def test_pool_modes_on_known_tensors():
    from sdetool.extract.models.st import pool

    states = torch.arange(24, dtype=torch.float32).reshape(2, 3, 4)  # (B=2, T=3, c=4)
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    mean = pool(states, mask, "mean")
    torch.testing.assert_close(mean[0], (states[0, 0] + states[0, 1]) / 2)
    torch.testing.assert_close(mean[1], states[1].mean(dim=0))
    torch.testing.assert_close(pool(states, mask, "cls"), states[:, 0])
    torch.testing.assert_close(pool(-states, mask, "max")[0], -states[0, 0])  # the padded token never wins
    torch.testing.assert_close(pool(states, mask, "max")[1], states[1, 2])


def test_sentence_config_from_folder_metadata(tmp_path):
    from sdetool.extract.models.st import SentenceConfig, read_sentence_config

    assert read_sentence_config(str(tmp_path)) == SentenceConfig("mean", False, 256)
    (tmp_path / "modules.json").write_text(json.dumps([
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]))
    (tmp_path / "1_Pooling").mkdir()
    (tmp_path / "1_Pooling" / "config.json").write_text(json.dumps(
        {"pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False, "pooling_mode_max_tokens": True}))
    (tmp_path / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 128}))
    assert read_sentence_config(str(tmp_path)) == SentenceConfig("max", False, 128)
    assert read_sentence_config(minilm_folder()) == SentenceConfig("mean", True, 256)


def test_st_folder_that_is_not_a_model_is_refused(tmp_path):
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(UnknownModelError, match="is not a transformers model folder"):
        load_model(f"st:{tmp_path}")


def test_st_missing_folder_says_it_does_not_exist(tmp_path):
    with pytest.raises(UnknownModelError) as caught:
        load_model(f"st:{tmp_path}/missing")
    assert "does not exist" in str(caught.value) and "hf:" not in str(caught.value)


# --- hf: (a tiny random CLIP saved to a folder) ---------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """(folder, sdetool encoder, the reference CLIPModel loaded on its own)."""
    from transformers import CLIPModel

    folder = build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))
    return folder, load_model("hf:" + folder), CLIPModel.from_pretrained(folder).eval()


def test_hf_tiny_clip_loads_with_its_settings(tiny_clip):
    folder, encoder, _ = tiny_clip
    assert encoder.backend == "hf" and encoder.spec == "hf:" + folder
    assert encoder.dim == TINY_CLIP["projection_dim"]
    assert encoder.modalities == ("image", "text") and encoder.has_tokens
    assert encoder.provenance["architecture"] == "CLIPModel"
    from sdetool.extract.models.base import folder_fingerprint

    assert encoder.provenance["revision"] == folder_fingerprint(folder)
    settings = json.loads(encoder.provenance["image_preprocessing"])
    assert settings["crop_size"] == {"height": 32, "width": 32} and settings["size"] == {"shortest_edge": 32}


def test_hf_image_embeddings_are_the_models_own_features(tiny_clip):
    _, encoder, reference = tiny_clip
    pixels = torch.from_numpy(np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32))
    with torch.no_grad():
        output = encoder.encode_images(pixels)
        expected = reference.get_image_features(pixel_values=pixels).pooler_output
    assert output.tokens is None
    assert tuple(output.embeddings.shape) == (3, TINY_CLIP["projection_dim"])
    torch.testing.assert_close(output.embeddings, expected, rtol=0, atol=1e-6)


def test_hf_text_embeddings_are_the_models_own_features(tiny_clip):
    folder, encoder, reference = tiny_clip
    from transformers import AutoTokenizer

    batch = AutoTokenizer.from_pretrained(folder)(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        embeddings = encoder.encode_texts(SENTENCES)
        expected = reference.get_text_features(input_ids=batch["input_ids"],
                                               attention_mask=batch["attention_mask"]).pooler_output
    assert tuple(embeddings.shape) == (4, TINY_CLIP["projection_dim"])
    torch.testing.assert_close(embeddings, expected, rtol=0, atol=1e-6)


def test_hf_image_transform_is_the_models_processor(tiny_clip, tmp_path):
    folder, encoder, _ = tiny_clip
    from PIL import Image
    from transformers import CLIPImageProcessor

    write_image(tmp_path / "x.png", seed=1, size=(40, 50))
    image = Image.open(tmp_path / "x.png")
    pixels = encoder.image_transform()(image)
    assert tuple(pixels.shape) == (3, 32, 32) and pixels.dtype == torch.float32
    expected = CLIPImageProcessor.from_pretrained(folder)(images=image.convert("RGB"), return_tensors="pt")["pixel_values"][0]
    torch.testing.assert_close(pixels, expected, rtol=0, atol=1e-6)
    import pickle

    assert torch.equal(pickle.loads(pickle.dumps(encoder.image_transform()))(image), pixels)  # DataLoader workers


def test_hf_token_grid_is_the_vision_states_without_cls(tiny_clip):
    _, encoder, reference = tiny_clip
    pixels = torch.from_numpy(np.random.default_rng(1).standard_normal((2, 3, 32, 32)).astype(np.float32))
    with torch.no_grad():
        output = encoder.encode_images(pixels, tokens=True)
        states = reference.vision_model(pixel_values=pixels).last_hidden_state  # (B, 1 + 16, hidden)
        expected_embeddings = reference.get_image_features(pixel_values=pixels).pooler_output
    side = TINY_CLIP["image_size"] // TINY_CLIP["patch_size"]
    assert tuple(output.tokens.shape) == (2, side, side, TINY_CLIP["hidden"])
    torch.testing.assert_close(output.tokens, states[:, 1:].reshape(2, side, side, -1), rtol=0, atol=1e-6)
    torch.testing.assert_close(output.embeddings, expected_embeddings, rtol=0, atol=1e-6)


def test_hf_hub_id_offline_says_to_pass_a_local_folder(monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once, at import
    with pytest.raises(UnknownModelError) as caught:
        load_model("hf:nobody/no-such-model")
    message = str(caught.value)
    assert message.startswith("hf:nobody/no-such-model: 'nobody/no-such-model' is not a local folder")
    assert "pass the local folder" in message and "--model hf:/path/to/folder" in message
    assert "\n" not in message


def test_hf_missing_or_non_model_folder_is_refused(tmp_path):
    with pytest.raises(UnknownModelError, match=r"^hf:/.*/missing: folder /.*/missing does not exist$"):
        load_model(f"hf:{tmp_path}/missing")
    (tmp_path / "readme.txt").write_text("nothing here")
    with pytest.raises(UnknownModelError, match="is not a transformers model folder"):
        load_model(f"hf:{tmp_path}")


# --- builtin:lit-fmnist ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def lit():
    return load_model("builtin:lit-fmnist")


@pytest.fixture(scope="module")
def card():
    with open(LIT_CARD) as handle:
        return json.load(handle)


def test_lit_loads_offline_with_its_provenance(lit, card):
    assert lit.spec == "builtin:lit-fmnist" and lit.backend == "builtin"
    assert lit.dim == 256 and lit.modalities == ("image", "text") and lit.has_tokens
    assert lit.provenance["revision"] == card["sha256"]
    assert json.loads(lit.provenance["recipe"]) == card["recipe"]
    from sdetool.finetune.train_lit import tensor_digest

    assert tensor_digest(lit.network.state_dict()) == card["sha256"]  # the weights are the ones the card describes


def test_lit_encodes_images_tokens_and_texts(lit):
    from sdetool.extract.data.fashion_mnist import load

    images = load("test").images[:5]
    transform = lit.image_transform()
    from PIL import Image

    pixels = torch.stack([transform(Image.fromarray(image, mode="L")) for image in images])  # (5, 1, 28, 28)
    assert tuple(pixels.shape) == (5, 1, 28, 28)
    with torch.no_grad():
        output = lit.encode_images(pixels, tokens=True)
        plain = lit.encode_images(pixels)
        texts = lit.encode_texts(["a photo of a sneaker.", "a bag"])
    assert tuple(output.embeddings.shape) == (5, 256) and tuple(output.tokens.shape) == (5, 7, 7, 128)
    assert plain.tokens is None
    torch.testing.assert_close(plain.embeddings, output.embeddings)
    # The embedding is the projection of the token grid's average.
    torch.testing.assert_close(lit.network.image_projection(output.tokens.mean(dim=(1, 2))), output.embeddings,
                               rtol=0, atol=1e-5)
    assert tuple(texts.shape) == (2, 256)


def test_lit_zero_shot_accuracy_matches_its_card(lit, card):
    from sdetool.extract.data.fashion_mnist import load
    from sdetool.finetune.train_lit import caption_features, zero_shot_accuracy

    test = load("test")
    features = caption_features(lit.text_tower)
    assert tuple(features.shape) == (10, 6, 384)
    accuracy = zero_shot_accuracy(lit.network, features, test.images, test.labels)
    assert accuracy == pytest.approx(card["results"]["zero_shot_accuracy_test"], abs=0.002)


def test_lit_short_training_run_learns():
    from sdetool.finetune.train_lit import Recipe, train

    threads = torch.get_num_threads()
    try:  # 32 steps of 64 on the first 2048 train images: well above the 10 % of chance
        network, results = train(Recipe(train_limit=2048, epochs=1, batch_size=64, learning_rate=5e-3, seed=0),
                                 log=lambda line: None)
    finally:
        torch.set_num_threads(threads)
    assert results["steps"] == 32 and results["train_images"] == 2048
    assert np.isfinite(results["final_loss"])
    assert results["zero_shot_accuracy_test"] > 0.3


# --- open_clip (optional) and the backend table ------------------------------------------------------


@pytest.mark.skipif(OPEN_CLIP, reason="open_clip imports here; this checks the refusal when it does not")
def test_open_clip_unavailable_is_refused_with_its_reason():
    with pytest.raises(UnknownModelError, match="the open_clip backend is unavailable here: .*pip install open_clip_torch"):
        load_model("open_clip:ViT-B-32")


@pytest.mark.skipif(not OPEN_CLIP, reason="open_clip does not import here")
def test_open_clip_random_model_embeds_both_modalities():
    encoder = load_model("open_clip:ViT-B-32")  # no pretrained tag: random weights, nothing downloaded
    assert encoder.backend == "open_clip" and encoder.modalities == ("image", "text") and encoder.dim == 512
    with torch.no_grad():
        assert tuple(encoder.encode_texts(["a cat"]).shape) == (1, 512)


def test_backend_status_lists_every_backend_and_builtin():
    rows = {row["name"]: row for row in backend_status()}
    assert list(rows) == [b + ":" for b in BACKENDS] + ["builtin:" + n for n in BUILTINS]
    assert rows["hf:"]["available"] and rows["st:"]["available"] and rows["builtin:"]["available"]
    assert rows["builtin:lit-fmnist"]["available"] and rows["builtin:lit-fmnist"]["kind"] == "built-in model"
    for row in rows.values():
        assert row["description"] and (row["available"] or row["reason"])
    assert rows["open_clip:"]["available"] is OPEN_CLIP
    if not OPEN_CLIP:
        assert "open_clip" in rows["open_clip:"]["reason"]  # e.g. No module named 'open_clip'
