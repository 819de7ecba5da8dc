"""``--fail-if`` checks: ``PATH OP NUMBER`` evaluated against a JSON result, for CI pipelines.

A path is dotted (``bands.noise.energy_share``); list items are addressed by index
(``singular_values.0``). Against a report of several sets (``{"sets": {...}}``) a path that is not
found at the top level is checked in every set, and fails when any set fails it.
"""

from __future__ import annotations

import math
import operator
import re
from dataclasses import dataclass

from sdetool.errors import BadInputError

OPERATORS = {
    "<=": operator.le,
    ">=": operator.ge,
    "==": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    ">": operator.gt,
}
_PATTERN = re.compile(r"^\s*(?P<path>[^\s<>=!]+)\s*(?P<op><=|>=|==|!=|<|>)\s*(?P<value>\S+)\s*$")
_EXAMPLE = "e.g. 'bands.noise.energy_share > 0.85'"


@dataclass(frozen=True)
class Check:
    """One parsed ``--fail-if`` expression."""

    text: str
    path: str
    op: str
    value: float


@dataclass(frozen=True)
class CheckResult:
    """The outcome of a check on one subject (a set key, or None for the top level)."""

    check: Check
    subject: str | None
    actual: object
    failed: bool

    def describe(self) -> str:
        where = f"[{self.subject}] " if self.subject else ""
        shown = "null" if self.actual is None else f"{self.actual:.6g}" if isinstance(self.actual, float) else self.actual
        return f"{where}{self.check.path} = {shown}"


def parse_check(text: str) -> Check:
    """Parse ``PATH OP NUMBER``; a malformed expression raises :class:`BadInputError`."""
    match = _PATTERN.match(text or "")
    if not match:
        raise BadInputError(f"--fail-if {text!r}: expected 'PATH OP NUMBER' with OP one of < <= > >= == !=, {_EXAMPLE}")
    try:
        value = float(match["value"])
    except ValueError:
        raise BadInputError(f"--fail-if {text!r}: {match['value']!r} is not a number, {_EXAMPLE}") from None
    if not math.isfinite(value):
        raise BadInputError(f"--fail-if {text!r}: the number must be finite (a NaN or infinite bound never fires)")
    return Check(text=text.strip(), path=match["path"], op=match["op"], value=value)


_MISSING = object()


def resolve(document, path: str):
    """The value at a dotted path, or a private sentinel when there is none.

    Keys containing dots are matched greedily (the longest key that exists wins).
    """
    parts = path.split(".")
    node = document
    index = 0
    while index < len(parts):
        if node is None:  # a null section (no strong subspace, no evaluation): its values are null too
            return None
        if isinstance(node, dict):
            for end in range(len(parts), index, -1):
                candidate = ".".join(parts[index:end])
                if candidate in node:
                    node = node[candidate]
                    index = end
                    break
            else:
                return _MISSING
        elif isinstance(node, list) and parts[index].lstrip("-").isdigit():
            position = int(parts[index])
            if not -len(node) <= position < len(node):
                return _MISSING
            node = node[position]
            index += 1
        else:
            return _MISSING
    return node


def _judge(check: Check, subject: str | None, actual) -> CheckResult:
    if actual is None:
        return CheckResult(check, subject, None, True)
    if isinstance(actual, bool):
        actual = float(actual)
    if not isinstance(actual, (int, float)):
        raise BadInputError(f"--fail-if {check.text!r}: {check.path} is a {type(actual).__name__}, not a number")
    actual = float(actual)
    if math.isnan(actual):
        return CheckResult(check, subject, None, True)
    return CheckResult(check, subject, actual, bool(OPERATORS[check.op](actual, check.value)))


ANY = "*"  # in a path skeleton: any key (a set name, a pair name) or list index
INDEX = "#"  # in a path skeleton: a list position only


