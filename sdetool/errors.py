"""The exceptions the library raises. Only :mod:`sdetool.cli` turns them into messages and exit codes."""


class SdetoolError(Exception):
    """Base class: a problem the user can fix; the message is one line and names the culprit."""


class BadInputError(SdetoolError, ValueError):
    """An input file, array or option value is not what was expected."""


class BadStoreError(BadInputError):
    """An HDF5 file is unreadable, truncated or does not follow the sdetool store layout."""


class NewerVersionError(BadStoreError):
    """A store or report written by a newer sdetool, in a major version this one does not read."""


class UnknownKeyError(BadInputError, KeyError):
    """A requested embedding set (key) is not in the input; the message lists the keys found."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class UnknownModelError(SdetoolError):
    """A model name or folder that no backend can load; the message lists what is available."""


class TrainingError(SdetoolError):
    """Training cannot go on (a NaN loss); the message names the step and the last good checkpoint."""


class TrainingInterrupted(SdetoolError):
    """Training was interrupted (Ctrl-C); a resumable checkpoint was saved."""
