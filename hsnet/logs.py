"""Logging as every hsnet entry point has it (the CLI, the Kubeflow components)."""

from __future__ import annotations

import logging
import os
import select
import signal
import sys

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
QUIET = ("great_expectations", "botocore", "urllib3", "matplotlib", "PIL")  # their INFO lines drown hsnet's


def setup(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format=FORMAT)
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