def _known(skeleton, parts: list[str]) -> bool:
    """Whether ``parts`` can name a value of a document shaped like ``skeleton``.

    A skeleton is a dict of known keys (``ANY`` for free names); ``None`` means a leaf or a list
    whose items are not checked further.
    """
    if not parts:
        return True
    if skeleton is None:
        return len(parts) == 1 and parts[0].lstrip("-").isdigit()
    for end in range(len(parts), 0, -1):  # keys may hold dots: the longest known key wins
        key = ".".join(parts[:end])
        if key in skeleton and _known(skeleton[key], parts[end:]):
            return True
    if INDEX in skeleton:
        return parts[0].lstrip("-").isdigit() and _known(skeleton[INDEX], parts[1:])
    if ANY in skeleton:  # a free name may hold dots, but not swallow the known path after it
        last = len(parts) + 1 if skeleton[ANY] is None else len(parts)
        return any(_known(skeleton[ANY], parts[end:]) for end in range(1, last))
    return False


def _skeleton_paths(skeleton, parts: list[str], prefix: tuple = ()) -> list[str]:
    """Every path a document shaped like ``skeleton`` can hold, a free name (``ANY``, ``INDEX``) taking the
    user's own word at that position (or ``0``), so that a typo elsewhere can be matched whole."""
    if skeleton is None or not isinstance(skeleton, dict):
        return [".".join(prefix)] if prefix else []
    found = [".".join(prefix)] if prefix else []
    for key, child in skeleton.items():
        if key in (ANY, INDEX):
            word = parts[len(prefix)] if len(prefix) < len(parts) else "0"
            if key == INDEX and not word.lstrip("-").isdigit():
                word = "0"
            key = word
        found += _skeleton_paths(child, parts, prefix + (key,))
    return found


def _document_paths(node, prefix: tuple = (), depth: int = 6) -> list[str]:
    """Every dotted path of a JSON document (list items by position), down to ``depth`` levels."""
    found = [".".join(prefix)] if prefix else []
    if depth and isinstance(node, dict):
        for key, child in node.items():
            found += _document_paths(child, prefix + (str(key),), depth - 1)
    elif depth and isinstance(node, list):
        for position, child in enumerate(node[:8]):
            found += _document_paths(child, prefix + (str(position),), depth - 1)
    return found


def suggestion(path: str, candidates: list[str]) -> str:
    """``; did you mean bands.noise.energy_share?`` for the nearest known path, or an empty string."""
    import difflib

    close = difflib.get_close_matches(path, sorted(set(candidates)), n=1, cutoff=0.75)
    return f"; did you mean {close[0]}?" if close else ""


def check_paths(checks: list[Check], skeleton: dict) -> None:
    """Refuse, before any work, a check whose path no report can have (a typo costs no run)."""
    for check in checks:
        parts = check.path.split(".")
        if not _known(skeleton, parts):
            roots = ", ".join(key for key in skeleton if key not in (ANY, INDEX))
            hint = suggestion(check.path, [p for p in _skeleton_paths(skeleton, parts) if _known(skeleton, p.split("."))])
            raise BadInputError(f"--fail-if {check.text!r}: a report has no value at {check.path!r}{hint} "
                                f"(top-level keys: {roots})")


def evaluate(checks: list[Check], document: dict) -> list[CheckResult]:
    """Evaluate checks; a check *fails* when its comparison holds (``--fail-if``), or its value is null.

    Raises
    ------
    BadInputError
        A path found nowhere (the message lists the top-level keys), or a non-numeric value.
    """
    results = []
    for check in checks:
        value = resolve(document, check.path)
        if value is not _MISSING:
            results.append(_judge(check, None, value))
            continue
        sets = document.get("sets") if isinstance(document, dict) else None
        found = False
        for key, entry in (sets or {}).items():
            value = resolve(entry, check.path)
            if value is not _MISSING:
                found = True
                results.append(_judge(check, key, value))
        if not found:
            keys = ", ".join(document) if isinstance(document, dict) else "none"
            candidates = _document_paths(document) + [p for entry in (sets or {}).values() for p in _document_paths(entry)]
            raise BadInputError(f"--fail-if {check.text!r}: no value at {check.path!r}{suggestion(check.path, candidates)} "
                                f"(top-level keys: {keys})")
    return results
