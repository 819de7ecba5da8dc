"""The end of an extraction: the store written atomically from the finished chunks, and what failed.

Reads the work folder (:mod:`sdetool.io.checkpoint`), writes the store (:mod:`sdetool.io.store`) in item order
with the layer sets' widths and attributes, records every failure in the store and reports the first few.
"""

from __future__ import annotations

import json

from sdetool.errors import BadInputError
from sdetool.extract.data.items import ItemSource
from sdetool.extract.layers import LAYER_SEPARATOR, base_modality, layer_key
from sdetool.io.checkpoint import WorkFolder


def assemble(out: str, folder: WorkFolder, source: ItemSource, keys: list[str], encoder, config: dict,
              attrs: dict, layers: dict | None = None) -> tuple[dict, dict]:
    """Write the store from the chunks (atomically), then remove the work folder. Returns rows and failures."""
    chunks = range(int(folder.read_run()["chunks"]))
    rows, failures = {key: 0 for key in keys}, {key: [] for key in keys}
    for index in chunks:
        chunk = folder.read_chunk(index, keys, arrays=False)  # counts first: the store is sized from them
        for key in keys:
            rows[key] += len(chunk.rows)
        for item, key, reason in zip(chunk.failed_index, chunk.failed_key, chunk.failed_reason):
            failures.setdefault(key, []).append((source.ids[int(item)], reason))
    for key in keys:  # a layer's set misses the items its modality missed
        failures[key] = failures.get(base_modality(key), [])
    total = rows[keys[0]]
    if total == 0:
        first = next((f for records in failures.values() for f in records), ("?", "?"))
        folder.remove()
        raise BadInputError(f"{source.location}: no item could be embedded ({sum(map(len, failures.values()))} failed; "
                            f"first: {first[0]}: {first[1]})")
    try:
        write_store(out, folder, source, keys, encoder, config, attrs, failures, total, layers or {})
    except OSError as error:  # a full disk, a folder made read-only meanwhile: the old file stays as it was
        raise BadInputError(f"--out {out}: cannot write the store ({str(error).splitlines()[0]}); the finished "
                            f"chunks stay in {folder.path}") from None
    folder.remove()
    return rows, {key: failures.get(key, []) for key in keys}


FIRST_FAILURES = 5


def assembled(out: str, folder: WorkFolder, source: ItemSource, keys: list[str], encoder, config: dict,
               attrs: dict, layers: dict | None = None) -> tuple[dict, dict]:
    """:func:`assemble`, with the failures cut to what the result shows (all of them stay in the store)."""
    rows, failures = assemble(out, folder, source, keys, encoder, config, attrs, layers)
    return rows, failure_details(out, failures)


def failure_details(out: str, failures: dict) -> dict:
    """``failures`` (set -> [(id, reason)]) as the result's ``failed`` counts, first records and their location."""
    from sdetool.io.store import FAILED

    shown = {key: records for key, records in failures.items() if records and base_modality(key) == key}
    return {"failed": {key: len(records) for key, records in failures.items()},  # layer sets: their modality's
            "failures": {key: [{"id": str(i), "reason": str(r)} for i, r in records[:FIRST_FAILURES]]
                         for key, records in shown.items()},
            "failures_in": {key: f"{out}:/{key}/{FAILED}" for key in shown}}


def set_widths(folder: WorkFolder, keys: list[str]) -> dict:
    """Each set's width, from the first chunk that holds rows."""
    for index in range(int(folder.read_run()["chunks"])):
        chunk = folder.read_chunk(index, keys)
        if len(chunk.rows):
            return {key: int(chunk.embeddings[key].shape[1]) for key in keys}
    return {}


def write_store(out: str, folder: WorkFolder, source: ItemSource, keys: list[str], encoder, config: dict,
                 attrs: dict, failures: dict, total: int, layers: dict) -> None:
    """The store, atomically, from the chunks in item order."""
    from sdetool.io import store

    names = {layer_key(modality, i): name for modality, entries in layers.items() for i, name in entries}
    widths = set_widths(folder, keys) if names else {}
    with store.StoreWriter(out, mode="w") as writer:
        writer.set_attrs({"extract_config": json.dumps(config, sort_keys=True), "complete": True})
        targets = {}
        for key in keys:
            modality = base_modality(key)
            set_attrs = dict(attrs, modality=modality, failed=len(failures.get(key, [])))
            if key in names:  # a layer: which one, and how it was pooled (no projection)
                set_attrs.update(layer=int(key.rpartition(LAYER_SEPARATOR)[2]), layer_name=names[key],
                                 layers_of=modality, pooling=encoder.layer_pooling(modality))
            targets[key] = writer.create_set(key, widths.get(key, encoder.dim), dtype=config["store_dtype"],
                                             with_ids=True, attrs=set_attrs, expected_rows=total)
        for index in range(int(folder.read_run()["chunks"])):
            chunk = folder.read_chunk(index, keys)
            ids = [source.ids[int(item)] for item in chunk.rows]
            for key in keys:
                if len(ids):
                    targets[key].append(chunk.embeddings[key], ids)
                    for name, values in ((store.CAPTIONS, source.texts), (store.PATHS, source.image_paths)):
                        if values is not None:  # what each row was made from, for exports (clip-retrieval metadata)
                            targets[key].append_strings(name, ["" if values[int(i)] is None else values[int(i)]
                                                               for i in chunk.rows])
            if chunk.tokens is not None and len(ids):
                targets["image"].append_tokens(chunk.tokens)
        for key in keys:
            targets[key].write_failed(failures.get(key, []))
