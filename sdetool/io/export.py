"""Stores out to the formats other tools read: clip-retrieval's folder, plain ``.npy``, and Parquet.

- ``clip-retrieval``: ``img_emb/img_emb_0.npy`` and ``text_emb/text_emb_0.npy`` (float16, as clip-retrieval
  writes them) and ``metadata/metadata_0.parquet`` (``id``, ``caption``, ``image_path``), row-aligned; its
  index step, autofaiss and plain numpy take the folder as it is.
- ``npy``: ``<key>.npy`` per set and ``metadata.parquet`` (``key``-independent: id, caption, image_path).
- ``parquet``: ``embeddings.parquet``, one row per item: ``id``, ``caption``, ``image_path`` and one
  fixed-size list column per set (the vector).

Rows are streamed in blocks (memory independent of ``n``); every file is written through
:mod:`sdetool.io.atomic`. Sets that are exported together must be row-aligned (the same ids in the same
order, as ``extract`` writes paired data); otherwise the export is refused.
"""

from __future__ import annotations

import os
from contextlib import ExitStack
from dataclasses import dataclass, field

import numpy as np

from sdetool.errors import BadInputError
from sdetool.io import store
from sdetool.io.atomic import atomic_path

FORMATS = ("clip-retrieval", "npy", "parquet")
DTYPES = ("auto", "float16", "float32")
BLOCK_ROWS = 65536
# clip-retrieval's names for the two modalities
CLIP_RETRIEVAL = {"image": ("img_emb", "img_emb_0.npy"), "text": ("text_emb", "text_emb_0.npy")}


@dataclass
class ExportResult:
    out: str
    format: str
    rows: int
    files: list[str] = field(default_factory=list)
    sets: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"out": self.out, "format": self.format, "rows": self.rows, "sets": self.sets, "files": self.files}


def _check_out(out: str, overwrite: bool) -> None:
    if os.path.exists(out) and not os.path.isdir(out):
        raise BadInputError(f"--out {out}: is a file; expected a folder to write the export into")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise BadInputError(f"--out {out}: the folder is not empty; pass --overwrite to replace what the export "
                            "writes there, or give a new folder")
    parent = os.path.dirname(os.path.abspath(out))
    if not os.path.isdir(parent):
        raise BadInputError(f"--out {out}: folder {parent} does not exist")


def _aligned_sets(path: str, keys: list[str]) -> tuple[dict, list[str] | None]:
    """The sets, which must share their rows (equal ids where they have ids, equal counts), and the ids."""
    matrices = store.open_matrices(path)
    missing = [key for key in keys if key not in matrices]
    if missing:
        raise BadInputError(f"{path}: no set {missing[0]!r}; its sets: {', '.join(matrices)}")
    counts = {key: matrices[key].shape[0] for key in keys}
    if len(set(counts.values())) > 1:
        raise BadInputError(f"{path}: sets {', '.join(f'{k} ({v} rows)' for k, v in counts.items())} are not "
                            "row-aligned; export them one at a time with --key")
    ids = None
    for key in keys:
        these = store.read_ids(path, key)
        if these is not None:
            if ids is not None and these != ids:
                raise BadInputError(f"{path}: sets {keys[0]!r} and {key!r} are not row-aligned (their ids differ); "
                                    "export them one at a time with --key")
            ids = these
    return {key: matrices[key] for key in keys}, ids


def _metadata(path: str, keys: list[str], ids: list[str] | None, rows: int) -> dict:
    """id, caption, image_path per row (empty strings where the store does not know them)."""
    def first(name: str) -> list[str]:
        for key in keys:
            values = store.read_strings(path, key, name)
            if values is not None and len(values) == rows:
                return values
        return [""] * rows

    return {"id": ids if ids is not None else [str(i) for i in range(rows)], "caption": first(store.CAPTIONS),
            "image_path": first(store.PATHS)}


def _dtype(matrix, dtype: str, default: str | None) -> np.dtype:
    if dtype != "auto":
        return np.dtype(dtype)
    return np.dtype(default or ("float16" if matrix.dtype == np.float16 else "float32"))


