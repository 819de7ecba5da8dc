"""The sdetool HDF5 embedding store: layout, writer and chunked reader. The only module importing h5py.

Layout (format version 1, documented in ``docs/hdf5-format.md``)::

    /                   attrs: format = "sdetool-embeddings", format_version = 1, created_by = "sdetool X.Y"
    /<key>/embeddings   float32 or float16, shape (n, d), chunked along rows
    /<key>/ids          utf-8 strings, shape (n,)            (optional for files written by others)
    /<key>              attrs: modality, model, normalized (bool), dtype_computed, free provenance

Readers stream row blocks, so memory stays O(block * d) whatever ``n`` is. Any other 2-D dataset of
any HDF5 file can be read as ``file.h5:/path/to/dataset``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import h5py
import numpy as np

from sdetool import __version__
from sdetool.errors import BadInputError, BadStoreError, NewerVersionError, UnknownKeyError
from sdetool.io.atomic import atomic_path
from sdetool.io.versions import STORE_FORMAT_VERSION, check_store_version

FORMAT = "sdetool-embeddings"
FORMAT_VERSION = STORE_FORMAT_VERSION
EMBEDDINGS = "embeddings"
IDS = "ids"
TOKENS = "tokens"
FAILED = "failed"
CAPTIONS = "captions"  # the text of each row's item (extract, when the items have texts)
PATHS = "paths"  # the image file of each row's item (extract, when the items are files)
STORE_DTYPES = ("float32", "float16")
_TARGET_CHUNK_BYTES = 1 << 20  # 1 MiB HDF5 chunks: large enough for throughput, small for appends


def open_file(path: str) -> h5py.File:
    """Open an HDF5 file read-only; a missing, non-HDF5 or damaged file raises :class:`BadStoreError`."""
    if not os.path.exists(path) or os.path.isdir(path):
        from sdetool.io.checkpoint import incomplete_message

        unfinished = incomplete_message(path)
        if unfinished:
            raise BadStoreError(unfinished)
        raise BadStoreError(f"{path}: is a folder, expected an HDF5 file" if os.path.isdir(path) else f"{path}: no such file")
    if not h5py.is_hdf5(path):
        raise BadStoreError(f"{path}: not an HDF5 file (no HDF5 signature)")
    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise BadStoreError(f"{path}: cannot open HDF5 file (truncated or damaged?): {_short(error)}") from None
    try:
        if _decode(handle.attrs.get("format", FORMAT)) == FORMAT:  # another tool's own format_version is its business
            check_store_version(handle.attrs, path)
    except NewerVersionError:
        handle.close()
        raise
    except (BadInputError, OSError, RuntimeError) as error:  # an unreadable version, damaged attributes
        handle.close()
        raise BadStoreError(str(error) if isinstance(error, BadInputError) else
                            f"{path}: cannot read the root attributes (damaged?): {_short(error)}") from None
    return handle


def _short(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def is_store(handle: h5py.File) -> bool:
    """True when the file declares the sdetool layout or holds at least one ``/<key>/embeddings``."""
    return handle.attrs.get("format") == FORMAT or bool(store_keys(handle))


def store_keys(handle: h5py.File) -> list[str]:
    """Keys of the embedding sets (top-level groups holding an ``embeddings`` dataset), in file order."""
    keys = []
    for name, item in handle.items():
        if isinstance(item, h5py.Group) and isinstance(item.get(EMBEDDINGS), h5py.Dataset):
            keys.append(name)
    return keys


def matrix_datasets(handle: h5py.File) -> list[str]:
    """Paths of every 2-D dataset in the file (for error messages about files written by others)."""
    found: list[str] = []

    def visit(name: str, item) -> None:
        if isinstance(item, h5py.Dataset) and item.ndim == 2:
            found.append("/" + name)

    handle.visititems(visit)
    return found


def _decode(value):
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


@dataclass
class H5Matrix:
    """A 2-D HDF5 dataset read in row blocks. Opens its file on demand; safe to pickle.

    Attributes
    ----------
    path : str
        The HDF5 file.
    dataset : str
        Path of the dataset inside the file.
    key : str
        The embedding-set name it belongs to.
    shape : (int, int)
    dtype : numpy.dtype
    attrs : dict
        The set's attributes (the group's for a store, the dataset's otherwise).
    chunk_rows : int or None
        Rows per HDF5 chunk (reads aligned to it are fastest).
    """

    path: str
    dataset: str
    key: str
    shape: tuple[int, ...]  # (n, d); (n, h, w, c) for token grids
    dtype: np.dtype
    attrs: dict = field(default_factory=dict)
    chunk_rows: int | None = None

    @property
    def label(self) -> str:
        return f"{self.path}:{self.dataset}"

    @contextmanager
    def reader(self) -> Iterator:
        """Yield a function ``read(start, stop) -> ndarray`` of rows ``start:stop``."""
        handle = open_file(self.path)
        try:
            data = handle[self.dataset]

            def read(start: int, stop: int) -> np.ndarray:
                try:
                    return data[start:stop]
                except (OSError, RuntimeError) as error:
                    raise BadStoreError(
                        f"{self.path}: cannot read rows {start}:{stop} of {self.dataset} "
                        f"(truncated or damaged file?): {_short(error)}"
                    ) from None

            yield read
        finally:
            handle.close()


def _describe(handle: h5py.File, path: str, dataset_path: str, key: str, attrs: dict) -> H5Matrix:
    data = handle[dataset_path]
    return H5Matrix(
        path=path,
        dataset=dataset_path,
        key=key,
        shape=tuple(int(x) for x in data.shape),
        dtype=data.dtype,
        attrs={name: _decode(value) for name, value in {**data.attrs, **attrs}.items()},  # the set's over the dataset's
        chunk_rows=int(data.chunks[0]) if data.chunks else None,
    )


def open_matrices(path: str, dataset: str | None = None) -> dict[str, H5Matrix]:
    """Describe the matrices of an HDF5 file, keyed by set name.

    Parameters
    ----------
    path : str
        The file.
    dataset : str, optional
        An explicit dataset path (``file.h5:/path``); its key is the path without the leading slash.
        Without it the file must be an sdetool store, and every set is returned.

    Raises
    ------
    BadStoreError
        Unreadable file, no such dataset, or a foreign file without an explicit dataset path.
    """
    handle = open_file(path)
    try:
        if dataset is not None:
            item = handle.get(dataset) if dataset else None
            if not isinstance(item, h5py.Dataset):
                found = ", ".join(matrix_datasets(handle)) or "none"
                raise UnknownKeyError(f"{path}: no dataset {dataset!r}; 2-D datasets in the file: {found}")
            key = dataset.strip("/") or dataset
            return {key: _describe(handle, path, dataset, key, dict(item.attrs))}
        keys = store_keys(handle)
        if not keys:
            found = ", ".join(matrix_datasets(handle)) or "none"
            raise BadStoreError(
                f"{path}: not an sdetool store (no /<key>/embeddings); name a dataset as "
                f"{path}:/path/to/dataset (2-D datasets found: {found})"
            )
        return {
            key: _describe(handle, path, f"/{key}/{EMBEDDINGS}", key, dict(handle[key].attrs)) for key in keys
        }
    except (OSError, RuntimeError) as error:
        raise BadStoreError(f"{path}: cannot read HDF5 metadata (truncated or damaged?): {_short(error)}") from None
    finally:
        handle.close()


def open_tokens(path: str, key: str) -> H5Matrix | None:
    """The patch-token grids ``/<key>/tokens`` (n, h, w, c) of a store, read in image blocks; None without them."""
    handle = open_file(path)
    try:
        item = handle.get(f"{key}/{TOKENS}")
        if not isinstance(item, h5py.Dataset):
            return None
        if item.ndim != 4:
            raise BadStoreError(f"{path}: /{key}/{TOKENS} has shape {item.shape}; expected (n, h, w, c)")
        return _describe(handle, path, f"/{key}/{TOKENS}", key, dict(handle[key].attrs))
    except (OSError, RuntimeError) as error:
        raise BadStoreError(f"{path}: cannot read HDF5 metadata (truncated or damaged?): {_short(error)}") from None
    finally:
        handle.close()


def read_root_attrs(path: str) -> dict:
    """The file's root attributes (``format``, ``created_by``, ``extract_config``...)."""
    handle = open_file(path)
    try:
        return {name: _decode(value) for name, value in handle.attrs.items()}
    finally:
        handle.close()


