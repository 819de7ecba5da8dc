#!/usr/bin/env python
"""Does removing the noise band change zero-shot accuracy and retrieval? (``sdetool.SpectralBands``)

On the built-in model's 10,000 held-out Fashion-MNIST test pairs: the image and text embeddings as stored,
then each set projected onto its strong + weak bands and mapped back (``SpectralBands().fit`` on that set,
``inverse_transform(transform(X))``: the noise band removed), under the default null (``ddpa``) and under
``mp``. Zero-shot accuracy uses class prototypes (per class, the normalised mean of its items' caption
embeddings); recall is over the distinct captions (as ``sdetool finetune``'s evaluation counts it).

    python benchmarks/denoise_zero_shot.py                 # extracts the store once into bench-data/
"""

from __future__ import annotations

import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
STORE = os.path.join(HERE, os.pardir, "bench-data", "denoise", "test.h5")


def _store() -> str:
    from sdetool.api import ExtractOptions, extract, open_source

    if not os.path.isfile(STORE):
        os.makedirs(os.path.dirname(STORE), exist_ok=True)
        extract("builtin:lit-fmnist", open_source(), STORE, ExtractOptions(batch_size=256))
    return STORE


def _metrics(image: np.ndarray, text: np.ndarray, labels: np.ndarray, captions: list[str]) -> dict:
    from sdetool.finetune.evaluation import retrieval_recalls, unit_rows, zero_shot_accuracy

    distinct, rows = np.unique(np.array(captions), return_inverse=True)
    first = np.array([np.flatnonzero(rows == i)[0] for i in range(len(distinct))])
    unit_text = unit_rows(text)
    prototypes = np.stack([unit_text[labels == c].mean(axis=0) for c in np.unique(labels)])
    recalls = retrieval_recalls(image, text[first], rows)
    return {"zero-shot accuracy": zero_shot_accuracy(image, prototypes, labels), **recalls}


def main() -> None:
    import sdetool
    from sdetool.extract.data.items import builtin_data
    from sdetool.io import store

    path = _store()
    data = builtin_data("fashion-mnist")
    ids = store.read_ids(path, "image")
    assert ids == data.ids, "the store's rows are the built-in test split in order"
    sets = {}
    for key in ("image", "text"):
        with store.open_matrices(path)[key].reader() as read:
            sets[key] = np.asarray(read(0, len(ids)), dtype=np.float64)
    labels, captions = np.asarray(data.labels), list(data.texts)
    rows = [("as stored", "-", _metrics(sets["image"], sets["text"], labels, captions), "")]
    for null in ("ddpa", "mp"):
        denoised, removed = {}, []
        for key, matrix in sets.items():
            bands = sdetool.SpectralBands(null=null).fit(matrix)
            denoised[key] = bands.inverse_transform(bands.transform(matrix))
            removed.append(f"{key} {bands.n_components_['noise']} comps, {100 * bands.energy_shares_['noise']:.2f}%")
        rows.append(("noise band removed (image and text)", null,
                     _metrics(denoised["image"], denoised["text"], labels, captions), "; ".join(removed)))
        rows.append(("noise band removed (image only)", null,
                     _metrics(denoised["image"], sets["text"], labels, captions), removed[0]))
    names = list(rows[0][2])
    print("| embeddings | null | " + " | ".join(names) + " | removed |")
    print("|---|---|" + "---:|" * len(names) + "---|")
    for label, null, values, removed in rows:
        print(f"| {label} | {null} | " + " | ".join(f"{100 * values[n]:.2f}%" for n in names) + f" | {removed} |")


if __name__ == "__main__":
    sys.exit(main())
