"""The manifest: one CSV row per image, the contract between import, validate, crop and train."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from ..errors import HSNetError
from .. import files
from ..io import FileReadError, atomic_path, open_regular

COLUMNS = ["path", "label", "label_name", "split", "subject"]
SPLITS = TRAIN, VAL, TEST = ("train", "val", "test")
MANIFEST, CROP_REPORT = files.MANIFEST, files.CROP_REPORT  # in a crop folder


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
    """Rows of a manifest as dicts (``label`` as int). Fails clearly on a missing or bad file:
    not a regular file, not UTF-8, not CSV, short or long rows, labels that aren't integers."""
    return _read(path, required)[1]


def manifest_columns(path: str | os.PathLike) -> list[str]:
    """The header of a manifest, read as :func:`read_manifest` reads it."""
    return _read(path, [])[0]


def _read(path: str | os.PathLike, required: list[str] | None) -> tuple[list[str], list[dict]]:
    path = Path(path)
    if not path.exists():
        raise ManifestError(f"manifest {path} does not exist; create it with 'hsnet data import'")
    try:
        with open_regular(path) as raw, io.TextIOWrapper(raw, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            fieldnames = next(reader, [])
            missing = [c for c in (required if required is not None else COLUMNS) if c not in fieldnames]
            if missing:
                raise ManifestError(f"manifest {path} lacks the column(s) {', '.join(missing)} "
                                    f"(has: {', '.join(fieldnames)}); re-create it with 'hsnet data import'")
            rows = []
            for record in reader:
                if not record or (len(record) == 1 and not record[0].strip()):  # a blank line
                    continue
                if len(record) != len(fieldnames):  # more, or fewer (a line cut short, a hand edit)
                    raise ManifestError(f"manifest {path} line {reader.line_num}: {len(record)} fields, the header "
                                        f"has {len(fieldnames)}")
                rows.append(dict(zip(fieldnames, record)))
    except FileReadError as exc:
        raise ManifestError(f"manifest {exc}") from exc
    except UnicodeDecodeError as exc:
        raise ManifestError(f"manifest {path} is not UTF-8 text ({_first_bad_line(path)}); "
                            "save it as UTF-8") from exc
    except csv.Error as exc:
        raise ManifestError(f"manifest {path}: not a readable CSV file ({exc})") from exc
    except OSError as exc:
        raise ManifestError(f"manifest {path}: read error ({exc.strerror or exc})") from exc
    for i, row in enumerate(rows, start=1):
        if "label" not in row:
            continue
        try:
            row["label"] = int(row["label"])
        except (TypeError, ValueError):
            raise ManifestError(f"manifest {path} row {i}: label {row['label'][:50]!r} is not an integer") from None
    return fieldnames, rows


def _first_bad_line(path: Path) -> str:
    """Where a file stops being UTF-8: 'line N: b'...''."""
    with open_regular(path) as f:
        for n, line in enumerate(f, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as exc:
                return f"line {n}: {line[max(0, exc.start - 10):exc.start + 10]!r}"
    return "an invalid byte sequence"


def crop_settings(data_dir: str | os.PathLike) -> dict | None:
    """The settings ``hsnet crop`` cut the crops in ``data_dir`` with (its report's ``settings``,
    every key of the crop section), or None where no report says (crops made otherwise)."""
    import dataclasses
    import json

    from ..params import CropParams, ParamsError, section

    path = Path(data_dir) / CROP_REPORT
    try:
        with open_regular(path) as f:
            settings = json.load(f).get("settings")
    except FileReadError:
        if not path.exists():
            return None
        raise
    except (ValueError, AttributeError) as exc:
        raise ManifestError(f"{path} is not hsnet crop's report ({exc}); run hsnet crop again") from exc
    if not isinstance(settings, dict):
        return None
    try:
        return dataclasses.asdict(section(CropParams, settings))
    except ParamsError as exc:
        raise ManifestError(f"{path}: its crop settings are not this version's ({exc}); run hsnet crop again") from exc
