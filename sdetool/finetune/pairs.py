"""The pairs ``finetune`` trains and evaluates on: a training set and a held-out set of image-text pairs.

Three origins:

- ``builtin:fashion-mnist``: the 60k train split for training and the 10k test split held out (both
  ship with sdetool).
- any other item source (``--images`` with captions, ``--manifest``): held-out items are those whose
  id hashes below ``eval_fraction`` (stable across runs, resumes and ranks).
- an embedding store (``--embeddings``, ``--target head``): row ``i`` of ``image`` and ``text`` is a pair.

Pure: numpy, hashing and the store reader.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from sdetool.errors import BadInputError
from sdetool.extract.data.items import ItemSource

POSITIVES = ("auto", "pair", "text", "class")


@dataclass
class PairSet:
    """Pairs of one split.

    ``rows`` index the item source (model target) or the store's rows (head target). ``text_rows``
    maps each pair to its distinct text (pairs with the same text share a row), ``texts`` lists the
    distinct texts (model target), ``image``/``text`` hold cached embeddings (head target).
    """

    ids: list[str]
    rows: np.ndarray
    text_rows: np.ndarray
    texts: list[str] | None = None
    labels: np.ndarray | None = None
    image: np.ndarray | None = None
    text: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, positions) -> "PairSet":
        """The pairs at ``positions`` (in that order), their distinct texts renumbered."""
        positions = np.asarray(positions, dtype=np.int64)
        used, text_rows = _distinct(list(self.text_rows[positions]))

        def pick(array):
            return None if array is None else array[positions]

        return PairSet(ids=[self.ids[i] for i in positions], rows=self.rows[positions], text_rows=text_rows,
                       texts=None if self.texts is None else [self.texts[i] for i in used],
                       labels=pick(self.labels), image=pick(self.image), text=pick(self.text))

    def groups(self, positives: str) -> np.ndarray:
        """Positive group of every pair: itself, its distinct text, or its class."""
        if positives == "auto":
            positives = "class" if self.labels is not None else "text"
        if positives == "class":
            if self.labels is None:
                raise BadInputError("--positives class: the data has no class labels; use text or pair")
            return np.asarray(self.labels, dtype=np.int64)
        if positives == "text":
            return self.text_rows.astype(np.int64)
        return np.arange(len(self), dtype=np.int64)


@dataclass
class PairData:
    """Training and held-out pairs, where they came from, and what a user should know."""

    train: PairSet
    held_out: PairSet
    description: str
    fingerprint: str
    source: ItemSource | None = None
    eval_source: ItemSource | None = None
    classes: tuple[str, ...] = ()
    notes: list[str] = field(default_factory=list)


# Cached pairs are often the held-out pairs of an item source (``--export-embeddings``, ``reproduce``):
# splitting them again by the same hash would put every one of them on the held-out side.
CACHED_PAIRS_SALT = "sdetool:cached-pairs:"


def held_out_mask(ids: list[str], fraction: float, salt: str = "") -> np.ndarray:
    """True for ids whose SHA-1 (of ``salt + id``) falls below ``fraction``: a split that does not depend on order.

    Different salts give independent splits of the same ids.
    """
    if not 0.0 < fraction < 1.0:
        raise BadInputError(f"--eval-fraction must be in (0, 1), got {fraction!r}")
    cut = int(fraction * 2**32)
    return np.array([int.from_bytes(hashlib.sha1((salt + i).encode("utf-8", "surrogatepass")).digest()[:4], "big")
                     < cut for i in ids], dtype=bool)


def _distinct(values: list) -> tuple[list, np.ndarray]:
    """Distinct values in order of first appearance and each value's index among them."""
    index: dict = {}
    rows = np.array([index.setdefault(v, len(index)) for v in values], dtype=np.int64)
    return list(index), rows


def _pairs(source: ItemSource, rows: np.ndarray) -> PairSet:
    texts = [source.texts[i] for i in rows]
    distinct, text_rows = _distinct(texts)
    labels = source.labels[rows] if source.labels is not None else None
    return PairSet(ids=[source.ids[i] for i in rows], rows=rows, text_rows=text_rows, texts=distinct, labels=labels)


def _check_pairs(source: ItemSource) -> np.ndarray:
    """Rows with both an image and a text; a source without both modalities is refused."""
    if not (source.has_images and source.has_texts):
        raise BadInputError(f"{source.location}: fine-tuning needs image-text pairs; this source has "
                            f"{' and '.join(source.modalities) or 'nothing'} only")
    rows = np.array([i for i, text in enumerate(source.texts) if text is not None], dtype=np.int64)
    if rows.size < 2:
        raise BadInputError(f"{source.location}: {rows.size} items have both an image and a text; need at least 2")
    return rows


