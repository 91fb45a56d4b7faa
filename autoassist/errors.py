"""Exceptions that mean "the user asked for something that cannot work", not "autoassist broke".

The ``autoassist`` command prints these as one line (``autoassist: error: ...``, exit code 2);
anything else it lets through with its full traceback, since that is a bug to report. The
validators of user input (settings, config and space files, job names, budgets, traces) raise
them themselves, so the command needs no guesswork about where an error came from.
"""

from __future__ import annotations


class UsageError(ValueError):
    """Bad command-line arguments, settings file or input data, in words the user can act on.

    A ``ValueError``, so code that catches ``ValueError`` around autoassist calls still does.
    """


class UsageFileNotFoundError(UsageError, FileNotFoundError):
    """A file the user named does not exist (also a ``FileNotFoundError``, as before)."""
