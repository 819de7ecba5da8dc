"""Hide folders of this machine from a Python process, as if a fresh machine lacked them.

A developer's machine can hold files a user's does not (Debian's ``dataset-fashion-mnist`` in
``/usr/share/datasets`` once made CI pass where a fresh install failed). :func:`install` makes every
file-system call of this process fail with ``FileNotFoundError`` under the given prefixes, so a test
can run sdetool on what a fresh machine has. :data:`BOOT` runs the command line with them hidden.
"""

from __future__ import annotations

import builtins
import io
import os

MACHINE_ONLY = ("/usr/share/datasets",)  # what a developer's machine may have and a fresh one lacks


def _hidden(path, prefixes) -> bool:
    if isinstance(path, int):  # a file descriptor: already open
        return False
    try:
        text = os.path.abspath(os.fsdecode(path))
    except TypeError:
        return False
    return any(text == prefix or text.startswith(prefix.rstrip("/") + "/") for prefix in prefixes)


def _guard(function, prefixes):
    def guarded(path, *args, **kwargs):
        if _hidden(path, prefixes):
            raise FileNotFoundError(2, "hidden by the test (a fresh machine lacks it)", os.fsdecode(path))
        return function(path, *args, **kwargs)

    return guarded


def install(prefixes=MACHINE_ONLY) -> None:
    """Hide ``prefixes`` from ``open``, ``os.stat``, ``os.listdir`` and the rest in this process."""
    for module, name in ((builtins, "open"), (io, "open"), (os, "open"), (os, "stat"), (os, "lstat"),
                         (os, "listdir"), (os, "scandir"), (os, "access")):
        setattr(module, name, _guard(getattr(module, name), prefixes))


BOOT = ("import sys, hidden_paths; hidden_paths.install(); from sdetool.cli import main; "
        "sys.argv[0] = 'sdetool'; main()")
