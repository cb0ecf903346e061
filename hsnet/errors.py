"""Errors that a user can act on: the command line prints the message and exits non-zero."""


class HSNetError(Exception):
    """Base class: the message names the file or setting at fault and says what to do."""
