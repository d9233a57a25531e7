"""Typed errors whose text is written for the user.

Library code raises these; ``commands/common.py`` (``user_errors``, used by every command) turns them into
one ``Error: ...`` line on stderr and exit code 1.
"""

from __future__ import annotations


class RecJPQError(Exception):
    """A user-facing error: the message names the file or setting and the problem."""


class InputError(RecJPQError):
    """A missing, unreadable, malformed or foreign input file."""


class ConfigError(RecJPQError):
    """Impossible or contradictory settings."""


class OutputExistsError(RecJPQError):
    """An output exists and ``--overwrite`` was not given."""


class WriteError(RecJPQError):
    """An output could not be written: a read-only or full disk, a folder in the way, a busy path."""


class NonFiniteError(RecJPQError):
    """A model produced NaN or infinite scores: an error, never a ranking (NaN compares false)."""


class ResourceError(RecJPQError):
    """The job would not fit in the available memory."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first line of an exception's message (its type's name when it has none), at most ``limit`` chars:
    what a one-line error may quote of a library's multi-line message."""
    return (str(e).splitlines() or [type(e).__name__])[0][:limit]
