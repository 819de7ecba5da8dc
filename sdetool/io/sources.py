"""Input matrices: resolve a path spec to named 2-D matrices and stream their rows in blocks.

Supported inputs (one or several files; several files are shards of the same sets):

- an sdetool HDF5 store (every ``/<key>/embeddings``), or ``file.h5:/path/to/dataset`` for any 2-D
  dataset of any HDF5 file (key: the dataset path without the leading slash);
- ``.npy`` (memory-mapped; key ``embeddings``), ``.npz`` (one set per 2-D array, key: its name);
- ``.pt`` / ``.pth`` holding a tensor (key ``embeddings``) or a dict of 2-D tensors, loaded with
  ``torch.load(weights_only=True)`` only: arbitrary pickled objects are refused;
- ``.safetensors`` (one set per 2-D tensor, key: its name), read lazily;
- ``builtin:NAME``: built-in example matrices (:mod:`sdetool.spectral.synthetic`);
- a folder: its embedding files, in natural name order (``img_emb_2`` before ``img_emb_10``), as shards;
- ``NAME=PATH`` (PATH a file, a ``file.h5:/dataset`` or a folder): a set named NAME. Several named inputs
  give several sets (``image=img_emb/ text=text_emb/``: clip-retrieval's output, with the cross-modal
  section); each named input must hold one set. Plain and named inputs do not mix.

Every matrix offers ``reader()``, a context manager yielding ``read(start, stop)``. Blocks are read
in a background thread so that reading the next block overlaps the BLAS work on the current one.
"""

from __future__ import annotations

import os
import queue
import re
import threading
import zipfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from sdetool.errors import BadInputError, BadStoreError, UnknownKeyError

FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
QUANTIZED_DTYPES = ("int8", "uint8")  # sentence-transformers' quantize_embeddings "int8" / "uint8": read as integers
PACKED_PRECISIONS = ("binary", "ubinary")  # quantize_embeddings' packed bits: 8 dimensions per byte
HDF5_SUFFIXES = (".h5", ".hdf5", ".hdf", ".he5")
SUFFIXES = HDF5_SUFFIXES + (".npy", ".npz", ".pt", ".pth", ".safetensors")
DEFAULT_KEY = "embeddings"


@dataclass
class ArrayMatrix:
    """A matrix held by an array-like (numpy array, memory map or torch tensor)."""

    path: str
    key: str
    array: object
    attrs: dict = field(default_factory=dict)
    chunk_rows: int | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(x) for x in self.array.shape)

    @property
    def dtype(self):
        return self.array.dtype

    @property
    def label(self) -> str:
        return f"{self.path}:{self.key}" if self.key != DEFAULT_KEY else self.path

    @contextmanager
    def reader(self) -> Iterator[Callable[[int, int], np.ndarray]]:
        yield lambda start, stop: _to_numpy(self.array[start:stop])


@dataclass
class SafetensorsMatrix:
    """One tensor of a ``.safetensors`` file, sliced lazily."""

    path: str
    key: str
    shape: tuple[int, ...]
    dtype: str
    attrs: dict = field(default_factory=dict)
    chunk_rows: int | None = None

    @property
    def label(self) -> str:
        return f"{self.path}:{self.key}"

    @contextmanager
    def reader(self) -> Iterator[Callable[[int, int], np.ndarray]]:
        from safetensors import safe_open

        with safe_open(self.path, framework="pt") as handle:
            tensor = handle.get_slice(self.key)
            yield lambda start, stop: _to_numpy(tensor[start:stop])


def _to_numpy(block) -> np.ndarray:
    if isinstance(block, np.ndarray):
        return block
    # A torch tensor: numpy has no bfloat16, so that one is widened here.
    import torch

    block = block.detach()
    if block.dtype == torch.bfloat16:
        block = block.to(torch.float32)
    return block.numpy()


def dtype_name(dtype) -> str:
    """``float32``-style name of a numpy, torch or safetensors dtype."""
    text = str(dtype).replace("torch.", "")
    return {"F16": "float16", "BF16": "bfloat16", "F32": "float32", "F64": "float64", "I8": "int8",
            "U8": "uint8"}.get(text, text)


# --- opening -------------------------------------------------------------------------------------


def split_spec(spec: str) -> tuple[str, str | None]:
    """Split ``file.h5:/path/to/dataset`` into the file and the dataset path (None when absent)."""
    if spec.startswith("builtin:"):
        return spec, None
    head, sep, tail = spec.rpartition(":")
    if sep and tail.startswith("/") and head.lower().endswith(HDF5_SUFFIXES):
        return head, tail
    return spec, None


