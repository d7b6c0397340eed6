"""The project's user-error type: a mistake the user can fix (bad input, settings, a refused file).

The CLI prints such an error as one line and exits with status 2; any other exception is a bug and keeps its
traceback (exit 1).
"""

from __future__ import annotations


class UserError(ValueError):
    """Something the user can fix; the message names the file, setting or folder and what is expected."""
