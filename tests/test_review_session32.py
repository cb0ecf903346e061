"""Session 32's review: defects found by reading the code and the CI rehearsal again."""
from __future__ import annotations

import sys

from hsnet import tracking


def test_no_bytecode_puts_the_users_setting_back_when_the_last_of_overlapping_bodies_ends(monkeypatch):
    """Two model loads overlap (serve's threads): the first to end must not turn bytecode writing
    back on under the second, and the last to end puts back what the user had (False here)."""
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    first, second = tracking.no_bytecode(), tracking.no_bytecode()
    first.__enter__()
    assert sys.dont_write_bytecode is True
    second.__enter__()
    first.__exit__(None, None, None)  # the first ends while the second still loads
    assert sys.dont_write_bytecode is True
    second.__exit__(None, None, None)
    assert sys.dont_write_bytecode is False
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # PYTHONDONTWRITEBYTECODE=1: kept
    with tracking.no_bytecode():
        pass
    assert sys.dont_write_bytecode is True