def open_spec(spec: str) -> dict[str, object]:
    """Describe the matrices of one input spec, keyed by set name (not yet validated)."""
    path, dataset = split_spec(spec)
    if path.startswith("builtin:"):
        from sdetool.spectral.synthetic import builtin_matrix

        array, attrs = builtin_matrix(path.removeprefix("builtin:"))
        matrices = {DEFAULT_KEY: ArrayMatrix(path, "embeddings", array, attrs=attrs)}
    else:
        from sdetool.io.checkpoint import incomplete_message

        unfinished = incomplete_message(path) if not os.path.isfile(path) else None
        if unfinished:  # an extraction still running, or interrupted: say how far it got
            raise BadStoreError(unfinished)
        if not os.path.exists(path):
            raise BadInputError(f"{path}: no such file")
        if os.path.isdir(path):
            raise BadInputError(f"{path}: is a folder, expected an embeddings file ({', '.join(SUFFIXES)})")
        matrices = _open_file(path, dataset)
    return matrices


def _open_file(path: str, dataset: str | None) -> dict[str, object]:
    suffix = os.path.splitext(path)[1].lower()
    if suffix in HDF5_SUFFIXES:
        from sdetool.io import store

        return store.open_matrices(path, dataset)
    if suffix == ".npy":
        return {DEFAULT_KEY: ArrayMatrix(path, DEFAULT_KEY, _load_npy(path))}
    if suffix == ".npz":
        return _open_npz(path)
    if suffix in (".pt", ".pth"):
        return _open_torch(path)
    if suffix == ".safetensors":
        return _open_safetensors(path)
    raise BadInputError(f"{path}: unsupported input format {suffix or '(no suffix)'!r}; expected one of {', '.join(SUFFIXES)}")


def _numpy_reason(error: BaseException) -> str:
    text = str(error)
    if "pickled" in text or "allow_pickle" in text:  # numpy's word for a header it cannot parse
        return "not a numeric array file (damaged, or holding Python objects, which are refused)"
    return text.splitlines()[0] if text else type(error).__name__


def _load_npy(path: str) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError) as error:
        raise BadInputError(f"{path}: not a readable .npy array: {_numpy_reason(error)}") from None


def _open_npz(path: str) -> dict[str, object]:
    # .npz members are compressed or zipped: each array is read whole (memory O(n d) for this format).
    try:
        archive = np.load(path, allow_pickle=False)
        arrays = {name: archive[name] for name in archive.files}
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        raise BadInputError(f"{path}: not a readable .npz archive: {_numpy_reason(error)}") from None
    if not arrays:
        raise BadInputError(f"{path}: the .npz archive holds no arrays")
    return {name: ArrayMatrix(path, name, array) for name, array in arrays.items()}


