"""``run:FOLDER``: the dual encoder a ``sdetool finetune --target model`` run produced.

One real run of the built-in model (3 steps of 64 pairs, 300 held-out pairs) is shared by the module.
Its encoder is loaded through :func:`sdetool.extract.models.load_model` and checked tensor by tensor against
the run's ``model.safetensors`` and the base model; ``sdetool extract --model run:RUN`` embeds a small
captioned image folder, and the store is checked against the loaded encoder and for its provenance.
Broken run folders (no config, a head run, unfinished, weights of another model) are refused by the
CLI with one line and exit 2. Torch runs on one thread (the machine is shared).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

import h5py
import numpy as np
import pytest
import torch
from cli_helpers import assert_error as _assert_error
from cli_helpers import assert_ok as _assert_ok
from cli_helpers import invoke as _invoke
from extract_fixtures import image_folder
from safetensors.torch import load_file, save_file

from sdetool.extract.models import DEFAULT_MODEL, ModelSpec, load_model, parse_spec
from sdetool.extract.models.parts import copy_state, encoder_modules
from sdetool.io import store

pytestmark = pytest.mark.usefixtures("one_torch_thread")

N_IMAGES = 12


def _sha256(path) -> str:
    """The fingerprint of a small file, computed here: sha256 of "<size>\\0" and the bytes."""
    digest = hashlib.sha256(f"{os.path.getsize(path)}\0".encode())
    with open(path, "rb") as handle:
        digest.update(handle.read())
    return "sha256:" + digest.hexdigest()


def _read(path, key) -> np.ndarray:
    matrix = store.open_matrices(str(path))[key]
    with matrix.reader() as read:
        return read(0, matrix.shape[0])


def _copy_run(run, destination) -> str:
    shutil.copytree(run, destination)
    return str(destination)


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> str:
    """A finished --target model run of the built-in model: 3 steps, batch 64, 300 held-out pairs."""
    out = str(tmp_path_factory.mktemp("model-run") / "run")
    _assert_ok(_invoke(["finetune", "--out", out, "--steps", 3, "--batch-size", 64, "--eval-limit", 300,
                        "--device", "cpu", "-q"]))
    return out


@pytest.fixture(scope="module")
def run_encoder(run):
    return load_model("run:" + run)


@pytest.fixture(scope="module")
def base_encoder():
    return load_model(DEFAULT_MODEL)


@pytest.fixture(scope="module")
def captioned(tmp_path_factory) -> str:
    """12 captioned 28x28 PNGs (three captions repeating)."""
    root = tmp_path_factory.mktemp("captioned") / "images"
    image_folder(root, N_IMAGES, size=(28, 28))
    return str(root)


@pytest.fixture(scope="module")
def texts_file(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("texts") / "texts.txt"
    path.write_text("a photo of a sneaker.\na photo of a bag.\na photo of an ankle boot.\n")
    return str(path)


# --- parse_spec -------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec,expected", [
    ("run:/path/with@at", ModelSpec("run", "/path/with@at")),
    ("run:runs/sde@2", ModelSpec("run", "runs/sde@2")),  # relative: still a folder, "@" and all
    ("run:~/my@runs/x", ModelSpec("run", "~/my@runs/x")),
    ("hf:org/name@main", ModelSpec("hf", "org/name", "main")),  # a hub id: the "@" is a revision
])
def test_parse_spec_keeps_a_run_folder_whole(spec, expected):
    parsed = parse_spec(spec)
    assert parsed == expected
    assert str(parsed) == spec


# --- load_model("run:...") --------------------------------------------------------------------------


def test_run_encoder_holds_the_trained_tensors(run, run_encoder, base_encoder):
    weights = load_file(os.path.join(run, "model.safetensors"))
    assert "logit_scale" in weights and any(key.startswith("network.") for key in weights)
    modules, logit_scale = encoder_modules(run_encoder)
    base_modules, base_scale = encoder_modules(base_encoder)
    own = {name: dict(module.named_parameters()) | dict(module.named_buffers()) for name, module in modules.items()}
    base = {name: dict(module.named_parameters()) | dict(module.named_buffers())
            for name, module in base_modules.items()}
    assert torch.equal(logit_scale.detach(), weights["logit_scale"])
    changed = []
    for key, value in weights.items():
        if key == "logit_scale":
            continue
        prefix, _, rest = key.partition(".")
        assert torch.equal(own[prefix][rest].detach(), value), key
        if not torch.equal(base[prefix][rest].detach(), value):
            changed.append(key)
    # three optimizer steps move the trained weights of the image tower and the projections
    assert "network.image_projection.weight" in changed, changed
    assert len(changed) >= len([k for k in weights if k.endswith(".weight")]) // 2, changed
    # the frozen text tower is not in the run's weights and stays the base model's
    assert not any(key.startswith("text_tower.") for key in weights)
    for name, value in own["text_tower"].items():
        assert torch.equal(value.detach(), base["text_tower"][name].detach()), name
    assert torch.equal(base_scale.detach(), base_encoder.network.logit_scale.detach())


def test_run_encoder_provenance_names_the_run(run, run_encoder, base_encoder):
    assert run_encoder.spec == "run:" + run
    assert run_encoder.backend == "builtin" and run_encoder.dim == base_encoder.dim
    assert set(run_encoder.modalities) == {"image", "text"}
    provenance = run_encoder.provenance
    training = json.load(open(os.path.join(run, "config.json")))["training"]
    assert provenance["base_model"] == DEFAULT_MODEL
    assert provenance["finetune_run"] == os.path.abspath(run)
    assert provenance["finetune_weights"].startswith("sha256:")
    assert provenance["finetune_weights"] == _sha256(os.path.join(run, "model.safetensors"))
    assert provenance["finetune_loss"] == training["loss"] == "sde"
    assert provenance["finetune_steps"] == training["steps"] == 3
    assert provenance["finetune_seed"] == training["seed"] == 0
    assert "finetune_run" not in base_encoder.provenance  # the base model was not touched


def test_run_encoder_embeds_as_its_weights_say(run_encoder, base_encoder):
    texts = ["a photo of a sneaker.", "a photo of a bag."]
    pixels = torch.from_numpy(np.random.default_rng(0).normal(size=(4, 1, 28, 28)).astype(np.float32))
    with torch.no_grad():
        got_text = run_encoder.encode_texts(texts).numpy()
        got_image = run_encoder.encode_images(pixels).embeddings.numpy()
        # the base model's frozen text features through the run's projection: the same computation
        features = base_encoder.text_tower.encode_texts(texts)
        expected_text = run_encoder.network.encode_text_features(features).numpy()
        base_image = base_encoder.encode_images(pixels).embeddings.numpy()
    np.testing.assert_allclose(got_text, expected_text, rtol=0, atol=1e-6)
    assert not np.allclose(got_image, base_image, rtol=0, atol=1e-6)


# --- sdetool extract --model run:RUN ----------------------------------------------------------------


def test_extract_with_a_run_records_it_and_embeds_with_it(run, run_encoder, captioned, tmp_path):
    out = str(tmp_path / "run.h5")
    _assert_ok(_invoke(["extract", "--model", "run:" + run, "--images", captioned, "--out", out, "--device", "cpu",
                        "-q"]))
    assert sorted(store.open_matrices(out)) == ["image", "text"]
    weights = _sha256(os.path.join(run, "model.safetensors"))
    with h5py.File(out, "r") as handle:
        root = json.loads(handle.attrs["extract_config"])
        assert root["model"] == "run:" + run
        for key in ("image", "text"):
            attrs = dict(handle[key].attrs)
            assert attrs["model"] == "run:" + run, key
            assert attrs["base_model"] == DEFAULT_MODEL, key
            assert attrs["finetune_run"] == os.path.abspath(run), key
            assert attrs["finetune_weights"] == weights, key
            assert attrs["finetune_loss"] == "sde" and int(attrs["finetune_steps"]) == 3, key

    # the stored rows are what the loaded run encoder computes for the same items
    from sdetool.extract.data.items import open_source

    source = open_source(images=captioned)
    ids = store.read_ids(out, "image")
    assert sorted(ids) == sorted(source.ids) and len(ids) == N_IMAGES
    transform = run_encoder.image_transform()
    position = {item: index for index, item in enumerate(source.ids)}
    pixels = torch.stack([transform(source.load_image(position[item])) for item in ids])
    with torch.no_grad():
        images = run_encoder.encode_images(pixels).embeddings.numpy()
        texts = run_encoder.encode_texts([source.texts[position[item]] for item in ids]).numpy()
    np.testing.assert_allclose(_read(out, "image"), images, rtol=0, atol=1e-5)
    np.testing.assert_allclose(_read(out, "text"), texts, rtol=0, atol=1e-5)


def test_extract_of_texts_only_with_a_run(run, run_encoder, texts_file, tmp_path):
    out = str(tmp_path / "texts.h5")
    _assert_ok(_invoke(["extract", "--model", "run:" + run, "--texts", texts_file, "--out", out, "--device", "cpu",
                        "-q"]))
    assert sorted(store.open_matrices(out)) == ["text"]
    with h5py.File(out, "r") as handle:
        assert handle["text"].attrs["finetune_run"] == os.path.abspath(run)
    with torch.no_grad():
        expected = run_encoder.encode_texts(open(texts_file).read().splitlines()).numpy()
    np.testing.assert_allclose(_read(out, "text"), expected, rtol=0, atol=1e-5)


def test_extract_notices_that_the_run_was_retrained(run, texts_file, tmp_path):
    copy = _copy_run(run, tmp_path / "run")
    out = str(tmp_path / "texts.h5")
    _assert_ok(_invoke(["extract", "--model", "run:" + copy, "--texts", texts_file, "--out", out, "--device", "cpu",
                        "-q"]))
    old = _read(out, "text")
    weights = load_file(os.path.join(copy, "model.safetensors"))  # as if the run had been trained again
    weights["network.text_projection.weight"] = weights["network.text_projection.weight"] * 2.0
    save_file(weights, os.path.join(copy, "model.safetensors"))
    result = _invoke(["extract", "--model", "run:" + copy, "--texts", texts_file, "--out", out, "--device", "cpu",
                      "-q"])
    if result.exit_code == 0:  # re-extracted: the store must hold the new model's embeddings
        new = load_model("run:" + copy)
        with torch.no_grad():
            expected = new.encode_texts(open(texts_file).read().splitlines()).numpy()
        np.testing.assert_allclose(_read(out, "text"), expected, rtol=0, atol=1e-5)
        assert not np.allclose(_read(out, "text"), old)
    else:  # or refused as a different extraction
        _assert_error(result, 2, "different extraction")


# --- refusals: exit 2, one line ----------------------------------------------------------------------


def _extract_with(folder, texts_file, out):
    return _invoke(["extract", "--model", f"run:{folder}", "--texts", texts_file, "--out", out, "--device", "cpu",
                    "-q"])


def test_refuses_a_folder_that_is_not_a_run(texts_file, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = str(tmp_path / "out.h5")
    _assert_error(_extract_with(empty, texts_file, out), 2, f"run:{empty}", "no config.json")
    _assert_error(_extract_with(tmp_path / "missing", texts_file, out), 2, "no config.json")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    _assert_error(_extract_with(broken, texts_file, out), 2, "unreadable")
    assert not os.path.exists(out)


@pytest.fixture(scope="module")
def head_run(tmp_path_factory) -> str:
    """One step of linear heads on a store of 200 cached pairs (d = 16)."""
    root = tmp_path_factory.mktemp("head")
    rng = np.random.default_rng(0)
    text = rng.normal(size=(20, 16)).astype(np.float32)[np.arange(200) % 20]
    image = (text + 0.5 * rng.normal(size=(200, 16))).astype(np.float32)
    ids = [f"pair-{i:04d}" for i in range(200)]
    pairs = str(root / "pairs.h5")
    store.write_set(pairs, "image", image, ids=ids, mode="w")
    store.write_set(pairs, "text", text, ids=ids)
    out = str(root / "run")
    _assert_ok(_invoke(["finetune", "--target", "head", "--embeddings", pairs, "--out", out, "--steps", 1,
                        "--batch-size", 32, "--device", "cpu", "-q"]))
    assert os.path.isfile(os.path.join(out, "model.safetensors"))
    return out


def test_refuses_a_head_run(head_run, texts_file, tmp_path):
    out = str(tmp_path / "out.h5")
    _assert_error(_extract_with(head_run, texts_file, out), 2, f"run:{head_run}", "--target head",
                  "--target model")
    assert not os.path.exists(out)


def test_refuses_an_unfinished_run(run, texts_file, tmp_path):
    copy = _copy_run(run, tmp_path / "run")
    os.remove(os.path.join(copy, "model.safetensors"))
    out = str(tmp_path / "out.h5")
    _assert_error(_extract_with(copy, texts_file, out), 2, "has not finished", "no model.safetensors", "--resume")
    assert not os.path.exists(out)


@pytest.mark.parametrize("change,fragments", [
    ("extra", ("does not fit", "1 tensors match no parameter", "network.extra_tensor")),
    ("foreign", ("does not fit", "1 tensors match no parameter", "vision.weight")),
    ("shape", ("does not fit", "1 tensors match no parameter", "network.image_projection.weight")),
])
def test_refuses_weights_that_do_not_fit(run, texts_file, tmp_path, change, fragments):
    copy = _copy_run(run, tmp_path / "run")
    path = os.path.join(copy, "model.safetensors")
    weights = load_file(path)
    if change == "extra":
        weights["network.extra_tensor"] = torch.zeros(3)
    elif change == "foreign":
        weights["vision.weight"] = torch.zeros(2, 2)
    else:
        weights["network.image_projection.weight"] = weights["network.image_projection.weight"][:, :-1].contiguous()
    save_file(weights, path)
    out = str(tmp_path / "out.h5")
    _assert_error(_extract_with(copy, texts_file, out), 2, *fragments)
    assert not os.path.exists(out)


def test_refuses_weights_without_a_temperature(run, texts_file, tmp_path):
    copy = _copy_run(run, tmp_path / "run")
    path = os.path.join(copy, "model.safetensors")
    weights = load_file(path)
    del weights["logit_scale"]
    save_file(weights, path)
    _assert_error(_extract_with(copy, texts_file, str(tmp_path / "out.h5")), 2, "does not fit")


def test_refuses_a_run_whose_base_is_a_run(run, texts_file, tmp_path):
    copy = _copy_run(run, tmp_path / "run")
    config_path = os.path.join(copy, "config.json")
    config = json.load(open(config_path))
    config["training"]["model"] = "run:" + run
    with open(config_path, "w") as handle:
        json.dump(config, handle)
    _assert_error(_extract_with(copy, texts_file, str(tmp_path / "out.h5")), 2, "is itself a run")


# --- copy_state and encoder_modules ---------------------------------------------------------------------


def test_copy_state_copies_what_fits_and_returns_the_rest():
    torch.manual_seed(0)
    modules = {"first": torch.nn.Linear(3, 2), "second": torch.nn.BatchNorm1d(2)}
    scale = torch.nn.Parameter(torch.tensor(1.0))
    state = {"logit_scale": torch.tensor(2.5), "first.weight": torch.full((2, 3), 7.0),
             "second.running_mean": torch.tensor([1.0, -1.0]),  # a buffer
             "first.bias": torch.zeros(5),  # wrong shape
             "third.weight": torch.zeros(1), "first.nothing": torch.zeros(1), "loose": torch.zeros(1)}
    bias = modules["first"].bias.detach().clone()
    unused = copy_state(modules, scale, state)
    assert sorted(unused) == ["first.bias", "first.nothing", "loose", "third.weight"]
    assert scale.item() == 2.5
    assert torch.equal(modules["first"].weight.detach(), torch.full((2, 3), 7.0))
    assert torch.equal(modules["second"].running_mean, torch.tensor([1.0, -1.0]))
    assert torch.equal(modules["first"].bias.detach(), bias)  # untouched
    assert modules["first"].weight.requires_grad  # copied in place, still a parameter


def test_encoder_modules_of_the_built_in_model(base_encoder):
    modules, scale = encoder_modules(base_encoder)
    assert set(modules) == {"network", "text_tower"}
    assert scale is base_encoder.network.logit_scale
    assert modules["network"] is base_encoder.network
