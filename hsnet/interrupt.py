"""Ctrl-C (SIGINT) that can't get lost.

Python turns SIGINT into a KeyboardInterrupt wherever the main thread happens to be. Where that is
inside a finalizer or a callback (a ``__del__``, a gc or weakref callback), Python prints
"Exception ignored in ..." and carries on: the interrupt is gone, and a training would run to its
end. :func:`interruptible` installs a handler that also leaves a flag; loops that must stop call
:func:`check` (the training loop, at every batch).

A process started with SIGINT ignored (``nohup``, a shell's background job) keeps ignoring it, as
Python itself does: Ctrl-C at the terminal is not meant for it.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_requested = threading.Event()


def _on_sigint(signum, frame) -> None:
    _requested.set()
    raise KeyboardInterrupt


@contextmanager
def interruptible() -> Iterator[None]:
    """Inside: SIGINT raises KeyboardInterrupt as usual and is remembered until the block ends
    (the process's previous handler comes back). Only where SIGINT has Python's default handler
    (not where it is ignored, or someone else handles it), and only in the main thread: elsewhere
    this does nothing."""
    if (threading.current_thread() is not threading.main_thread()
            or signal.getsignal(signal.SIGINT) is not signal.default_int_handler):
        yield
        return
    _requested.clear()
    previous = signal.signal(signal.SIGINT, _on_sigint)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        _requested.clear()


def check() -> None:
    """Raise KeyboardInterrupt if SIGINT arrived inside :func:`interruptible` (even where its
    own KeyboardInterrupt was swallowed)."""
    if _requested.is_set():
        raise KeyboardInterrupt