def read_failed(path: str, key: str) -> list[tuple[str, str]]:
    """The ``(id, reason)`` records of the items ``extract`` skipped for set ``key`` (empty when none)."""
    handle = open_file(path)
    try:
        records = handle.get(f"{key}/{FAILED}")
        return [] if records is None else [(_decode(r["id"]), _decode(r["reason"])) for r in records[()]]
    finally:
        handle.close()


def read_ids(path: str, key: str) -> list[str] | None:
    """The ``ids`` of a set, or None when the set has none."""
    return read_strings(path, key, IDS)


def read_strings(path: str, key: str, name: str) -> list[str] | None:
    """A per-row string column of a set (``ids``, ``captions``, ``paths``), or None when the set has none."""
    handle = open_file(path)
    try:
        values = handle.get(f"{key}/{name}")
        return None if values is None else [_decode(x) for x in values[()]]
    finally:
        handle.close()


# --- writing -------------------------------------------------------------------------------------


def _chunk_rows_for(dim: int, itemsize: int) -> int:
    return int(max(1, min(65536, _TARGET_CHUNK_BYTES // max(1, dim * itemsize))))


class SetWriter:
    """Appends rows (and ids, and patch tokens) to one embedding set of an open :class:`StoreWriter`."""

    def __init__(self, group: h5py.Group, dim: int, dtype: str, with_ids: bool, expected_rows: int | None = None) -> None:
        self._group = group
        self._expected_rows = expected_rows
        self._tokens = None
        rows = _chunk_rows_for(dim, np.dtype(dtype).itemsize)
        if expected_rows:
            rows = max(1, min(rows, expected_rows))
        self._data = group.create_dataset(
            EMBEDDINGS, shape=(0, dim), maxshape=(None, dim), dtype=dtype, chunks=(rows, dim)
        )
        self._ids = None
        if with_ids:
            self._ids = group.create_dataset(
                IDS, shape=(0,), maxshape=(None,), dtype=h5py.string_dtype("utf-8"), chunks=(max(rows, 1024),)
            )

    @property
    def rows(self) -> int:
        return int(self._data.shape[0])

    def append(self, embeddings: np.ndarray, ids: list[str] | None = None) -> None:
        """Append a block of rows, shape ``(rows, d)``; ``ids`` is required when the set has ids."""
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2 or embeddings.shape[1] != self._data.shape[1]:
            raise ValueError(f"expected rows of shape (k, {self._data.shape[1]}), got {embeddings.shape}")
        start, stop = self.rows, self.rows + embeddings.shape[0]
        self._data.resize(stop, axis=0)
        self._data[start:stop] = embeddings
        if self._ids is not None:
            if ids is None or len(ids) != embeddings.shape[0]:
                raise ValueError(f"need {embeddings.shape[0]} ids for this block, got {0 if ids is None else len(ids)}")
            self._ids.resize(stop, axis=0)
            self._ids[start:stop] = list(ids)

    def append_strings(self, name: str, values: list[str]) -> None:
        """Append one per-row string column (``captions``, ``paths``) for a block of rows."""
        column = self._group.get(name)
        if column is None:
            column = self._group.create_dataset(name, shape=(0,), maxshape=(None,), dtype=h5py.string_dtype("utf-8"),
                                                chunks=(1024,))
        start = column.shape[0]
        column.resize(start + len(values), axis=0)
        column[start:] = [str(value) for value in values]

    def append_tokens(self, tokens: np.ndarray) -> None:
        """Append the patch-token grids of a block of rows, shape ``(rows, h, w, c)``, stored float16."""
        tokens = np.asarray(tokens)
        if tokens.ndim != 4:
            raise ValueError(f"tokens must have shape (rows, h, w, c), got {tokens.shape}")
        if self._tokens is None:
            grid = tokens.shape[1:]
            rows = int(max(1, min(1024, _TARGET_CHUNK_BYTES // max(1, 2 * int(np.prod(grid))))))
            if self._expected_rows:
                rows = max(1, min(rows, self._expected_rows))
            self._tokens = self._group.create_dataset(TOKENS, shape=(0, *grid), maxshape=(None, *grid),
                                                      dtype="float16", chunks=(rows, *grid))
        start = self._tokens.shape[0]
        self._tokens.resize(start + tokens.shape[0], axis=0)
        self._tokens[start:] = tokens.astype(np.float16, copy=False)

    def write_failed(self, records: list[tuple[str, str]]) -> None:
        """Record the items that could not be embedded, as ``(id, reason)`` pairs."""
        text = h5py.string_dtype("utf-8")
        data = np.array([(str(i), str(r)) for i, r in records], dtype=[("id", text), ("reason", text)])
        self._group.create_dataset(FAILED, data=data)


class StoreWriter:
    """Writes an sdetool store atomically: into a temporary file beside ``path``, renamed on success.

    In ``"a"`` mode the existing file is copied first, so a failure leaves it untouched. Use as a
    context manager; an exception inside the block discards everything written.
    """

    def __init__(self, path: str, mode: str = "w") -> None:
        if mode not in ("w", "a"):
            raise ValueError(f"mode must be 'w' or 'a', got {mode!r}")
        self.path = path
        self.mode = mode
        self._handle: h5py.File | None = None
        self._atomic = None

    def __enter__(self) -> "StoreWriter":
        existing = open_file(self.path) if self.mode == "a" and os.path.exists(self.path) else None
        try:
            self._atomic = atomic_path(self.path, BadStoreError)
            temp = self._atomic.__enter__()
            self._handle = h5py.File(temp, "w")
            if existing is not None:
                for name in existing:
                    existing.copy(existing[name], self._handle, name=name)
                self._handle.attrs.update(existing.attrs)
        except BaseException:
            self._abandon(*sys.exc_info())
            raise
        finally:
            if existing is not None:
                existing.close()
        self._handle.attrs["format"] = FORMAT
        self._handle.attrs["format_version"] = FORMAT_VERSION
        self._handle.attrs["created_by"] = f"sdetool {__version__}"
        return self

    def _abandon(self, kind, value, traceback) -> None:
        if self._handle is not None:
            self._handle.close()
        if self._atomic is not None:
            self._atomic.__exit__(kind, value, traceback)

    def create_set(
        self,
        key: str,
        dim: int,
        *,
        dtype: str = "float32",
        with_ids: bool = True,
        attrs: dict | None = None,
        expected_rows: int | None = None,
    ) -> SetWriter:
        """Start embedding set ``key`` of dimension ``dim``; ``attrs`` become the group's attributes.

        The attributes ``modality``, ``model``, ``normalized`` and ``dtype_computed`` get defaults
        ("unknown", "unknown", False, "float32") when not given. ``expected_rows`` caps the HDF5
        chunk size for small sets (chunks are ~1 MiB otherwise).
        """
        if dtype not in STORE_DTYPES:
            raise ValueError(f"store dtype must be one of {STORE_DTYPES}, got {dtype!r}")
        if not key or "/" in key:
            raise ValueError(f"set key must be a non-empty name without '/', got {key!r}")
        assert self._handle is not None, "use StoreWriter as a context manager"
        if key in self._handle:
            del self._handle[key]
        group = self._handle.create_group(key)
        merged = {"modality": "unknown", "model": "unknown", "normalized": False, "dtype_computed": "float32"}
        merged.update(attrs or {})
        for name, value in merged.items():
            group.attrs[name] = value
        return SetWriter(group, dim, dtype, with_ids, expected_rows)

    def set_attrs(self, attrs: dict) -> None:
        """Set root attributes of the file (e.g. ``extract_config``)."""
        assert self._handle is not None, "use StoreWriter as a context manager"
        for name, value in attrs.items():
            self._handle.attrs[name] = value

    def __exit__(self, kind, value, traceback) -> None:
        assert self._handle is not None, "StoreWriter was not entered"
        self._handle.close()
        self._handle = None
        if kind is None:
            self._atomic.__exit__(None, None, None)
        else:
            self._atomic.__exit__(kind, value, traceback)


def write_set(
    path: str,
    key: str,
    embeddings: np.ndarray,
    *,
    ids: list[str] | None = None,
    attrs: dict | None = None,
    dtype: str = "float32",
    mode: str = "a",
) -> None:
    """Write one whole embedding set (a convenience over :class:`StoreWriter`).

    ``mode="a"`` adds the set to an existing store (replacing a set of the same key).
    """
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2:
        raise ValueError(f"embeddings must be 2-D (n, d), got shape {embeddings.shape}")
    with StoreWriter(path, mode=mode) as writer:
        target = writer.create_set(key, embeddings.shape[1], dtype=dtype, with_ids=ids is not None, attrs=attrs,
                                   expected_rows=embeddings.shape[0])
        target.append(embeddings.astype(dtype, copy=False), ids)
