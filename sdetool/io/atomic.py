"""The one way sdetool writes a file: to a unique temporary name beside it, fsync'd, then renamed over it.

A reader never sees half a file (the rename is atomic on POSIX), a crash leaves the old file or none, and two
writers of the same path never share a temporary (each has its own ``mkstemp`` name). After the rename the
folder is fsync'd too, so that the new name survives a power cut.

- :func:`atomic_path`: a temporary *path* for writers that open the file themselves (h5py, safetensors, savez).
- :func:`write_bytes`: a binary handle for ``write(handle)``; an ``OSError`` (a full disk) becomes one line.
- :func:`write_text`: text, or standard output for ``-``.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sdetool.errors import BadInputError

SUFFIX = ".tmp"


def _fsync_path(path: str, directory: bool = False) -> None:
    try:
        descriptor = os.open(path, os.O_RDONLY | (getattr(os, "O_DIRECTORY", 0) if directory else 0))
    except OSError:  # a folder cannot be opened on some systems: the rename is still atomic, only less durable
        if directory:
            return
        raise
    try:
        os.fsync(descriptor)
    except OSError:
        if not directory:
            raise
    finally:
        os.close(descriptor)


def _mode() -> int:
    """What a plain ``open(path, "w")`` gives (``0o666`` less the umask), not mkstemp's owner-only ``0o600``."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_path(path: str, error: type[BadInputError] = BadInputError) -> Iterator[str]:
    """Yield a unique temporary path beside ``path``; on success it is fsync'd and replaces ``path``; on any
    error (or Ctrl-C) it vanishes and ``path`` is untouched. A missing folder raises ``error``."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise error(f"{path}: folder {folder} does not exist")
    try:
        descriptor, temporary = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=SUFFIX, dir=folder)
    except OSError as error:
        raise BadInputError(f"{path}: cannot write ({error.strerror or error})") from None
    os.close(descriptor)
    try:
        yield temporary
        try:
            _fsync_path(temporary)
            os.chmod(temporary, _mode())
            os.replace(temporary, path)
        except OSError as error:
            raise BadInputError(f"{path}: cannot write ({error.strerror or error})") from None
        _fsync_path(folder, directory=True)
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def write_bytes(path: str, write: Callable) -> None:
    """Call ``write(handle)`` on a binary handle and put the result at ``path`` atomically.

    The body writes only this file, so an ``OSError`` in it (a full disk, a folder made read-only meanwhile)
    is reported as ``PATH: cannot write (...)``.
    """
    with atomic_path(path) as temporary:
        try:
            with open(temporary, "wb") as handle:
                write(handle)
        except OSError as error:
            raise BadInputError(f"{path}: cannot write ({error.strerror or error})") from None


def write_text(path: str, text: str) -> None:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically; ``-`` means standard output."""
    if path == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    write_bytes(path, lambda handle: handle.write(text.encode("utf-8")))
