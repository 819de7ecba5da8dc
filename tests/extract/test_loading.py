"""The worker/thread split and reduced-scale JPEG decoding (sdetool.extract.loading, ItemSource.load_image(draft=))."""

import numpy as np
import pytest
from PIL import Image

from sdetool.extract.data.items import image_folder
from sdetool.extract.loading import ImageDataset, Pipeline, best_split, collate, plan_pipeline


def test_decode_bound_model_gets_workers_and_fewer_threads():
    # the built-in CNN on this machine: ~1 ms to decode and preprocess, ~0.3 ms of model per image
    plan = best_split(preprocess_s=1.0e-3, model_s=0.3e-3, cores=2)
    assert (plan.workers, plan.threads) == (1, 1)
    assert "1 workers" in plan.reason and "1.00 ms" in plan.reason


def test_model_bound_model_keeps_every_core():
    # a ViT-B/32 on a CPU: ~4 ms of preprocessing against ~70 ms of model per image
    plan = best_split(preprocess_s=4e-3, model_s=70e-3, cores=2)
    assert (plan.workers, plan.threads) == (0, None)


def test_many_cores_split_by_the_predicted_cost():
    plan = best_split(preprocess_s=8e-3, model_s=1e-3, cores=16)
    predicted = max(8e-3 / plan.workers, 1e-3 * 16 / plan.threads)
    assert plan.workers + plan.threads == 16
    for workers in range(1, 9):  # no other split (workers capped at 8) is predicted to be clearly faster
        assert predicted <= max(8e-3 / workers, 1e-3 * 16 / (16 - workers)) / 0.95 + 1e-12


def test_explicit_workers_and_gpu_skip_the_timing(tmp_path):
    never = lambda pixels: pytest.fail("no timing should run")  # noqa: E731
    assert plan_pipeline(3, "cpu", 1, None, never) == Pipeline(3)
    assert plan_pipeline(None, "cuda:0", 1, None, never).threads is None


def test_plan_pipeline_times_real_items(tmp_path):
    for index in range(40):
        Image.fromarray(np.full((64, 64, 3), index, np.uint8)).save(tmp_path / f"{index:02d}.png")
    source = image_folder(str(tmp_path))
    dataset = ImageDataset(source, lambda image: __import__("torch").zeros(3))
    calls = []
    plan = plan_pipeline(None, "cpu", 1, dataset, lambda pixels: calls.append(pixels.shape))
    assert calls == [(2, 3), (8, 3)]  # a small warm-up call, then the timed one
    assert plan.workers >= 0 and "measured per image" in plan.reason


def test_jpeg_draft_decodes_at_reduced_scale_and_png_is_untouched(tmp_path):
    rng = np.random.default_rng(0)
    photo = (rng.random((480, 640, 3)) * 255).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "a.jpg", quality=90)
    Image.fromarray(photo).save(tmp_path / "b.png")
    source = image_folder(str(tmp_path))
    full = source.load_image(0)
    small = source.load_image(0, draft=("L", (28, 28)))
    assert full.size == (640, 480) and full.mode == "RGB"
    assert small.mode == "L" and 28 <= min(small.size) and small.size[0] <= 640 // 8 * 2
    assert source.load_image(1, draft=("L", (28, 28))).size == (640, 480)  # only JPEGs have a draft mode


def test_dataset_passes_the_transforms_draft(tmp_path):
    from sdetool.extract.models.lit import GrayscaleTransform

    Image.fromarray((np.random.default_rng(1).random((300, 400, 3)) * 255).astype(np.uint8)).save(tmp_path / "x.jpg")
    dataset = ImageDataset(image_folder(str(tmp_path)), GrayscaleTransform())
    index, pixels, reason = dataset[0]
    assert dataset.draft == ("L", (28, 28)) and reason is None and tuple(pixels.shape) == (1, 28, 28)
    indices, stacked, failed = collate([dataset[0], (1, None, "missing file y.jpg")])
    assert indices == [0] and tuple(stacked.shape) == (1, 1, 28, 28) and failed == [(1, "missing file y.jpg")]
