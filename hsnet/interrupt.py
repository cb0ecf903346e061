"""Ctrl-C (SIGINT) that can't get lost.

Python turns SIGINT into a KeyboardInterrupt wherever the main thread happens to be. Where that is
inside a finalizer or a callback (a ``__del__``, a gc or weakref callback), Python prints
"Exception ignored in ..." and carries on: the interrupt is gone, and a training would run to its
end. :func:`interruptible` installs a handler that also leaves a flag; loops that must stop call
:func:`check` (the training loop, at every batch).

A process started with SIGINT ignored (``nohup``, a shell's background job) keeps ignoring it, as
Python itself does: Ctrl-C at the terminal is not meant for it.

SIGTERM (a pod's preemption or deletion, ``timeout``, ``kill``) ends the process without running
any ``finally`` block by default, leaving temporary files behind (a half-decoded tensor cache
file, up to the split's whole size). Inside :func:`interruptible` it raises :class:`Terminated`,
a KeyboardInterrupt, so it is cleaned up like Ctrl-C.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_requested = threading.Event()


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (inside :func:`interruptible`)."""


def _on_sigint(signum, frame) -> None:
    _requested.set()
    raise KeyboardInterrupt


def _on_sigterm(signum, frame) -> None:
    _requested.set()
    raise Terminated


def _handlers() -> dict:
    """The signals whose default handler is in place, with hsnet's for each."""
    return {sig: handler for sig, default, handler in [(signal.SIGINT, signal.default_int_handler, _on_sigint),
                                                       (signal.SIGTERM, signal.SIG_DFL, _on_sigterm)]
            if signal.getsignal(sig) is default}


def install() -> None:
    """:func:`interruptible` for the rest of the process: a Kubeflow step's pod, whose one job is
    the step (a preempted pod's SIGTERM then ends the step through its ``finally`` blocks: temporary
    files removed, its MLflow run ended as killed). Main thread only; elsewhere nothing."""
    if threading.current_thread() is threading.main_thread():
        _requested.clear()
        for sig, handler in _handlers().items():
            signal.signal(sig, handler)


@contextmanager
def interruptible() -> Iterator[None]:
    """Inside: SIGINT raises KeyboardInterrupt as usual, SIGTERM raises :class:`Terminated`, and
    either is remembered until the block ends (the process's previous handlers come back). Each
    only where it has its default handler (not where it is ignored, or someone else handles it),
    and only in the main thread: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    handlers = _handlers()
    _requested.clear()
    previous = {sig: signal.signal(sig, handler) for sig, handler in handlers.items()}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        _requested.clear()


def check() -> None:
    """Raise KeyboardInterrupt if SIGINT arrived inside :func:`interruptible` (even where its
    own KeyboardInterrupt was swallowed)."""
    if _requested.is_set():
        raise KeyboardInterrupt
