"""The one exception type that means "the user's input is wrong", as opposed to a bug in jtcse.

``jtcse`` prints a :class:`UserError` as one line (``jtcse: error: <message>``) and exits with status 2, which
the retrain flow reads as "do not retry". Anything else that escapes is a bug and keeps its traceback (exit 1).
Raise it (or a subclass) only where the input was checked and the message says what was wrong and what is
expected: the file and line, or the settings key.
"""

from __future__ import annotations


class UserError(ValueError):
    """Bad input: a file, a setting or an option the user gave; the message names it and says what is expected."""


class ConfigError(UserError):
    """A setting is missing, unknown or invalid; the message names the file and the key."""


class InputNotFoundError(UserError, FileNotFoundError):
    """An input file or folder the user named does not exist."""


class StorageUnavailableError(UserError):
    """The study database did not answer (or refused the connection) within the connect timeout."""
