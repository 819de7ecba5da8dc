"""In-memory inputs (a notebook): numpy arrays, torch tensors and ``{name: array}`` mappings as the matrices
:mod:`sdetool.io.sources` gives for files, so that ``analyze(X)`` runs the pass ``analyze x.npy`` runs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from sdetool.errors import BadInputError, UnknownKeyError
from sdetool.io.sources import DEFAULT_KEY, ArrayMatrix, _validate


def _is_array(value) -> bool:
    return isinstance(value, np.ndarray) or (hasattr(value, "detach") and hasattr(value, "shape"))


def is_array_input(value) -> bool:
    """An in-memory input: a numpy array or torch tensor, or a mapping of set names to them."""
    if _is_array(value):
        return True
    return isinstance(value, Mapping) and bool(value) and all(_is_array(v) for v in value.values())


def _as_numpy(value, where: str) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor: off the graph and the device; bfloat16 widened
        import torch

        value = value.detach().cpu()
        value = value.float() if value.dtype == torch.bfloat16 else value
        value = value.numpy()
    array = np.asarray(value)
    _validate(ArrayMatrix(where, DEFAULT_KEY, array))  # the checks every input gets (2-D, float, d > 0), named so
    if not np.isfinite(array).all():
        row = int(np.flatnonzero(~np.isfinite(array).all(axis=1))[0])
        raise BadInputError(f"{where}: row {row} holds a non-finite value (NaN or Inf); expected finite embeddings")
    return array


def array_inputs(data, keys: Sequence[str] | None = None, name: str = "inputs") -> dict[str, list]:
    """In-memory inputs as ``{key: [shard]}``: an array is the set ``embeddings`` (as a ``.npy`` file gives),
    a mapping ``{name: array}`` names the sets. Sets given together must share their row count (pairs) and
    dtype."""
    if _is_array(data):
        sets = {DEFAULT_KEY: _as_numpy(data, name)}
    else:
        sets = {str(key): _as_numpy(value, f"{name}[{key!r}]") for key, value in data.items()}
    if keys:
        missing = [key for key in keys if key not in sets]
        if missing:
            raise UnknownKeyError(f"{name}: no set named {missing[0]!r}; sets given: {', '.join(sets)}")
        sets = {key: sets[key] for key in dict.fromkeys(keys)}
    if len(sets) > 1:
        rows = {key: array.shape[0] for key, array in sets.items()}
        if len(set(rows.values())) > 1:
            raise BadInputError(f"{name}: the sets have different row counts ({', '.join(f'{k}: {v}' for k, v in rows.items())}); "
                                "sets given together are pairs, row i of each")
        kinds = {key: str(array.dtype) for key, array in sets.items()}
        if len(set(kinds.values())) > 1:
            raise BadInputError(f"{name}: the sets mix dtypes ({', '.join(f'{k}: {v}' for k, v in kinds.items())}); "
                                "give them in one dtype")
    return {key: [ArrayMatrix("array" if key == DEFAULT_KEY else f"array[{key}]", key, array)]
            for key, array in sets.items()}
