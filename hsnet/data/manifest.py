"""The manifest: one CSV row per image, the contract between import, validate, crop and train."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from ..errors import HSNetError
from ..io import atomic_path

COLUMNS = ["path", "label", "label_name", "split", "subject"]
SPLITS = ("train", "val", "test")


class ManifestError(HSNetError):
    pass


def write_manifest(path: str | os.PathLike, rows: list[dict], columns: list[str] | None = None) -> None:
    """Write ``rows`` atomically; ``columns`` defaults to the core columns plus any extra ones."""
    columns = list(columns or COLUMNS)
    for row in rows[:1]:
        columns += [k for k in row if k not in columns]
    with atomic_path(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def read_manifest(path: str | os.PathLike, required: list[str] | None = None) -> list[dict]:
    """Rows of a manifest as dicts (``label`` as int). Fails clearly on a missing or bad file."""
    path = Path(path)
    if not path.is_file():
        raise ManifestError(f"manifest {path} does not exist; create it with 'hsnet data import'")
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        missing = [c for c in (required or COLUMNS) if c not in (reader.fieldnames or [])]
        if missing:
            raise ManifestError(f"manifest {path} lacks the column(s) {', '.join(missing)} "
                                f"(has: {', '.join(reader.fieldnames or [])}); "
                                "re-create it with 'hsnet data import'")
        rows = list(reader)
    for i, row in enumerate(rows, start=2):
        if "label" not in row:
            continue
        try:
            row["label"] = int(row["label"])
        except (TypeError, ValueError):
            raise ManifestError(f"manifest {path} line {i}: label {row['label']!r} is not an integer")
    return rows