def _write_npy(matrix, path: str, dtype: np.dtype, on_rows) -> None:
    rows, dim = matrix.shape
    with atomic_path(path) as temporary:
        array = np.lib.format.open_memmap(temporary, mode="w+", dtype=dtype, shape=(rows, dim))
        with matrix.reader() as read:
            for start in range(0, rows, BLOCK_ROWS):
                stop = min(rows, start + BLOCK_ROWS)
                array[start:stop] = np.asarray(read(start, stop), dtype=np.float32).astype(dtype, copy=False)
                on_rows(stop - start)
        array.flush()
        del array


def _write_table(columns: dict, path: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_path(path) as temporary:
        pq.write_table(pa.table(columns), temporary)


def _write_parquet_vectors(sets: dict, metadata: dict, path: str, dtype: str, on_rows) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = next(iter(sets.values())).shape[0]
    with atomic_path(path) as temporary, ExitStack() as stack:
        reads = {key: stack.enter_context(matrix.reader()) for key, matrix in sets.items()}
        writer = None
        for start in range(0, max(rows, 1), BLOCK_ROWS):
            stop = min(rows, start + BLOCK_ROWS)
            columns = {name: pa.array(values[start:stop], type=pa.string()) for name, values in metadata.items()}
            for key, read in reads.items():
                block = np.asarray(read(start, stop), dtype=np.float32).astype(_dtype(sets[key], dtype, None))
                columns[key] = pa.FixedSizeListArray.from_arrays(pa.array(block.reshape(-1)), block.shape[1])
            table = pa.table(columns)
            if writer is None:
                writer = stack.enter_context(pq.ParquetWriter(temporary, table.schema))
            writer.write_table(table)
            on_rows(stop - start)


def export(path: str, out: str, format: str = "clip-retrieval", dtype: str = "auto", keys: list[str] | None = None,
           overwrite: bool = False, progress=None) -> ExportResult:
    """Write the sets of the store ``path`` into the folder ``out`` in ``format`` (see the module).

    ``progress``: an object with ``start(label, total_rows)``, ``advance(rows)`` and ``finish()`` (the CLI's
    bar), or None."""
    if format not in FORMATS:
        raise BadInputError(f"--format {format!r}: expected one of {', '.join(FORMATS)}")
    if dtype not in DTYPES:
        raise BadInputError(f"--dtype {dtype!r}: expected one of {', '.join(DTYPES)}")
    available = list(store.open_matrices(path))
    if format == "clip-retrieval":
        wanted = list(keys) if keys else [key for key in CLIP_RETRIEVAL if key in available]
        if not wanted:
            raise BadInputError(f"{path}: clip-retrieval's layout holds the sets 'image' and 'text'; this store has "
                                f"{', '.join(available)}; use --format npy or parquet")
        unknown = [key for key in wanted if key not in CLIP_RETRIEVAL]
        if unknown:
            raise BadInputError(f"--key {unknown[0]}: clip-retrieval's layout holds only 'image' and 'text'; use "
                                "--format npy or parquet")
    else:
        wanted = list(keys or available)
    _check_out(out, overwrite)
    sets, ids = _aligned_sets(path, wanted)
    rows = next(iter(sets.values())).shape[0]
    metadata = _metadata(path, wanted, ids, rows)
    os.makedirs(out, exist_ok=True)
    on_rows = progress.advance if progress is not None else (lambda count: None)
    if progress is not None:
        progress.start(path, rows * (1 if format == "parquet" else len(sets)))
    files = []
    if format == "clip-retrieval":
        for key, matrix in sets.items():
            folder, name = CLIP_RETRIEVAL[key]
            os.makedirs(os.path.join(out, folder), exist_ok=True)
            files.append(os.path.join(folder, name))
            _write_npy(matrix, os.path.join(out, files[-1]), _dtype(matrix, dtype, "float16"), on_rows)
        os.makedirs(os.path.join(out, "metadata"), exist_ok=True)
        files.append(os.path.join("metadata", "metadata_0.parquet"))
        _write_table(metadata, os.path.join(out, files[-1]))
    elif format == "npy":
        for key, matrix in sets.items():
            files.append(f"{key}.npy")
            _write_npy(matrix, os.path.join(out, files[-1]), _dtype(matrix, dtype, None), on_rows)
        files.append("metadata.parquet")
        _write_table(metadata, os.path.join(out, files[-1]))
    else:
        files.append("embeddings.parquet")
        _write_parquet_vectors(sets, metadata, os.path.join(out, files[-1]), dtype, on_rows)
    if progress is not None:
        progress.finish()
    return ExportResult(out=out, format=format, rows=rows, files=files, sets=list(sets))
