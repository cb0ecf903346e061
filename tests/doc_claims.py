"""Helpers of the tests that hold the docs to the software: a doc's text as sentences read it, and
the skip once a doc no longer says what a test checks."""

from __future__ import annotations

from pathlib import Path

import pytest


def flat(path: Path) -> str:
    """A doc's text with line breaks and runs of spaces as one space (sentences wrap)."""
    return " ".join(path.read_text(encoding="utf-8").split())


def claimed(text: str, doc: Path) -> None:
    """The test compares the software with these words of ``doc``: once the docs no longer say them,
    there is nothing left to disagree with."""
    if text not in flat(doc):
        pytest.skip(f"{doc.name} no longer says: {text[:80]}...")
