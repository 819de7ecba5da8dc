"""``extract``: the library function and ``sdetool extract`` on real models and real files.

Rows are checked against the model run directly on the same items (pairing, ids), failures against the
files that were broken on purpose, and resumption against an uninterrupted run: in-process (a crash
injected after the first chunk), after a real SIGKILL of the CLI, and under ``torchrun`` with two ranks.
"""

from __future__ import annotations

import glob
import json
import os
import signal
import socket
import subprocess
import sys
import time

import h5py
import numpy as np
import pandas as pd
import pytest
import torch
from cli_helpers import message_lines
from extract_fixtures import (TINY_CLIP, build_tiny_clip, fashion_subset, image_folder, minilm_folder, write_fake_png,
                              write_image, write_truncated_jpeg)
from typer.testing import CliRunner

from sdetool import __version__
from sdetool.cli import app
from sdetool.errors import BadInputError
from sdetool.extract.data.items import open_source
from sdetool.extract.extraction import ExtractOptions, extract, resolve_torch_device, run_config
from sdetool.extract.models import load_model
from sdetool.io import store
from sdetool.io.checkpoint import WorkFolder

FAST = {"num_workers": 0, "batch_size": 64, "chunk_items": 100}  # 240 items: chunks of 100, 100 and 40
PROVENANCE = ("model", "backend", "model_revision", "data_fingerprint", "prompt_template", "normalized", "precision",
              "sdetool_version", "created")


def _invoke(args):
    return CliRunner().invoke(app, [str(a) for a in args])


def _assert_ok(result):
    assert result.exit_code == 0, (result.exit_code, result.output, result.exception)
    return result


def _assert_bad_input(result, *fragments: str) -> str:
    """Exit 2, no traceback, exactly one line on stderr naming the problem, after the progress lines of the
    work it stopped; returns it."""
    assert result.exit_code == 2, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output
    lines = message_lines(result.stderr)
    assert len(lines) == 1, result.stderr
    assert result.stderr.rstrip().splitlines()[-1] == lines[0], result.stderr
    assert lines[0].startswith("sdetool: error: ")
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def _read(path, key):
    with h5py.File(path, "r") as handle:
        group = handle[key]
        return {
            "embeddings": group["embeddings"][()],
            "ids": [x.decode() for x in group["ids"][()]],
            "tokens": group["tokens"][()] if "tokens" in group else None,
            "attrs": {name: store._decode(value) for name, value in group.attrs.items()},
        }


def _encode_pixels(encoder, source, indices):
    """The model run directly on items ``indices`` of ``source`` (its own transform, no DataLoader)."""
    transform = encoder.image_transform()
    pixels = torch.stack([transform(source.load_image(i)) for i in indices])
    with torch.no_grad():
        return encoder.encode_images(pixels).embeddings.float().numpy()


def _encode_texts(encoder, texts):
    with torch.no_grad():
        return encoder.encode_texts(list(texts)).float().numpy()


# --- fixtures -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def fashion():
    return fashion_subset(240)


@pytest.fixture(scope="module")
def lit():
    return load_model("builtin:lit-fmnist")


@pytest.fixture(scope="module")
def lit_store(tmp_path_factory, fashion):
    """The built-in model over 240 Fashion-MNIST items with default output options."""
    path = str(tmp_path_factory.mktemp("lit") / "fashion.h5")
    return path, extract("builtin:lit-fmnist", fashion, path, ExtractOptions(**FAST))


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    return build_tiny_clip(tmp_path_factory.mktemp("tiny-clip"))


@pytest.fixture(scope="module")
def folder_400(tmp_path_factory):
    """400 small captioned PNGs plus a truncated JPEG and a fake PNG (for resume and torchrun)."""
    root = tmp_path_factory.mktemp("folder400") / "images"
    layout = image_folder(root, 400, bad=True, size=(16, 16))
    return str(root), layout


def _folder_args(folder, out):
    return ["extract", "--images", folder, "--out", out, "--chunk-items", "64", "--batch-size", "32", "-q"]


@pytest.fixture(scope="module")
def folder_400_reference(folder_400, tmp_path_factory):
    """An uninterrupted single-process run over ``folder_400`` (one thread, as the subprocesses use)."""
    out = str(tmp_path_factory.mktemp("reference") / "reference.h5")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        _assert_ok(_invoke(_folder_args(folder_400[0], out) + ["--num-workers", "0"]))
    finally:
        torch.set_num_threads(threads)
    return out


# --- the library: the built-in model on a Fashion-MNIST subset ------------------------------------