def _torch_reason(error: BaseException) -> str:
    """The useful line of a torch.load failure, without its advice to turn weights_only off."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if "Unsupported global" in line or "Unsupported operand" in line:
            return line.split("WeightsUnpickler error:")[-1].strip()
    useful = [line for line in lines if "weights_only" not in line and "torch.load" not in line]
    return useful[0] if useful else type(error).__name__


def _open_torch(path: str) -> dict[str, object]:
    import pickle

    import torch

    try:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as error:
            if "mmap" not in str(error):
                raise
            loaded = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as error:
        raise BadInputError(
            f"{path}: not a tensor file sdetool can load safely (torch.load with weights_only=True; "
            f"pickled Python objects are refused): {_torch_reason(error)}"
        ) from None
    if isinstance(loaded, torch.Tensor):
        loaded = {DEFAULT_KEY: loaded}
    tensors = {str(k): v for k, v in loaded.items() if isinstance(v, torch.Tensor)} if isinstance(loaded, dict) else {}
    if not tensors:  # side entries (step counts, names) of a dict are skipped, but one tensor is needed
        raise BadInputError(f"{path}: holds a {type(loaded).__name__} without tensors, expected a 2-D tensor "
                            f"(or a dict of tensors)")
    for name, tensor in tensors.items():
        if tensor.layout != torch.strided:
            raise BadInputError(f"{path}: tensor {name!r} is {tensor.layout} (sparse); expected a dense 2-D tensor")
    return {name: ArrayMatrix(path, name, tensor) for name, tensor in tensors.items()}


def _open_safetensors(path: str) -> dict[str, object]:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(path, framework="pt") as handle:
            found = {}
            for name in handle.keys():
                view = handle.get_slice(name)
                found[name] = SafetensorsMatrix(path, name, tuple(view.get_shape()), dtype_name(view.get_dtype()))
    except (SafetensorError, OSError, ValueError) as error:
        raise BadInputError(f"{path}: not a readable .safetensors file: {error}") from None
    if not found:
        raise BadInputError(f"{path}: the .safetensors file holds no tensors")
    return found


def _validate(matrix) -> None:
    shape, kind = matrix.shape, dtype_name(matrix.dtype)
    if len(shape) != 2:
        raise BadInputError(f"{matrix.label}: is {len(shape)}-D with shape {shape}; expected a 2-D (n, d) matrix")
    packed = next((str(matrix.attrs.get(name)) for name in ("precision", "quantization")
                   if str(matrix.attrs.get(name, "")).lower() in PACKED_PRECISIONS), None)
    if packed is not None:
        raise BadInputError(f"{matrix.label}: packed binary embeddings (precision {packed!r}: 8 dimensions per byte) are "
                            "out of scope: a byte is not a coordinate, so its spectrum means nothing; unpack the bits "
                            "first (numpy.unpackbits) to analyze them as 0/1 values")
    if kind not in FLOAT_DTYPES + QUANTIZED_DTYPES:
        raise BadInputError(
            f"{matrix.label}: has dtype {kind}; expected floating-point embeddings ({', '.join(FLOAT_DTYPES)}) or "
            f"quantized ones ({', '.join(QUANTIZED_DTYPES)})"
        )
    if shape[1] == 0:
        raise BadInputError(f"{matrix.label}: has d = 0 columns; expected at least 1 dimension")


NAMED = re.compile(r"^([A-Za-z_][A-Za-z0-9_.-]*)=(.+)$")
# clip-retrieval names its two modalities' shards so; given together as plain shards they would be merged
_MODALITY_SHARDS = re.compile(r"^(img|image|text)_emb_\d+\.npy$")


def named_spec(spec: str) -> tuple[str | None, str]:
    """``NAME=PATH`` -> (NAME, PATH); anything else (an existing path with an ``=`` in it too) -> (None, spec)."""
    match = NAMED.match(spec)
    if match and not os.path.exists(spec):
        return match.group(1), match.group(2)
    return None, spec


def _natural(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def folder_shards(folder: str) -> list[str]:
    """The embedding files of a folder, in natural name order; a folder with none is bad input."""
    names = sorted((name for name in os.listdir(folder)
                    if name.lower().endswith(SUFFIXES) and os.path.isfile(os.path.join(folder, name))), key=_natural)
    if not names:
        raise BadInputError(f"{folder}: is a folder with no embedding files; expected {', '.join(SUFFIXES)} files "
                            "(the shards of one set, in name order)")
    return [os.path.join(folder, name) for name in names]


def _files(spec: str) -> list[str]:
    """A spec as file specs: a folder (not an extraction's work folder) as its shards."""
    path, _ = split_spec(spec)
    if os.path.isdir(path) and not path.startswith("builtin:"):
        from sdetool.io.checkpoint import incomplete_message

        if not incomplete_message(path):
            return folder_shards(path)
    return [spec]


def _check_modalities(files: list[str]) -> None:
    kinds = {match.group(1).replace("image", "img") for match in
             (_MODALITY_SHARDS.match(os.path.basename(split_spec(f)[0])) for f in files) if match}
    if len(kinds) > 1:
        raise BadInputError(f"{', '.join(files[:2])}{', ...' if len(files) > 2 else ''}: image and text embedding "
                            "shards (clip-retrieval's img_emb/text_emb) given as shards of one set would merge two "
                            "modalities; name them instead: image=img_emb/ text=text_emb/")


def _open_named(specs: Sequence[str], keys: Sequence[str] | None) -> dict[str, list]:
    names = [named_spec(spec)[0] for spec in specs]
    if None in names:
        plain = specs[names.index(None)]
        raise BadInputError(f"{plain}: plain and NAME=PATH inputs do not mix; name every input (image=... text=...) "
                            "or none")
    result: dict[str, list] = {}
    for spec in specs:
        name, path = named_spec(spec)
        for file_spec in _files(path):
            matrices = open_spec(file_spec)
            sets = [key for key, matrix in matrices.items() if len(matrix.shape) == 2] or list(matrices)
            if len(sets) != 1:
                raise BadInputError(f"{name}={path}: {file_spec} holds {len(sets)} sets ({', '.join(sets)}); a named "
                                    "input is one set: pick one with FILE.h5:/KEY/embeddings or FILE.npz of one array")
            shard = matrices[sets[0]]
            _validate(shard)
            shards = result.setdefault(name, [])
            if shards and shard.shape[1] != shards[0].shape[1]:
                raise BadInputError(f"{file_spec}: set {name!r} has d = {shard.shape[1]} but {shards[0].label} has "
                                    f"d = {shards[0].shape[1]}")
            shards.append(shard)
    if keys:
        missing = [key for key in keys if key not in result]
        if missing:
            raise UnknownKeyError(f"--key {missing[0]}: no input named so; named inputs: {', '.join(result)}")
        result = {key: result[key] for key in dict.fromkeys(keys)}
    return result


def open_inputs(specs: Sequence[str], keys: Sequence[str] | None = None) -> dict[str, list]:
    """Resolve input specs to ``{key: [shard, ...]}``; several specs are shards of the same sets.

    Parameters
    ----------
    specs : sequence of str
        Paths (or ``file.h5:/dataset``, ``builtin:NAME``); at least one.
    keys : sequence of str, optional
        Sets to keep, in this order; default: every set of the first file, in file order.

    Raises
    ------
    BadInputError
        A file that cannot be read, a shard missing a key, shards whose dimensions differ.
    UnknownKeyError
        A requested key that the input does not have (the message lists the keys found).
    """
    if not specs:
        raise BadInputError("no input given; expected at least one embeddings file")
    if any(named_spec(spec)[0] for spec in specs):
        return _open_named(specs, keys)
    files = [file_spec for spec in specs for file_spec in _files(spec)]
    _check_modalities(files)
    opened = [(spec, open_spec(spec)) for spec in files]
    first_spec, first = opened[0]
    # By default every 2-D array is a set; side arrays (labels, biases) of .npz/.pt/.safetensors
    # files are skipped. A file with none falls through to validation, which says what is wrong.
    wanted = list(keys) if keys else [k for k, m in first.items() if len(m.shape) == 2] or list(first)
    missing = [key for key in wanted if key not in first]
    if missing:
        raise UnknownKeyError(
            f"{first_spec}: no set named {missing[0]!r}; sets found: {', '.join(first) or 'none'}"
        )
    result: dict[str, list] = {key: [] for key in dict.fromkeys(wanted)}
    for spec, matrices in opened:
        for key in result:
            if key not in matrices:
                raise UnknownKeyError(f"{spec}: shard has no set {key!r}; its sets: {', '.join(matrices)}")
            shard = matrices[key]
            _validate(shard)
            reference = result[key][0] if result[key] else shard
            if shard.shape[1] != reference.shape[1]:
                raise BadInputError(
                    f"{spec}: set {key!r} has d = {shard.shape[1]} but {reference.label} has d = {reference.shape[1]}"
                )
            result[key].append(shard)
    return result


# --- streaming -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """Rows read from one window of one shard.

    Attributes
    ----------
    rows : ndarray, shape (k, d)
        The (selected) rows, in the file's dtype (bfloat16 widened to float32).
    positions : ndarray of int64, shape (k,)
        Their positions in the concatenation of all shards.
    scanned : int
        Rows of the window read, selected or not (for progress).
    """

    rows: np.ndarray
    positions: np.ndarray
    scanned: int


def iter_blocks(
    shards: Sequence[tuple[object, int]],
    block_rows: int,
    selection: np.ndarray | None = None,
) -> Iterator[Block]:
    """Yield row blocks of shards in order.

    Parameters
    ----------
    shards : sequence of (matrix, offset)
        Each shard with the global position of its first row.
    block_rows : int
        Rows per read (aligned up to a multiple of the shard's storage chunk).
    selection : ndarray of int64, optional
        Sorted global positions to keep (``--sample``); windows without any are not read.
    """
    for matrix, offset in shards:
        n = matrix.shape[0]
        step = _aligned(block_rows, matrix.chunk_rows)
        with matrix.reader() as read:
            for start in range(0, n, step):
                stop = min(start + step, n)
                positions = np.arange(offset + start, offset + stop, dtype=np.int64)
                if selection is None:
                    yield Block(read(start, stop), positions, stop - start)
                    continue
                lo, hi = np.searchsorted(selection, [offset + start, offset + stop])
                if lo == hi:
                    yield Block(np.empty((0, matrix.shape[1]), np.float32), positions[:0], stop - start)
                    continue
                chosen = selection[lo:hi]
                rows = read(int(chosen[0] - offset), int(chosen[-1] - offset) + 1)
                yield Block(rows[chosen - chosen[0]], chosen, stop - start)


def _aligned(block_rows: int, chunk_rows: int | None) -> int:
    if not chunk_rows or chunk_rows >= block_rows:
        return max(1, block_rows)
    return (block_rows // chunk_rows) * chunk_rows


_DONE = object()


def prefetch(iterator: Iterator, depth: int = 2) -> Iterator:
    """Run ``iterator`` in a background thread, ``depth`` items ahead; its exceptions re-raise here."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def offer(item) -> bool:
        while not stop.is_set():
            try:
                slots.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in iterator:
                if not offer(item):
                    return
            offer(_DONE)
        except BaseException as error:  # handed to the consumer, which re-raises it
            offer(error)

    worker = threading.Thread(target=produce, name="sdetool-prefetch", daemon=True)
    worker.start()
    try:
        while True:
            item = slots.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join(timeout=5)
