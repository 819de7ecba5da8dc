"""How much memory this process may still take: the least of the machine's, the cgroup's and the rlimit's.

Read from Linux's ``/proc`` and ``/sys/fs/cgroup`` files and :func:`resource.getrlimit`; any source that is
not there is skipped (None when none is).
"""

from __future__ import annotations

import os


def _read(path: str) -> str | None:
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


def _kibibytes(path: str, field: str) -> int | None:
    """``Field:  123 kB`` of a /proc file, in bytes."""
    for line in (_read(path) or "").splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return None


def _reclaimable(stat_file: str, field: str) -> int:
    """Page cache the kernel can drop (``inactive_file``), which a cgroup's usage counts."""
    for line in (_read(stat_file) or "").splitlines():
        name, _, value = line.partition(" ")
        if name == field and value.strip().isdigit():
            return int(value)
    return 0


def _cgroup_room() -> int | None:
    """The cgroup's limit less what it holds that cannot be reclaimed (usage less inactive file cache, as
    ``docker stats`` counts it); v2 ``memory.max``, or v1's files."""
    for folder, limit_name, usage_name, field in (("/sys/fs/cgroup", "memory.max", "memory.current", "inactive_file"),
                                                  ("/sys/fs/cgroup/memory", "memory.limit_in_bytes",
                                                   "memory.usage_in_bytes", "total_inactive_file")):
        limit, usage = _read(os.path.join(folder, limit_name)), _read(os.path.join(folder, usage_name))
        if limit is None or usage is None:
            continue
        limit = limit.strip()
        if limit == "max" or not limit.isdigit() or int(limit) >= 1 << 60:
            return None
        used = int(usage.strip()) - _reclaimable(os.path.join(folder, "memory.stat"), field)
        return max(int(limit) - max(used, 0), 0)
    return None


def _rlimit_room() -> int | None:
    """``RLIMIT_AS`` (``ulimit -v``) less this process's address space, and ``RLIMIT_DATA`` likewise."""
    try:
        import resource
    except ImportError:  # not a POSIX system
        return None
    rooms = []
    for limit_name, used_field in (("RLIMIT_AS", "VmSize"), ("RLIMIT_DATA", "VmData")):
        soft, _ = resource.getrlimit(getattr(resource, limit_name))
        if soft == resource.RLIM_INFINITY:
            continue
        used = _kibibytes("/proc/self/status", used_field) or 0
        rooms.append(max(soft - used, 0))
    return min(rooms) if rooms else None


LIMIT_VARIABLE = "SDETOOL_MEMORY_LIMIT"
_UNITS = {"": 1, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12,
          "KIB": 1024, "MIB": 1024 ** 2, "GIB": 1024 ** 3, "TIB": 1024 ** 4}


def parse_size(text: str, name: str) -> int:
    """``8G``, ``512MB``, ``2GiB`` or a number of bytes; one sentence naming ``name`` otherwise."""
    import re

    from sdetool.errors import BadInputError

    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][0-9]+)?)\s*([A-Za-z]*)\s*", text)
    unit = match.group(2).upper() if match else None
    if match is None or unit not in _UNITS:
        raise BadInputError(f"{name}={text!r}: expected a size such as 8G, 512MB, 2GiB or a number of bytes")
    return int(float(match.group(1)) * _UNITS[unit])


def available_memory() -> int | None:
    """Bytes this process can still allocate (the least of the limits found); None when none is known.

    ``SDETOOL_MEMORY_LIMIT`` (bytes) overrides the answer, for a user who knows better than the machine.
    """
    override = os.environ.get(LIMIT_VARIABLE, "").strip()
    if override:
        return parse_size(override, LIMIT_VARIABLE)
    rooms = [room for room in (_kibibytes("/proc/meminfo", "MemAvailable"), _cgroup_room(), _rlimit_room()) if room is not None]
    return min(rooms) if rooms else None


def size_text(count: float) -> str:
    """``1.9 GB``, ``730 MB``: decimal units, as ``free`` and ``ulimit`` users read them."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{int(count)} B"