def test_builtin_run_writes_both_sets_with_ids(lit_store, fashion):
    path, result = lit_store
    assert result.status == "written" and result.items == 240 and result.resumed_items == 0
    assert result.rows == {"image": 240, "text": 240} and result.failed == {"image": 0, "text": 0}
    assert result.dims == {"image": 256, "text": 256} and result.device == "cpu"
    assert result.model == "builtin:lit-fmnist" and result.data == fashion.location
    assert not os.path.exists(WorkFolder(path).path)  # the work folder is gone once the store is written
    for key in ("image", "text"):
        data = _read(path, key)
        assert data["embeddings"].shape == (240, 256) and data["embeddings"].dtype == np.float32
        assert data["ids"] == fashion.ids
        assert data["tokens"] is None
        assert store.read_failed(path, key) == []
        assert np.isfinite(data["embeddings"]).all()
    document = result.to_dict()
    assert json.loads(json.dumps(document))["rows"] == {"image": 240, "text": 240}
    assert document["items_per_second"] > 0


def test_builtin_rows_are_the_models_output_for_the_same_item(lit_store, lit, fashion):
    path, _ = lit_store
    image, text = _read(path, "image")["embeddings"], _read(path, "text")["embeddings"]
    rows = [0, 1, 57, 99, 100, 181, 239]  # across the three chunks
    np.testing.assert_allclose(image[rows], _encode_pixels(lit, fashion, rows), rtol=0, atol=1e-5)
    # Row i of the text set is the caption of item i (its class in template i mod 6), embedded alone.
    for row in rows:
        np.testing.assert_allclose(text[row], _encode_texts(lit, [fashion.texts[row]])[0], rtol=0, atol=1e-5)
    # The built-in model was trained to pair them: each image is closest to its own class's captions.
    unit = lambda m: m / np.linalg.norm(m, axis=1, keepdims=True)  # noqa: E731
    similarity = unit(image) @ unit(text).T
    same_class = fashion.labels[:, None] == fashion.labels[None, :]
    predicted = same_class[np.arange(240), similarity.argmax(axis=1)]
    assert predicted.mean() > 0.8


def test_builtin_provenance(lit_store, lit, fashion):
    path, _ = lit_store
    root = store.read_root_attrs(path)
    assert root["format"] == "sdetool-embeddings" and root["complete"]
    config = json.loads(root["extract_config"])
    assert config == run_config(lit, fashion, ["image", "text"], ExtractOptions(**FAST))
    for key in ("image", "text"):
        attrs = _read(path, key)["attrs"]
        for name in PROVENANCE:
            assert name in attrs, name
        assert attrs["modality"] == key
        assert attrs["model"] == "builtin:lit-fmnist" and attrs["backend"] == "builtin"
        assert attrs["model_revision"] == lit.provenance["revision"] and attrs["model_revision"].startswith("sha256:")
        assert attrs["data_fingerprint"] == fashion.fingerprint() and attrs["data_source"] == fashion.location
        assert "a photo of {}." in attrs["prompt_template"]
        assert attrs["normalized"] is False or attrs["normalized"] == 0
        assert attrs["precision"] == "fp32" and attrs["dtype_computed"] == "float32" and attrs["store_dtype"] == "float32"
        assert attrs["sdetool_version"] == __version__
        assert time.strptime(attrs["created"], "%Y-%m-%dT%H:%M:%S%z")
        assert json.loads(attrs["classes"])[0] == "T-shirt/top"
        assert attrs["failed"] == 0 and attrs["items"] == 240


def test_repeated_texts_are_embedded_once(tmp_path, monkeypatch, fashion):
    import sdetool.extract.models

    seen: list[str] = []
    real_load = sdetool.extract.models.load_model

    def counting_load(spec, **options):
        encoder = real_load(spec, **options)
        original = encoder.encode_texts
        encoder.encode_texts = lambda texts: (seen.extend(texts), original(texts))[1]
        return encoder

    monkeypatch.setattr(sdetool.extract.models, "load_model", counting_load)
    result = extract("builtin:lit-fmnist", fashion, str(tmp_path / "dedup.h5"), ExtractOptions(**FAST))
    distinct = set(fashion.texts)
    assert 10 < len(distinct) <= 60 < len(fashion)  # 10 classes x 6 templates at most
    step = FAST["chunk_items"]
    per_chunk = [sorted(set(fashion.texts[start:start + step])) for start in range(0, len(fashion), step)]
    # each distinct caption once per chunk (not across chunks: a resumed run must batch a chunk identically)
    assert sorted(seen) == sorted(t for chunk in per_chunk for t in chunk) and len(seen) < len(fashion)
    text = _read(result.path, "text")["embeddings"]
    first = {}
    for row, caption in enumerate(fashion.texts):
        np.testing.assert_allclose(text[row], text[first.setdefault(caption, row)], rtol=0, atol=1e-5)


