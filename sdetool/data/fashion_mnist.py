"""Fashion-MNIST (Zalando, MIT): IDX reader, class names and the caption templates of the built-in model.

The 10k test split ships inside the package (``sdetool/data/fashion_mnist/``, with its licence);
the 60k train split is read from Debian's ``dataset-fashion-mnist`` package when it is installed
(``/usr/share/datasets/fashion-mnist/``). Pure: numpy and the standard library only.
"""

from __future__ import annotations

import gzip
import os
from dataclasses import dataclass

import numpy as np

from sdetool.errors import BadInputError

CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
# How captions name each class (with its article), in CLASSES order.
PHRASES = (
    "a T-shirt", "a pair of trousers", "a pullover", "a dress", "a coat", "a sandal", "a shirt", "a sneaker",
    "a bag", "an ankle boot",
)
# Caption templates: item i of a split is paired with TEMPLATES[i % len(TEMPLATES)] of its class.
TEMPLATES = (
    "a photo of {}.",
    "a black and white photo of {}.",
    "a low resolution photo of {}.",
    "a small picture of {}.",
    "a grayscale image of {}.",
    "a product photo of {}.",
)
PACKAGED = os.path.join(os.path.dirname(__file__), "fashion_mnist")
DEBIAN = "/usr/share/datasets/fashion-mnist"
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


@dataclass(frozen=True)
class FashionMNIST:
    """One split: ``images`` (n, 28, 28) uint8, ``labels`` (n,) int64, and where it was read from."""

    split: str
    images: np.ndarray
    labels: np.ndarray
    source: str

    def captions(self) -> list[str]:
        """The paired caption of every item: its class phrase in template ``i % len(TEMPLATES)``."""
        return [TEMPLATES[i % len(TEMPLATES)].format(PHRASES[label]) for i, label in enumerate(self.labels)]


def read_idx(path: str) -> np.ndarray:
    """Read a (gzipped) IDX file of unsigned bytes into an array of the shape its header gives."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            raw = handle.read()
    except (OSError, EOFError) as error:
        raise BadInputError(f"{path}: cannot read IDX file: {error}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise BadInputError(f"{path}: not an IDX file of unsigned bytes (magic {raw[:4].hex()})")
    ndim = raw[3]
    shape = tuple(int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    offset = 4 + 4 * ndim
    expected = int(np.prod(shape))
    if len(raw) - offset != expected:
        raise BadInputError(f"{path}: header says {shape} ({expected} bytes) but the file holds {len(raw) - offset}")
    return np.frombuffer(raw, dtype=np.uint8, offset=offset).reshape(shape)


def find_split(split: str) -> str:
    """Folder holding ``split``: Debian's package first, then the copy inside sdetool (test only)."""
    if split not in _FILES:
        raise BadInputError(f"fashion-mnist split must be 'train' or 'test', got {split!r}")
    for folder in (DEBIAN, PACKAGED):
        if all(os.path.exists(os.path.join(folder, name)) for name in _FILES[split]):
            return folder
    raise BadInputError(
        f"fashion-mnist {split} split not found in {DEBIAN} (install Debian's dataset-fashion-mnist package); "
        "only the test split ships with sdetool"
    )


def load(split: str = "test", folder: str | None = None) -> FashionMNIST:
    """Load a split of Fashion-MNIST from ``folder`` (default: :func:`find_split`)."""
    folder = folder or find_split(split)
    image_file, label_file = (os.path.join(folder, name) for name in _FILES[split])
    images = read_idx(image_file)
    labels = read_idx(label_file).astype(np.int64)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise BadInputError(f"{folder}: images {images.shape} and labels {labels.shape} do not match")
    return FashionMNIST(split=split, images=images, labels=labels, source=folder)
