"""The work folder of an extraction in progress: ``<out>.partial/``, one file per finished chunk.

An extraction writes ``run.json`` (what is being extracted) and then, for every chunk of items, a
``chunk-NNNNNN.npz`` holding the chunk's embeddings, kept item indices and failures. Each file is
written to a temporary name and renamed, so a process killed at any instant (SIGKILL included)
leaves only whole chunks behind; re-running the same command skips them. HDF5 offers no such
guarantee for a file killed mid-write, which is why the store itself is written only once, at the
end, from the chunks (atomically, by :mod:`sdetool.io.store`). Pure: numpy, json and the file system.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import zipfile
from dataclasses import dataclass

import numpy as np

from sdetool.errors import BadInputError
from sdetool.io.atomic import write_bytes

SUFFIX = ".partial"
RUN_FILE = "run.json"


def work_folder(out: str) -> str:
    """The work folder of output ``out``."""
    return os.path.abspath(out) + SUFFIX


@dataclass(frozen=True)
class Chunk:
    """One finished chunk: ``rows`` (kept item indices), ``embeddings`` {key: (k, d)}, ``tokens`` (k, h, w, c)
    or None, and failures as parallel lists ``failed_index``, ``failed_key``, ``failed_reason``."""

    rows: np.ndarray
    embeddings: dict
    tokens: np.ndarray | None
    failed_index: np.ndarray
    failed_key: list[str]
    failed_reason: list[str]


class WorkFolder:
    """Read and write the chunk files of one extraction."""

    def __init__(self, out: str) -> None:
        self.out = out
        self.path = work_folder(out)

    def exists(self) -> bool:
        return os.path.isfile(os.path.join(self.path, RUN_FILE))

    def read_run(self) -> dict:
        try:
            with open(os.path.join(self.path, RUN_FILE)) as handle:
                return json.load(handle)
        except (OSError, json.JSONDecodeError) as error:
            raise BadInputError(f"{self.path}: unreadable extraction state ({error}); remove the folder or use --overwrite") from None

    def create(self, run: dict) -> None:
        """Start afresh: an empty folder holding ``run.json``."""
        try:
            self.remove()
            os.makedirs(self.path)
        except OSError as error:
            raise BadInputError(f"{self.path}: cannot create the work folder ({error.strerror or error})") from None
        write_bytes(os.path.join(self.path, RUN_FILE), lambda handle: handle.write(json.dumps(run, indent=2).encode()))

    def remove(self) -> None:
        if os.path.isdir(self.path):
            shutil.rmtree(self.path)

    def chunk_path(self, index: int) -> str:
        return os.path.join(self.path, f"chunk-{index:06d}.npz")

    def done(self) -> set[int]:
        """Indices of the chunks already written."""
        names = (os.path.basename(p) for p in glob.glob(os.path.join(self.path, "chunk-*.npz")))
        return {int(name[len("chunk-"):-len(".npz")]) for name in names if name[len("chunk-"):-len(".npz")].isdigit()}

    def write_chunk(self, index: int, chunk: Chunk) -> None:
        arrays = {"rows": np.asarray(chunk.rows, dtype=np.int64),
                  "failed_index": np.asarray(chunk.failed_index, dtype=np.int64),
                  "failed_key": np.asarray(chunk.failed_key, dtype=str),
                  "failed_reason": np.asarray(chunk.failed_reason, dtype=str)}
        for key, values in chunk.embeddings.items():
            arrays[f"embeddings_{key}"] = values
        if chunk.tokens is not None:
            arrays["tokens"] = chunk.tokens
        write_bytes(self.chunk_path(index), lambda handle: np.savez(handle, **arrays))

    def read_chunk(self, index: int, keys: list[str], arrays: bool = True) -> Chunk:
        """One chunk; with ``arrays=False`` only its rows and failures (embeddings and tokens stay on disk)."""
        try:
            with np.load(self.chunk_path(index), allow_pickle=False) as data:
                return Chunk(
                    rows=data["rows"], embeddings={key: data[f"embeddings_{key}"] for key in keys} if arrays else {},
                    tokens=data["tokens"] if arrays and "tokens" in data.files else None,
                    failed_index=data["failed_index"], failed_key=[str(x) for x in data["failed_key"]],
                    failed_reason=[str(x) for x in data["failed_reason"]],
                )
        except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as error:
            raise BadInputError(f"{self.chunk_path(index)}: damaged chunk ({error}); delete it to redo that chunk") from None

    def status(self) -> str:
        """One line for messages: how far the extraction got."""
        run = self.read_run()
        done, total = len(self.done()), int(run.get("chunks", 0))
        chunk_items = int(run.get("chunk_items", 0))
        items = min(done * chunk_items, int(run.get("items", 0)))
        return f"{done} of {total} chunks (about {items} of {run.get('items', '?')} items)"


def incomplete_message(path: str) -> str | None:
    """When ``path`` is an extraction output not yet finished (or its work folder), say so; else None."""
    path = path.rstrip("/") or path
    folder = WorkFolder(path[: -len(SUFFIX)] if path.endswith(SUFFIX) else path)
    if not folder.exists():
        return None
    try:
        status = folder.status()
    except BadInputError:
        status = "unknown progress"
    return (f"{folder.out}: extraction incomplete ({status} done, kept in {folder.path}); "
            "re-run the same sdetool extract command to resume")