@pytest.mark.parametrize("precision, computed", [("bf16", "bfloat16"), ("fp16", "float16")])
def test_normalize_float16_and_low_precision_are_close_to_fp32(tmp_path, lit_store, fashion, precision, computed):
    path, _ = lit_store
    options = ExtractOptions(**FAST, normalize=True, store_dtype="float16", precision=precision)
    result = extract("builtin:lit-fmnist", fashion, str(tmp_path / "bf16.h5"), options)
    assert result.rows == {"image": 240, "text": 240}
    for key in ("image", "text"):
        data = _read(result.path, key)
        assert data["embeddings"].dtype == np.float16 and data["ids"] == fashion.ids
        values = data["embeddings"].astype(np.float32)
        np.testing.assert_allclose(np.linalg.norm(values, axis=1), 1.0, atol=2e-3)
        attrs = data["attrs"]
        assert attrs["normalized"] == 1 and attrs["normalization"] == "L2 by sdetool (--normalize)"
        assert attrs["precision"] == precision and attrs["dtype_computed"] == computed
        assert attrs["store_dtype"] == "float16"
        reference = _read(path, key)["embeddings"]
        reference = reference / np.linalg.norm(reference, axis=1, keepdims=True)
        cosine = (values * reference).sum(axis=1)
        assert cosine.min() > 0.99, cosine.min()  # bfloat16 keeps 8 bits of mantissa: loose
        np.testing.assert_allclose(values, reference, atol=0.05)


