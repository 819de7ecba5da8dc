"""Held-out evaluation of a dual encoder: retrieval recalls and zero-shot accuracy (pure numpy).

Captions may repeat (Fashion-MNIST has 60 distinct captions for 10k images), so retrieval runs over
*distinct* texts: image -> text is a hit at ``k`` when the image's own caption is among the ``k``
nearest distinct texts; text -> image takes every distinct text as a query and is a hit when one of
the ``k`` nearest images is paired with it. With unique captions both are the usual Recall@k.
"""

from __future__ import annotations

import numpy as np

RECALL_KS = (1, 5, 10)


def unit_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (zero rows stay zero), float32."""
    matrix = np.asarray(matrix, dtype=np.float32)
    return matrix / np.maximum(np.linalg.norm(matrix, axis=1, keepdims=True), 1e-12)


def _hits(similarity: np.ndarray, relevant, ks) -> np.ndarray:
    """Per query (row) and k: 1 if a relevant column is among the k most similar. ``relevant(rows, top)``."""
    top = np.argsort(-similarity, axis=1, kind="stable")[:, : max(ks)]
    found = relevant(top)  # (q, max k) bool
    return np.stack([found[:, :k].any(axis=1) for k in ks], axis=1)


def retrieval_recalls(image: np.ndarray, text: np.ndarray, text_rows: np.ndarray, ks=RECALL_KS,
                      chunk: int = 1024) -> dict[str, float]:
    """Image->text and text->image Recall@k over paired rows whose distinct texts are ``text``.

    Parameters
    ----------
    image : ndarray (n, d)
        Held-out image embeddings, row i paired with distinct text ``text_rows[i]``.
    text : ndarray (m, d)
        One embedding per distinct text.
    text_rows : ndarray (n,) int
    """
    image, text, text_rows = unit_rows(image), unit_rows(text), np.asarray(text_rows)
    ks = tuple(k for k in ks if k >= 1)
    i2t = np.zeros(len(ks))
    for start in range(0, len(image), chunk):
        stop = min(start + chunk, len(image))
        own = text_rows[start:stop]
        i2t += _hits(image[start:stop] @ text.T, lambda top: top == own[:, None], ks).sum(axis=0)
    t2i = np.zeros(len(ks))
    for start in range(0, len(text), chunk):
        stop = min(start + chunk, len(text))
        queries = np.arange(start, stop)
        t2i += _hits(text[start:stop] @ image.T, lambda top: text_rows[top] == queries[:, None], ks).sum(axis=0)
    result = {f"image_to_text_R@{k}": float(v / len(image)) for k, v in zip(ks, i2t)}
    result.update({f"text_to_image_R@{k}": float(v / len(text)) for k, v in zip(ks, t2i)})
    return result


def zero_shot_accuracy(image: np.ndarray, prototypes: np.ndarray, labels: np.ndarray) -> float:
    """Share of images whose most similar class prototype (K, d) is their label."""
    predicted = np.argmax(unit_rows(image) @ unit_rows(prototypes).T, axis=1)
    return float(np.mean(predicted == np.asarray(labels)))


def recall_order(name: str) -> tuple:
    """Sort key of recall names: ``image_to_text_R@10`` after ``image_to_text_R@5``."""
    direction, _, k = name.rpartition("@")
    return direction, int(k) if k.isdigit() else 0
