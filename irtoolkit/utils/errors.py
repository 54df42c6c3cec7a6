"""The errors that are the user's to fix, not bugs: the command-line tools end with their message (one line per
problem) and exit status 2, without a traceback (``--debug`` or ``IRTK_TRACEBACK=1`` shows it)."""

__all__ = ['UserError', 'OptionError']


class UserError(Exception):
    """A problem with what the user gave: options, files, checkpoints, data."""


class OptionError(UserError, ValueError):
    """A wrong option: the message names the file (when known), the key and what was expected; several problems
    of one file are one line each."""
