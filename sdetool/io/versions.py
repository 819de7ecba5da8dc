"""The versions of what sdetool writes, and the refusal of what a newer sdetool wrote.

JSON documents carry ``"schema": "sdetool.<kind>/<major>"``; HDF5 stores carry the root attribute
``format_version`` (an integer: the major version). A reader refuses a newer major version with one line
naming both, rather than reading a layout it does not know as if it were its own.
"""

from __future__ import annotations

from sdetool.errors import BadInputError, NewerVersionError

SCHEMAS = {"sdetool.analysis": 1, "sdetool.compare": 1, "sdetool.finetune": 1, "sdetool.reproduce": 1}
STORE_FORMAT_VERSION = 1


def schema(kind: str) -> str:
    """The schema id this sdetool writes for ``kind`` (``"analysis"`` -> ``"sdetool.analysis/1"``)."""
    name = f"sdetool.{kind}"
    return f"{name}/{SCHEMAS[name]}"


def major(version) -> int | None:
    """The major number of ``1``, ``"2"`` or ``"2.1"`` (None when it is not a version)."""
    try:
        return int(str(version).strip().split(".")[0])
    except ValueError:
        return None


def check_schema(document: dict, path: str) -> None:
    """Refuse a JSON document whose ``schema`` is a newer major version of one this sdetool knows."""
    value = document.get("schema")
    if not isinstance(value, str) or "/" not in value:
        return
    name, _, version = value.rpartition("/")
    known, found = SCHEMAS.get(name), major(version)
    if known is not None and found is not None and found > known:
        raise NewerVersionError(f"{path}: schema {value} was written by a newer sdetool; this one reads {name}/{known} "
                            f"(pip install -U sdetool)")


def check_store_version(attrs, path: str) -> None:
    """Refuse an HDF5 store whose ``format_version`` is newer than :data:`STORE_FORMAT_VERSION`."""
    if "format_version" not in attrs:
        return
    value = attrs["format_version"]
    value = value.decode() if isinstance(value, bytes) else value
    found = major(value)
    if found is None:
        raise BadInputError(f"{path}: format_version {value!r} is not a version number; expected an integer such "
                            f"as {STORE_FORMAT_VERSION}")
    if found > STORE_FORMAT_VERSION:
        raise NewerVersionError(f"{path}: an sdetool store of format_version {value} (written by a newer sdetool); this "
                            f"one reads format_version {STORE_FORMAT_VERSION} (pip install -U sdetool)")
