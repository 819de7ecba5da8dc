"""``st:`` models are run by sentence-transformers itself: for models built and saved here from the shipped
all-MiniLM-L6-v2 (mean, CLS and last-token pooling, a Dense layer, Normalize or not), the stored
embeddings equal ``SentenceTransformer(folder).encode(texts)`` to 1e-5, and the provenance says what was used."""

from __future__ import annotations

import h5py
import numpy as np
import pytest
from cli_helpers import assert_ok, invoke
from extract_fixtures import minilm_folder

from sdetool.extract.models import load_model

TEXTS = ["a photo of a cat", "a red sports car on a wet road", "x", "the same sentence", "the same sentence",
         "a much longer sentence that goes on for a while so that padding matters in the batch"]


def _modules():
    try:
        from sentence_transformers.sentence_transformer import modules
    except ImportError:  # sentence-transformers before 6
        from sentence_transformers import models as modules
    return modules


def _build(folder, pooling: str, dense: int | None, normalize: bool) -> str:
    import torch
    from sentence_transformers import SentenceTransformer

    modules = _modules()
    torch.manual_seed(0)
    transformer = modules.Transformer(minilm_folder())
    parts = [transformer, modules.Pooling(384, pooling_mode=pooling)]
    if dense:
        parts.append(modules.Dense(384, dense, activation_function=torch.nn.Tanh()))
    if normalize:
        parts.append(modules.Normalize())
    SentenceTransformer(modules=parts, device="cpu").save(str(folder))
    return str(folder)


CASES = {  # name: (pooling, dense, normalize)
    "mean": ("mean", None, False),
    "cls": ("cls", None, True),
    "lasttoken-dense": ("lasttoken", 128, False),
    "mean-dense-normalize": ("mean", 64, True),
}


@pytest.fixture(scope="module", params=sorted(CASES))
def saved(request, tmp_path_factory):
    pooling, dense, normalize = CASES[request.param]
    folder = _build(tmp_path_factory.mktemp(request.param), pooling, dense, normalize)
    return request.param, folder, (pooling, dense, normalize)


def test_the_encoder_equals_sentence_transformers(saved):
    from sentence_transformers import SentenceTransformer

    _, folder, (pooling, dense, normalize) = saved
    encoder = load_model("st:" + folder)
    expected = SentenceTransformer(folder, device="cpu").encode(TEXTS)
    got = encoder.encode_texts(TEXTS).numpy()
    assert encoder.dim == (dense or 384) == expected.shape[1]
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert encoder.provenance["pooling"] == pooling
    assert encoder.provenance["model_normalizes"] is normalize
    assert ("Dense" in encoder.provenance["modules"]) is bool(dense)


def test_extract_stores_what_sentence_transformers_encodes(saved, tmp_path):
    from sentence_transformers import SentenceTransformer

    name, folder, (pooling, _, _) = saved
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(TEXTS[:4] + TEXTS[5:]) + "\n")
    out = tmp_path / "st.h5"
    assert_ok(invoke("extract", "--model", "st:" + folder, "--texts", texts, "--out", out, "--batch-size", "2", "-q"))
    with h5py.File(out, "r") as handle:
        stored = handle["text/embeddings"][...]
        attrs = dict(handle["text"].attrs)
    expected = SentenceTransformer(folder, device="cpu").encode(TEXTS[:4] + TEXTS[5:])
    np.testing.assert_allclose(stored, expected, atol=1e-5)
    assert attrs["pooling"] == pooling and attrs["library"] == "sentence-transformers"


def test_the_shipped_minilm_through_st(tmp_path):
    from sentence_transformers import SentenceTransformer

    encoder = load_model("st:" + minilm_folder())
    np.testing.assert_allclose(encoder.encode_texts(TEXTS).numpy(),
                               SentenceTransformer(minilm_folder(), device="cpu").encode(TEXTS), atol=1e-5)
    assert encoder.provenance["modules"] == "Transformer -> Pooling -> Normalize"
    assert encoder.provenance["pooling"] == "mean" and encoder.provenance["revision"].startswith("sha256:")


def test_the_built_in_tower_matches_sentence_transformers_on_minilm():
    """The built-in model's own MiniLM tower (a plain transformers module, trained as one) encodes as
    sentence-transformers does."""
    from sentence_transformers import SentenceTransformer

    from sdetool.extract.models.st import SentenceEncoder, read_sentence_config

    folder = minilm_folder()
    tower = SentenceEncoder("st:" + folder, folder, read_sentence_config(folder))
    import torch

    with torch.no_grad():
        got = tower.encode_texts(TEXTS).numpy()
    np.testing.assert_allclose(got, SentenceTransformer(folder, device="cpu").encode(TEXTS), atol=1e-5)


def test_cls_pooling_is_read_from_its_real_key(tmp_path):
    from sdetool.extract.models.st import read_sentence_config

    folder = _build(tmp_path / "cls", "cls", None, False)
    assert read_sentence_config(folder).pooling == "cls"
