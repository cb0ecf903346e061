"""Logging as every hsnet entry point has it (the CLI, the Kubeflow components)."""

from __future__ import annotations

import logging
import os
import select
import signal
import sys
import unicodedata

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
QUIET = ("great_expectations", "botocore", "urllib3", "matplotlib", "PIL")  # their INFO lines drown hsnet's


def printable(text: str, *, lines: bool = False) -> str:
    """``text`` as a terminal can show it without being steered by it: control characters (ESC
    sequences that clear the screen, retitle the window or make links; a carriage return that
    overwrites a line), format characters (U+202E turns what follows around) and line separators
    become Python escapes (``\\x1b``, ``\\u202e``), as git and ``ls`` show such file names. A
    newline stays one only with ``lines`` (an error of several lines); a name's newline would forge a
    line of its own. Tabs stay."""
    keep = _JOINERS + ("\t\n" if lines else "\t")
    return "".join(c if c in keep or unicodedata.category(c) not in _UNSHOWN else c.encode("unicode_escape").decode()
                   for c in text)


_UNSHOWN = {"Cc", "Cf", "Zl", "Zp", "Cs"}  # controls, format characters, line/paragraph separators, surrogates
_JOINERS = "\u200c\u200d"  # format characters that are part of names (Persian spelling, emoji sequences): shown


class _Printable(logging.Formatter):
    """Log messages as :func:`printable`, a message's further lines indented (a child's output, a
    file name's newline): a file name can't steer the terminal, and every line that starts at the
    margin is a log line hsnet wrote, with its time and level."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        record.message = indented(record.message)
        return super().formatMessage(record)

    def formatException(self, ei) -> str:  # noqa: N802 - a traceback's text: an exception's message too
        return "    " + indented(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802
        return "    " + indented(super().formatStack(stack_info))


def indented(text: str) -> str:
    """:func:`printable` with its lines kept, the further ones indented (an error or log message)."""
    return printable(text, lines=True).replace("\n", "\n    ")


def setup(verbose: bool = False) -> None:
    """Logging at INFO (DEBUG with ``verbose``) as :data:`FORMAT`, through :class:`_Printable`; where
    the root logger already writes to the terminal (kfp's executor set it up first in a component),
    its handlers keep their format and get the escaping."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=FORMAT)
    for handler in logging.getLogger().handlers:
        fmt = handler.formatter
        if (isinstance(handler, logging.StreamHandler) and handler.stream in (sys.stderr, sys.stdout)
                and not isinstance(fmt, _Printable)):
            handler.setFormatter(_Printable(fmt._fmt if fmt else FORMAT, fmt.datefmt if fmt else None))
    for name in QUIET:
        logging.getLogger(name).setLevel(logging.WARNING)


def stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has gone (poll says POLLERR on its write end): a
    BrokenPipeError from elsewhere (a socket, a child's pipe) is an error of its own."""
    try:
        poll = select.poll()
        poll.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poll.poll(0))
    except (OSError, ValueError, AttributeError):  # no real stdout (replaced, closed)
        return False


def reader_gone() -> int:
    """After a BrokenPipeError on stdout (``hsnet promote --history | head``: the reader stopped
    reading): stdout to /dev/null, so Python's flush at exit raises nothing more, and the exit
    code a command killed by SIGPIPE has (141 in the shell; Python's docs, "Note on SIGPIPE", show
    how to keep the flush at exit quiet)."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 128 + signal.SIGPIPE
