"""Which code a benchmark ran: the commit, the library files changed since, and a digest of every source
file under ``sdetool/`` (all packages). The benchmarks put it in their JSON beside the numbers."""

from __future__ import annotations

import hashlib
import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git(*words: str) -> str:
    try:
        return subprocess.run(["git", "-C", REPO, *words], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def provenance() -> dict:
    digest = hashlib.sha256()
    package = os.path.join(REPO, "sdetool")
    for folder, folders, names in os.walk(package):
        folders[:] = sorted(name for name in folders if name != "__pycache__")
        for name in sorted(names):
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                with open(path, "rb") as handle:
                    digest.update(os.path.relpath(path, package).encode() + handle.read())
    changed = _git("status", "--short", "--", "sdetool").splitlines()
    return {"commit": _git("rev-parse", "--short", "HEAD"), "changed": [line.strip() for line in changed],
            "sdetool_sha256": digest.hexdigest()[:16]}