def from_source(source: ItemSource, eval_fraction: float = 0.1, eval_source: ItemSource | None = None) -> PairData:
    """Pairs of an item source; held out by id hash unless a separate ``eval_source`` is given."""
    rows = _check_pairs(source)
    notes = [f"{len(source) - rows.size} items without a text were left out"] if rows.size < len(source) else []
    if eval_source is not None:
        train, held = _pairs(source, rows), _pairs(eval_source, _check_pairs(eval_source))
        description = f"{source.location} (train) / {eval_source.location} (held out)"
        fingerprint = source.fingerprint() + "+" + eval_source.fingerprint()
    else:
        mask = held_out_mask([source.ids[i] for i in rows], eval_fraction)
        if mask.all() or not mask.any():
            raise BadInputError(f"--eval-fraction {eval_fraction}: leaves {int((~mask).sum())} training and "
                                f"{int(mask.sum())} held-out pairs of {rows.size}; both must be non-empty")
        train, held = _pairs(source, rows[~mask]), _pairs(source, rows[mask])
        description = f"{source.location}: {len(train)} training / {len(held)} held-out pairs (by id hash)"
        fingerprint = f"{source.fingerprint()}:eval={eval_fraction}"
        eval_source = source
    return PairData(train, held, description, fingerprint, source, eval_source, tuple(source.classes), notes)


def builtin_pairs(name: str, eval_fraction: float = 0.1) -> PairData:
    """``builtin:fashion-mnist``: train split for training and the test split held out (see module doc)."""
    from sdetool.extract.data.items import builtin_data

    base, _, split = name.partition(":")
    if split:
        return from_source(builtin_data(name), eval_fraction)
    return from_source(builtin_data(base + ":train"), eval_source=builtin_data(base + ":test"))


def from_store(path: str, eval_fraction: float = 0.1) -> PairData:
    """Cached pairs of an embedding store: its ``image`` and ``text`` sets, row ``i`` being one pair."""
    from sdetool.io import store

    matrices = store.open_matrices(path)
    missing = [key for key in ("image", "text") if key not in matrices]
    if missing:
        raise BadInputError(f"--embeddings {path}: --target head needs both an 'image' and a 'text' set; "
                            f"sets found: {', '.join(matrices) or 'none'}")
    n_image, n_text = matrices["image"].shape[0], matrices["text"].shape[0]
    if n_image != n_text:
        raise BadInputError(f"--embeddings {path}: mismatched pair counts: 'image' has {n_image} rows and "
                            f"'text' has {n_text}; row i of each must be one pair")
    arrays = {}
    for key in ("image", "text"):
        with matrices[key].reader() as read:
            arrays[key] = np.asarray(read(0, n_image), dtype=np.float32)
        if not np.isfinite(arrays[key]).all():
            raise BadInputError(f"--embeddings {path}: set {key!r} holds NaN or infinite values")
    ids, text_ids = store.read_ids(path, "image"), store.read_ids(path, "text")
    if ids is not None and text_ids is not None and ids != text_ids:
        first = next(i for i, (a, b) in enumerate(zip(ids, text_ids)) if a != b)
        raise BadInputError(f"--embeddings {path}: rows are not paired: row {first} is {ids[first]!r} in 'image' and "
                            f"{text_ids[first]!r} in 'text'")
    ids = ids or text_ids or [f"row-{i}" for i in range(n_image)]
    _, text_rows = _distinct([row.tobytes() for row in arrays["text"]])  # equal texts have equal embeddings
    mask = held_out_mask(ids, eval_fraction, CACHED_PAIRS_SALT)
    if mask.all() or not mask.any():
        raise BadInputError(f"--eval-fraction {eval_fraction}: leaves {int((~mask).sum())} training and "
                            f"{int(mask.sum())} held-out pairs of {n_image}; both must be non-empty")

    pairs = PairSet(ids=ids, rows=np.arange(n_image), text_rows=text_rows, image=arrays["image"], text=arrays["text"])
    digest = hashlib.sha256()
    for key in ("image", "text"):
        digest.update(memoryview(np.ascontiguousarray(arrays[key])).cast("B"))
    digest = digest.hexdigest()
    return PairData(pairs.take(np.flatnonzero(~mask)), pairs.take(np.flatnonzero(mask)), f"{path}: {int((~mask).sum())} training / {int(mask.sum())} "
                    f"held-out cached pairs (by salted id hash)", f"sha256:{digest}:eval={eval_fraction}:split=salted")