def test_builtin_tokens_are_the_conv_grid(tmp_path, lit):
    source = fashion_subset(40, start=500)
    result = extract("builtin:lit-fmnist", source, str(tmp_path / "tokens.h5"), ExtractOptions(**FAST, tokens=True))
    data = _read(result.path, "image")
    assert data["tokens"].shape == (40, 7, 7, 128) and data["tokens"].dtype == np.float16
    transform = lit.image_transform()
    pixels = torch.stack([transform(source.load_image(i)) for i in range(40)])
    with torch.no_grad():
        embeddings, grid = lit.network.encode_image(pixels, tokens=True)
    np.testing.assert_allclose(data["tokens"].astype(np.float32), grid.numpy(), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(data["embeddings"], embeddings.numpy(), rtol=0, atol=1e-5)
    assert "tokens" not in h5py.File(result.path, "r")["text"]


# --- the library: failures --------------------------------------------------------------------------


@pytest.fixture
def messy_manifest(tmp_path):
    """A manifest of good PNGs, a truncated JPEG, a fake PNG, a missing file and a row without text."""
    pics = tmp_path / "pics"
    for index in range(6):
        write_image(pics / f"ok{index}.png", seed=index)
    write_truncated_jpeg(pics / "half.jpg")
    write_fake_png(pics / "fake.png")
    rows = [("ok0", "pics/ok0.png", "a sneaker"), ("half", "pics/half.jpg", "a bag"),
            ("ok1", "pics/ok1.png", "a coat"), ("fake", "pics/fake.png", "a dress"),
            ("ok2", "pics/ok2.png", ""), ("gone", "pics/gone.png", "a shirt"),
            ("ok3", "pics/ok3.png", "a sneaker"), ("ok4", "pics/ok4.png", "a sandal"), ("ok5", "pics/ok5.png", "a bag")]
    path = tmp_path / "items.csv"
    pd.DataFrame(rows, columns=["id", "path", "caption"]).to_csv(path, index=False)
    return str(path)


def test_failures_are_recorded_and_their_pairs_dropped(messy_manifest, tmp_path, lit):
    source = open_source(manifest_path=messy_manifest)
    result = extract("builtin:lit-fmnist", source, str(tmp_path / "messy.h5"),
                     ExtractOptions(num_workers=0, batch_size=4, chunk_items=5))
    kept = ["ok0", "ok1", "ok3", "ok4", "ok5"]
    assert result.rows == {"image": 5, "text": 5} and result.failed == {"image": 3, "text": 1}
    image, text = _read(result.path, "image"), _read(result.path, "text")
    assert image["ids"] == text["ids"] == kept
    failed = dict(store.read_failed(result.path, "image"))
    assert sorted(failed) == ["fake", "gone", "half"]
    assert failed["half"].startswith("corrupt image ") and "half.jpg" in failed["half"] and "truncated" in failed["half"]
    assert failed["fake"].startswith("not an image: ") and failed["fake"].endswith("fake.png")
    assert failed["gone"].startswith("missing file ") and failed["gone"].endswith("gone.png")
    assert store.read_failed(result.path, "text") == [("ok2", "missing text")]
    assert image["attrs"]["failed"] == 3 and text["attrs"]["failed"] == 1
    indices = [source.ids.index(item) for item in kept]
    np.testing.assert_allclose(image["embeddings"], _encode_pixels(lit, source, indices), rtol=0, atol=1e-5)
    np.testing.assert_allclose(text["embeddings"], _encode_texts(lit, [source.texts[i] for i in indices]), rtol=0, atol=1e-5)


def test_tokens_stay_aligned_with_the_kept_rows(messy_manifest, tmp_path, lit):
    source = open_source(manifest_path=messy_manifest)
    result = extract("builtin:lit-fmnist", source, str(tmp_path / "messy.h5"),
                     ExtractOptions(num_workers=0, batch_size=4, chunk_items=5, tokens=True))
    image = _read(result.path, "image")
    assert image["ids"] == ["ok0", "ok1", "ok3", "ok4", "ok5"]
    assert image["tokens"].shape == (5, 7, 7, 128)
    # Each row's embedding is the projection of its own token grid's average (float16 tokens: loose).
    with torch.no_grad():
        projected = lit.network.image_projection(torch.from_numpy(image["tokens"].astype(np.float32)).mean(dim=(1, 2)))
    np.testing.assert_allclose(projected.numpy(), image["embeddings"], rtol=0, atol=2e-2)


def test_strict_stops_at_the_first_bad_item(messy_manifest, tmp_path):
    out = tmp_path / "strict.h5"
    with pytest.raises(BadInputError, match=r"^half: corrupt image .*\(--strict\)$"):
        extract("builtin:lit-fmnist", open_source(manifest_path=messy_manifest), str(out),
                ExtractOptions(num_workers=0, batch_size=4, chunk_items=5, strict=True))
    assert not out.exists()


def test_nothing_embeddable_is_refused_and_leaves_nothing(tmp_path):
    folder = tmp_path / "bad"
    folder.mkdir()
    write_truncated_jpeg(folder / "a.jpg")
    write_fake_png(folder / "b.png")
    out = tmp_path / "none.h5"
    with pytest.raises(BadInputError, match=r"no item could be embedded \(2 failed; first: a\.jpg: corrupt image"):
        extract("builtin:lit-fmnist", open_source(images=str(folder)), str(out), ExtractOptions(num_workers=0))
    assert not out.exists() and not os.path.exists(WorkFolder(str(out)).path)


@pytest.mark.parametrize("options, fragment", [
    ({"precision": "fp8"}, "--precision 'fp8': expected one of fp32, fp16, bf16"),
    ({"store_dtype": "int8"}, "--store-dtype 'int8': expected one of float32, float16"),
    ({"batch_size": 0}, "--batch-size 0: expected a positive integer"),
    ({"chunk_items": -1}, "--chunk-items -1: expected a positive integer"),
    ({"num_workers": -1}, "--num-workers -1: expected 0 or more"),
])
def test_bad_options_are_refused_before_any_work(tmp_path, fashion, options, fragment):
    with pytest.raises(BadInputError) as caught:
        extract("builtin:lit-fmnist", fashion, str(tmp_path / "x.h5"), ExtractOptions(**options))
    assert str(caught.value) == fragment
    assert not os.listdir(tmp_path)


def test_resolve_torch_device():
    assert resolve_torch_device("cpu") == "cpu"
    assert resolve_torch_device("auto", 1) == ("cuda:1" if torch.cuda.is_available() else "cpu")
    with pytest.raises(BadInputError, match="--device 'tpu': expected auto, cpu, cuda or cuda:N"):
        resolve_torch_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(BadInputError, match="--device cuda:0: CUDA is not available here"):
            resolve_torch_device("cuda:0")


# --- the library: resuming, re-running, refusing --------------------------------------------------------


def test_crashed_run_is_reported_incomplete_then_resumed(tmp_path, monkeypatch, fashion, lit_store):
    out = str(tmp_path / "crash.h5")
    real_write = WorkFolder.write_chunk
    written = []

    def crash_after_first_chunk(self, index, chunk):
        if written:
            raise RuntimeError("simulated crash")
        real_write(self, index, chunk)
        written.append(index)

    monkeypatch.setattr(WorkFolder, "write_chunk", crash_after_first_chunk)
    with pytest.raises(RuntimeError, match="simulated crash"):
        extract("builtin:lit-fmnist", fashion, out, ExtractOptions(**FAST))
    monkeypatch.undo()
    folder = WorkFolder(out)
    assert written == [0] and folder.done() == {0} and not os.path.exists(out)
    assert folder.read_run()["chunks"] == 3

    line = _assert_bad_input(_invoke(["analyze", out]), "extraction incomplete", "1 of 3 chunks",
                             "re-run the same sdetool extract command to resume")
    assert folder.path in line

    result = extract("builtin:lit-fmnist", fashion, out, ExtractOptions(**{**FAST, "batch_size": 32}))
    assert result.status == "written" and result.resumed_items == 100
    assert not os.path.exists(folder.path)
    for key in ("image", "text"):
        resumed, reference = _read(out, key), _read(lit_store[0], key)
        assert resumed["ids"] == reference["ids"]
        np.testing.assert_allclose(resumed["embeddings"], reference["embeddings"], rtol=0, atol=1e-6)


def test_analyze_names_an_unfinished_output_or_its_work_folder(tmp_path):
    out = str(tmp_path / "pending.h5")
    WorkFolder(out).create({"config": {}, "chunks": 4, "chunk_items": 10, "items": 35})
    for target in (out, out + ".partial"):
        _assert_bad_input(_invoke(["analyze", target]), "pending.h5: extraction incomplete (0 of 4 chunks")


def test_analyze_names_a_work_folder_given_with_a_trailing_slash(tmp_path):
    out = str(tmp_path / "pending.h5")
    WorkFolder(out).create({"config": {}, "chunks": 4, "chunk_items": 10, "items": 35})
    _assert_bad_input(_invoke(["analyze", out + ".partial/"]), "extraction incomplete")


def test_work_folder_counts_chunks_past_a_million(tmp_path):
    from sdetool.io.checkpoint import Chunk

    folder = WorkFolder(str(tmp_path / "many.h5"))
    folder.create({"config": {}, "chunks": 1_000_001, "chunk_items": 1, "items": 1_000_001})
    chunk = Chunk(rows=np.array([0]), embeddings={"text": np.zeros((1, 2), np.float32)}, tokens=None,
                  failed_index=np.zeros(0, np.int64), failed_key=[], failed_reason=[])
    folder.write_chunk(3, chunk)
    folder.write_chunk(1_000_000, chunk)
    assert folder.done() == {3, 1_000_000}


def test_leftover_work_folder_of_another_job_is_refused_unless_overwrite(tmp_path, fashion):
    out = str(tmp_path / "left.h5")
    other = fashion_subset(30)
    WorkFolder(out).create({"config": {"model": "builtin:lit-fmnist", "normalize": True}, "chunks": 1,
                            "chunk_items": 100, "items": 30})
    with pytest.raises(BadInputError, match=r"an unfinished extraction of something else \(.*; use --overwrite"):
        extract("builtin:lit-fmnist", other, out, ExtractOptions(**FAST))
    result = extract("builtin:lit-fmnist", other, out, ExtractOptions(**FAST, overwrite=True))
    assert result.status == "written" and result.rows["image"] == 30 and result.resumed_items == 0


def test_same_job_again_is_already_complete(lit_store, fashion):
    path, _ = lit_store
    before = (os.stat(path).st_mtime_ns, store.read_root_attrs(path))
    result = extract("builtin:lit-fmnist", fashion, path, ExtractOptions(**{**FAST, "batch_size": 16}))
    assert result.status == "already complete"
    assert result.rows == {"image": 240, "text": 240} and result.failed == {"image": 0, "text": 0}
    assert "nothing to do: the output is complete" in result.notes
    assert (os.stat(path).st_mtime_ns, store.read_root_attrs(path)) == before


# --- the command line -------------------------------------------------------------------------------


def test_extract_help():
    result = _assert_ok(_invoke(["extract", "--help"]))
    for option in ("--out", "--model", "--images", "--texts", "--manifest", "--data", "--tokens", "--normalize",
                   "--precision", "--store-dtype", "--strict", "--overwrite", "--chunk-items", "--json"):
        assert option in result.stdout, option


def test_models_command_lists_backends_and_availability():
    result = _assert_ok(_invoke(["models", "--json", "-"]))
    rows = {row["name"]: row for row in json.loads(result.stdout)["models"]}
    assert {"hf:", "st:", "open_clip:", "builtin:", "builtin:lit-fmnist"} <= set(rows)
    assert rows["hf:"]["available"] and rows["builtin:lit-fmnist"]["available"]
    try:
        import open_clip  # noqa: F401
        open_clip_here = True
    except Exception:
        open_clip_here = False
    assert rows["open_clip:"]["available"] is open_clip_here
    if not open_clip_here:
        assert "open_clip" in rows["open_clip:"]["reason"]
    table = _assert_ok(_invoke(["models"])).stdout
    assert "sdetool models" in table and "open_clip:" in table and "builtin:lit-fmnist" in table
    if not open_clip_here:
        assert "no" in table


def test_cli_image_folder_with_failures_and_json_summary(tmp_path):
    layout = image_folder(tmp_path / "images", 9, bad=True)
    out, summary = tmp_path / "out.h5", tmp_path / "summary.json"
    result = _assert_ok(_invoke(["extract", "--images", tmp_path / "images", "--out", out, "--json", summary,
                                 "--num-workers", "0", "--chunk-items", "4"]))
    document = json.loads(summary.read_text())
    assert document["status"] == "written" and document["items"] == 11
    assert document["rows"] == {"image": 9, "text": 9} and document["failed"] == {"image": 2, "text": 0}
    assert document["dims"] == {"image": 256, "text": 256} and document["model"] == "builtin:lit-fmnist"
    assert document["path"] == str(out) and document["items_per_second"] >= 0
    assert "1 files without an image extension were not listed" in document["notes"]
    assert "sdetool extract" in result.stdout and "failed" in result.stdout  # the table
    ids = store.read_ids(str(out), "image")
    assert sorted(ids) == sorted(layout["good"]) and store.read_ids(str(out), "text") == ids
    failed = dict(store.read_failed(str(out), "image"))
    assert set(failed) == {"broken.jpg", "sub/fake.png"}
    assert "truncated" in failed["broken.jpg"] and failed["sub/fake.png"].startswith("not an image")
    text = _read(out, "text")
    assert text["attrs"]["prompt_template"] == "captions.jsonl"
    expected = _encode_texts(load_model("builtin:lit-fmnist"), [layout["captions"][item] for item in ids])
    np.testing.assert_allclose(text["embeddings"], expected, rtol=0, atol=1e-5)

    stdout = _assert_ok(_invoke(["extract", "--images", tmp_path / "images", "--out", out, "--json", "-",
                                 "--chunk-items", "4"]))
    assert json.loads(stdout.stdout)["status"] == "already complete"  # only JSON on stdout, the table on stderr


def test_cli_strict_exits_2_with_one_line(tmp_path):
    image_folder(tmp_path / "images", 3, bad=True)
    result = _invoke(["extract", "--images", tmp_path / "images", "--out", tmp_path / "o.h5", "--strict",
                      "--num-workers", "0"])
    _assert_bad_input(result, "broken.jpg: corrupt image", "(--strict)")
    assert not (tmp_path / "o.h5").exists()


def test_cli_text_only_with_sentence_transformer(tmp_path):
    lines = ["a red car", "", "a blue boat", "a red car", "   ", "an orange cat"]
    (tmp_path / "texts.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "texts.h5"
    spec = "st:" + minilm_folder()
    _assert_ok(_invoke(["extract", "--texts", tmp_path / "texts.txt", "--model", spec, "--out", out, "-q",
                        "--batch-size", "2"]))
    with h5py.File(out, "r") as handle:
        assert list(handle.keys()) == ["text"]
    data = _read(out, "text")
    assert data["ids"] == ["line-1", "line-3", "line-4", "line-6"]
    assert data["embeddings"].shape == (4, 384)
    np.testing.assert_array_equal(data["embeddings"][0], data["embeddings"][2])  # the repeated line
    np.testing.assert_allclose(np.linalg.norm(data["embeddings"], axis=1), 1.0, atol=1e-5)  # the model normalizes
    expected = _encode_texts(load_model(spec), ["a red car", "a blue boat", "a red car", "an orange cat"])
    np.testing.assert_allclose(data["embeddings"], expected, rtol=0, atol=1e-5)
    attrs = data["attrs"]
    assert attrs["backend"] == "st" and attrs["model"] == spec and attrs["pooling"] == "mean"
    assert attrs["model_normalizes"] == 1 and attrs["normalized"] == 0


def test_cli_manifest_with_tiny_clip_is_paired(tmp_path, tiny_clip):
    for index in range(5):
        write_image(tmp_path / "pics" / f"p{index}.png", seed=10 + index, size=(40 + index, 36))
    captions = ["a sneaker", "a bag on a chair", "a sneaker", "a coat", "two dresses on a line"]
    pd.DataFrame({"id": [f"item-{i}" for i in range(5)], "image": [f"pics/p{i}.png" for i in range(5)],
                  "caption": captions}).to_json(tmp_path / "items.jsonl", orient="records", lines=True)
    out = tmp_path / "clip.h5"
    spec = "hf:" + tiny_clip
    _assert_ok(_invoke(["extract", "--manifest", tmp_path / "items.jsonl", "--model", spec, "--out", out, "-q",
                        "--batch-size", "2", "--chunk-items", "3", "--num-workers", "1"]))
    encoder = load_model(spec)
    source = open_source(manifest_path=str(tmp_path / "items.jsonl"))
    image, text = _read(out, "image"), _read(out, "text")
    assert image["ids"] == text["ids"] == [f"item-{i}" for i in range(5)]
    assert image["embeddings"].shape == (5, TINY_CLIP["projection_dim"])
    np.testing.assert_allclose(image["embeddings"], _encode_pixels(encoder, source, range(5)), rtol=0, atol=1e-5)
    np.testing.assert_allclose(text["embeddings"], _encode_texts(encoder, captions), rtol=0, atol=1e-5)
    assert image["attrs"]["backend"] == "hf" and image["attrs"]["architecture"] == "CLIPModel"
    assert image["attrs"]["prompt_template"] == "column caption"


def test_cli_tokens_with_tiny_clip(tmp_path, tiny_clip):
    image_folder(tmp_path / "images", 3, captions=False)
    out = tmp_path / "tokens.h5"
    _assert_ok(_invoke(["extract", "--images", tmp_path / "images", "--model", "hf:" + tiny_clip, "--out", out,
                        "--tokens", "-q", "--num-workers", "0"]))
    side = TINY_CLIP["image_size"] // TINY_CLIP["patch_size"]
    tokens = _read(out, "image")["tokens"]
    assert tokens.shape == (3, side, side, TINY_CLIP["hidden"]) and tokens.dtype == np.float16


def test_cli_tokens_with_builtin_model(tmp_path):
    image_folder(tmp_path / "images", 5, captions=False)
    out = tmp_path / "tokens.h5"
    _assert_ok(_invoke(["extract", "--images", tmp_path / "images", "--out", out, "--tokens", "-q",
                        "--num-workers", "0"]))
    tokens = _read(out, "image")["tokens"]
    assert tokens.shape == (5, 7, 7, 128) and tokens.dtype == np.float16


def test_cli_output_options_reach_the_store(tmp_path):
    image_folder(tmp_path / "images", 4)
    out = tmp_path / "o.h5"
    _assert_ok(_invoke(["extract", "--images", tmp_path / "images", "--out", out, "-q", "--normalize",
                        "--store-dtype", "float16", "--precision", "bf16", "--num-workers", "0"]))
    for key in ("image", "text"):
        data = _read(out, key)
        assert data["embeddings"].dtype == np.float16
        np.testing.assert_allclose(np.linalg.norm(data["embeddings"].astype(np.float32), axis=1), 1.0, atol=2e-3)
        assert data["attrs"]["normalized"] == 1 and data["attrs"]["precision"] == "bf16"


def test_cli_text_model_on_a_captioned_folder_embeds_the_captions(tmp_path):
    layout = image_folder(tmp_path / "images", 3)
    out = tmp_path / "o.h5"
    result = _assert_ok(_invoke(["extract", "--images", tmp_path / "images", "--model", "st:" + minilm_folder(),
                                 "--out", out, "--json", "-"]))
    document = json.loads(result.stdout)
    assert document["rows"] == {"text": 3}
    assert any("has no image tower: images skipped" in note for note in document["notes"])
    with h5py.File(out, "r") as handle:
        assert list(handle.keys()) == ["text"]
    ids = store.read_ids(str(out), "text")
    assert sorted(ids) == sorted(layout["good"])


def test_cli_same_folder_with_a_trailing_slash_is_the_same_job(tmp_path):
    image_folder(tmp_path / "images", 2)
    out = tmp_path / "o.h5"
    _assert_ok(_invoke(["extract", "--images", tmp_path / "images", "--out", out, "-q", "--num-workers", "0"]))
    result = _assert_ok(_invoke(["extract", "--images", f"{tmp_path / 'images'}/", "--out", out, "--json", "-",
                                 "--num-workers", "0"]))
    assert json.loads(result.stdout)["status"] == "already complete"


def test_cli_text_model_on_images_is_refused(tmp_path):
    image_folder(tmp_path / "images", 2, captions=False)
    result = _invoke(["extract", "--images", tmp_path / "images", "--model", "st:" + minilm_folder(),
                      "--out", tmp_path / "o.h5"])
    _assert_bad_input(result, "embeds only text")
    assert not (tmp_path / "o.h5").exists()


def test_cli_tokens_need_a_vision_tower(tmp_path):
    (tmp_path / "t.txt").write_text("hello\n")
    result = _invoke(["extract", "--texts", tmp_path / "t.txt", "--model", "st:" + minilm_folder(),
                      "--out", tmp_path / "o.h5", "--tokens"])
    _assert_bad_input(result, "--tokens:", "no patch-token grid")


@pytest.mark.parametrize("args, fragment", [
    (["--model", "clip"], "--model 'clip': expected BACKEND:NAME"),
    (["--model", "builtin:nope"], "no such built-in model"),
    (["--images", "nowhere"], "--images nowhere: no such folder"),
    (["--data", "builtin:mnist"], "no such built-in data"),
    (["--precision", "fp64"], "fp64"),
])
def test_cli_bad_arguments_exit_2(tmp_path, args, fragment):
    result = _invoke(["extract", "--out", tmp_path / "o.h5", *args])
    assert result.exit_code == 2, result.output
    assert fragment in result.output
    assert "Traceback" not in result.output


def test_cli_refuses_other_model_or_data_unless_overwrite(tmp_path, tiny_clip):
    image_folder(tmp_path / "images", 4)
    out = tmp_path / "o.h5"
    base = ["extract", "--images", tmp_path / "images", "--out", out, "-q", "--num-workers", "0"]
    _assert_ok(_invoke(base))
    before = _read(out, "image")["embeddings"]

    _assert_bad_input(_invoke(base + ["--model", "hf:" + tiny_clip]), "holds a different extraction",
                      "model: 'builtin:lit-fmnist' -> 'hf:", "use --overwrite")
    _assert_bad_input(_invoke(base + ["--normalize"]), "normalize: False -> True")
    captions = (tmp_path / "images" / "captions.jsonl").read_text().replace("a sneaker", "a boot")
    (tmp_path / "images" / "captions.jsonl").write_text(captions)
    _assert_bad_input(_invoke(base), "holds a different extraction", "data_fingerprint")
    np.testing.assert_array_equal(_read(out, "image")["embeddings"], before)  # untouched

    _assert_ok(_invoke(base + ["--model", "hf:" + tiny_clip, "--overwrite"]))
    data = _read(out, "image")
    assert data["attrs"]["model"] == "hf:" + tiny_clip and data["embeddings"].shape == (4, TINY_CLIP["projection_dim"])


def test_cli_refuses_files_it_did_not_write(tmp_path):
    (tmp_path / "images").mkdir()
    write_image(tmp_path / "images" / "a.png", seed=0)
    store.write_set(str(tmp_path / "foreign.h5"), "image", np.ones((3, 4), np.float32))
    (tmp_path / "notes.h5").write_text("not hdf5")
    for name in ("foreign.h5", "notes.h5"):
        _assert_bad_input(_invoke(["extract", "--images", tmp_path / "images", "--out", tmp_path / name]),
                          "exists and was not written by sdetool extract", "--overwrite")
    (tmp_path / "dir.h5").mkdir()
    _assert_bad_input(_invoke(["extract", "--images", tmp_path / "images", "--out", tmp_path / "dir.h5"]),
                      "is a folder, expected an .h5 file path")
    _assert_bad_input(_invoke(["extract", "--images", tmp_path / "images", "--out", tmp_path / "no" / "o.h5"]),
                      "does not exist")


@pytest.mark.slow
def test_cli_default_extracts_the_builtin_demo(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = _assert_ok(_invoke(["extract", "--out", "demo.h5", "--json", "demo.json"]))
    document = json.loads((tmp_path / "demo.json").read_text())
    assert document["rows"] == {"image": 10000, "text": 10000} and document["failed"] == {"image": 0, "text": 0}
    assert document["model"] == "builtin:lit-fmnist" and document["data"] == "builtin:fashion-mnist:test"
    assert "10,000 items from builtin:fashion-mnist:test" in result.stdout
    ids = store.read_ids("demo.h5", "image")
    assert ids[0] == "fashion-mnist-test-00000" and ids[-1] == "fashion-mnist-test-09999"
    assert store.read_ids("demo.h5", "text") == ids
    analysis = _assert_ok(_invoke(["analyze", "demo.h5", "--json", "-", "-q"]))
    assert json.loads(analysis.stdout)  # the store is analyzable as written


# --- resume after SIGKILL, and torchrun ---------------------------------------------------------------

# The CLI exactly as `python -m sdetool`, except that every finished chunk is followed by a pause: the
# SIGKILL then lands between two chunks whatever the machine's speed (chunks take milliseconds here).
_SLOW_CLI = """
import runpy, sys, time
import sdetool.io.checkpoint as checkpoint
write_chunk = checkpoint.WorkFolder.write_chunk
def paused(self, index, chunk):
    write_chunk(self, index, chunk)
    time.sleep(3.0)
checkpoint.WorkFolder.write_chunk = paused
runpy.run_module("sdetool", run_name="__main__", alter_sys=True)
"""


def _env():
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _compare_stores(path, reference):
    for key in ("image", "text"):
        got, expected = _read(path, key), _read(reference, key)
        assert got["ids"] == expected["ids"]
        np.testing.assert_allclose(got["embeddings"], expected["embeddings"], rtol=0, atol=1e-6)
        assert store.read_failed(path, key) == store.read_failed(reference, key)


def test_resume_after_sigkill_equals_an_uninterrupted_run(tmp_path, folder_400, folder_400_reference):
    folder, layout = folder_400
    out = str(tmp_path / "killed.h5")
    work = WorkFolder(out)
    args = _folder_args(folder, out)
    process = subprocess.Popen([sys.executable, "-c", _SLOW_CLI, *args], env=_env(), start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 180
        while not glob.glob(os.path.join(work.path, "chunk-*.npz")):
            assert process.poll() is None, f"exited early ({process.returncode}): {process.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "no chunk written within 180 s"
            time.sleep(0.02)
        assert not os.path.exists(out)
        os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=30)
        try:  # its DataLoader worker, orphaned by the kill
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.stdout.close()
        process.stderr.close()
    chunks = work.done()
    total = work.read_run()["chunks"]
    assert total == 7  # 402 items in chunks of 64
    assert 0 < len(chunks) < total and not os.path.exists(out)
    _assert_bad_input(_invoke(["analyze", out]), "extraction incomplete", f"{len(chunks)} of 7 chunks")

    summary = tmp_path / "resumed.json"
    completed = subprocess.run([sys.executable, "-m", "sdetool", *args, "--json", str(summary)], env=_env(),
                               capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    document = json.loads(summary.read_text())
    assert document["status"] == "written" and document["resumed_items"] == 64 * len(chunks)
    assert document["rows"] == {"image": 400, "text": 400} and document["failed"] == {"image": 2, "text": 0}
    assert not os.path.exists(work.path)
    _compare_stores(out, folder_400_reference)
    assert sorted(store.read_ids(out, "image")) == sorted(layout["good"])


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_torchrun_two_ranks_equal_one_process(tmp_path, folder_400, folder_400_reference):
    folder, _ = folder_400
    out = str(tmp_path / "ranks.h5")
    summary = tmp_path / "ranks.json"
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
         "--master_port", str(_free_port()), "-m", "sdetool", *_folder_args(folder, out), "--device", "cpu",
         "--json", str(summary)],
        env=_env(), timeout=300, capture_output=True, text=True,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    document = json.loads(summary.read_text())  # written once, by rank 0
    assert document["rows"] == {"image": 400, "text": 400} and document["failed"] == {"image": 2, "text": 0}
    assert not os.path.exists(WorkFolder(out).path)
    _compare_stores(out, folder_400_reference)
