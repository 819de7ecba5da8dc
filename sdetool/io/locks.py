"""One writer per output: an advisory lock (``flock``) on ``<out>.lock`` while a command writes ``out``.

The operating system releases the lock when the process ends, however it ends (SIGKILL included), so a
killed run never blocks its own resume. A second writer of the same output is refused at once with one
line naming the holder's process id. The file is removed when the holder finishes; a writer that locked a
file removed meanwhile tries again, so two writers never hold two different files of the same name.
Where ``fcntl`` does not exist (Windows), no lock is taken.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

from sdetool.errors import BadInputError

SUFFIX = ".lock"


def lock_path(out: str) -> str:
    """The lock file of output ``out`` (a file or a folder): ``<out>.lock`` beside it."""
    return os.path.abspath(out.rstrip("/\\") or out) + SUFFIX


class OutputLock:
    """The lock of one output; :meth:`acquire` refuses when another process holds it."""

    def __init__(self, out: str, option: str = "--out", create_folder: bool = False) -> None:
        """``create_folder``: make the folder the output goes in (a run folder's parents), so that a first run
        is locked too; otherwise a missing folder takes no lock (the command itself says it is missing)."""
        self.out, self.option, self.path = out, option, lock_path(out)
        self.create_folder = create_folder
        self._fd: int | None = None

    def acquire(self) -> "OutputLock":
        try:
            import fcntl
        except ImportError:  # no flock here: one writer is the user's business
            return self
        if self.create_folder:
            try:
                os.makedirs(os.path.dirname(self.path), exist_ok=True)
            except OSError:
                return self  # the command says why it cannot write there
        if not os.path.isdir(os.path.dirname(self.path)):
            return self  # the output's folder does not exist: the command itself says so
        while self._fd is None:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError:  # an unwritable folder: nobody can write the output there, and the command says why
                return self
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                holder = _holder(fd)
                os.close(fd)
                raise BadInputError(f"{self.option} {self.out}: another sdetool process{holder} is writing this "
                                    f"output; wait for it to finish or stop it") from None
            if _same_file(fd, self.path):
                self._fd = fd
                try:  # the holder's pid, for the refusal of the next one: best effort (a full disk)
                    os.ftruncate(fd, 0)
                    os.write(fd, f"{os.getpid()}\n".encode())
                except OSError:
                    pass
            else:  # the holder finished and removed the file between our open and our lock: again
                os.close(fd)
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.unlink(self.path)  # while still locked: a waiting opener then finds a different file and retries
        except OSError:
            pass
        os.close(self._fd)
        self._fd = None

    def __enter__(self) -> "OutputLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 32, 0).decode().strip()
    except OSError:
        return ""
    return f" (pid {text})" if text.isdigit() else ""


def _same_file(fd: int, path: str) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


@contextmanager
def writing(out: str, option: str = "--out", hold: bool = True, create_folder: bool = False, through=None):
    """Hold the lock of ``out`` for the ``with`` block (``hold=False``: take none).

    ``through(work)`` runs the acquisition where it belongs and hands its refusal to everyone concerned: under
    torchrun, ``lambda work: on_main(world, work)`` (rank 0 holds the lock for the job; a refusal reaches
    every rank, so none waits forever)."""
    lock = OutputLock(out, option, create_folder)
    if hold:
        (through or (lambda work: work()))(lambda: lock.acquire() and None)
    try:
        yield lock
    finally:
        lock.release()
