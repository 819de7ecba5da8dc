"""Fashion-MNIST (Zalando, MIT): IDX reader, class names and the caption templates of the built-in model.

Both splits ship inside the package (``sdetool/extract/data/fashion_mnist/``, with their licence): the 60k
train split (26 MB gzipped) trains the built-in model and ``finetune``'s default run, the 10k test
split is held out. Nothing is read from outside the install, so a fresh ``pip install`` is enough.
Every file is checked against its SHA-256 when it is read. Pure: numpy and the standard library only.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import dataclass
from functools import lru_cache

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
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
# SHA-256 of the shipped files (Zalando's originals, as Debian's dataset-fashion-mnist carries them).
SHA256 = {
    "train-images-idx3-ubyte.gz": "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
    "train-labels-idx1-ubyte.gz": "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
    "t10k-images-idx3-ubyte.gz": "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
    "t10k-labels-idx1-ubyte.gz": "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
}


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
    try:
        with open(path, "rb") as handle:
            raw = handle.read()
        if os.path.dirname(os.path.abspath(path)) == os.path.abspath(PACKAGED):
            verify(path, raw)
        if path.endswith(".gz"):
            raw = gzip.decompress(raw)
    except (OSError, EOFError, gzip.BadGzipFile) as error:
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
    """Folder holding ``split``: the copy inside sdetool (both splits ship with it)."""
    if split not in _FILES:
        raise BadInputError(f"fashion-mnist split must be 'train' or 'test', got {split!r}")
    missing = [name for name in _FILES[split] if not os.path.isfile(os.path.join(PACKAGED, name))]
    if missing:
        raise BadInputError(f"fashion-mnist {split} split: {', '.join(missing)} missing from {PACKAGED}; the sdetool "
                            "install is incomplete (reinstall it: pip install --force-reinstall sdetool)")
    return PACKAGED


def verify(path: str, raw: bytes) -> None:
    """Refuse a shipped file whose SHA-256 is not the recorded one (a damaged install)."""
    expected = SHA256.get(os.path.basename(path))
    if expected is not None and hashlib.sha256(raw).hexdigest() != expected:
        raise BadInputError(f"{path}: damaged (its SHA-256 is not Fashion-MNIST's); reinstall sdetool")


def load(split: str = "test", folder: str | None = None) -> FashionMNIST:
    """Load a split of Fashion-MNIST from ``folder`` (default: the copy shipped with sdetool).

    The shipped splits are read once per process (the arrays are read-only and shared).
    """
    if folder is None:
        return _load_packaged(split)
    return _load(split, folder)


@lru_cache(maxsize=2)
def _load_packaged(split: str) -> FashionMNIST:
    return _load(split, find_split(split))


def _load(split: str, folder: str) -> FashionMNIST:
    image_file, label_file = (os.path.join(folder, name) for name in _FILES[split])
    images = read_idx(image_file)
    labels = read_idx(label_file).astype(np.int64)
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise BadInputError(f"{folder}: images {images.shape} and labels {labels.shape} do not match")
    return FashionMNIST(split=split, images=images, labels=labels, source=folder)
