"""The FER datasets: one importer each, reading the layout its publisher ships.

A new dataset is one function decorated with :func:`dataset` here plus one entry in
``params.yaml``. An importer yields :class:`Record` s; splitting, stray-file
accounting and the manifest are shared (:func:`import_dataset`).

Class order (the manifest's ``label``) per dataset:

* rafdb: surprise, fear, disgust, happiness, sadness, anger, neutral (RAF-DB's 1-7)
* rafd: angry, contemptuous, disgusted, fearful, happy, neutral, sad, surprised
* kdef: afraid, angry, disgusted, happy, neutral, sad, surprised (AF AN DI HA NE SA SU)
* ferg, sample: anger, disgust, fear, joy, neutral, sadness, surprise
"""

from __future__ import annotations

import logging
import os
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import HSNetError
from ..io import UnsafePath, dvc_cache_of, is_utf8, output_file, safe_join, sha256_file
from ..params import ImportParams, allowed
from . import splits
from .manifest import MANIFEST, SPLITS, write_manifest

log = logging.getLogger(__name__)

JUNK_NAMES = {".ds_store", "thumbs.db", "desktop.ini"}
JUNK_FOLDERS = {"__macosx", ".appledouble"}  # macOS's resource forks beside the files, under the same names
# where an archive's top folder is, if --root is the folder it was unpacked into
ARCHIVE_TOPS = {"rafdb": "basic", "ferg": "FERG_DB_256"}  # (RaFD and KDEF are found at any depth)
# a manifest cell starting with one of these is a formula to Excel, LibreOffice and Google Sheets
# (OWASP "CSV Injection"): a path that would start so is left out and named
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


class DatasetLayoutError(HSNetError):
    """The dataset root does not look like the named dataset."""


@dataclass(frozen=True)
class Record:
    path: str  # relative to the root, '/'-separated
    label_name: str
    subject: str = ""
    split: str | None = None  # an official split, where the dataset has one


@dataclass
class Scan:
    records: list[Record] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # stray files, relative paths
    missing: list[str] = field(default_factory=list)  # listed by the dataset but not on disk
    inferred: list[str] = field(default_factory=list)  # misnamed files taken as what their folder lacks


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    classes: tuple[str, ...]
    layout: str  # what the root must look like, for error messages
    scan: Callable[[Path, dict], Scan]
    fractions: tuple[float, float]  # (val, test) as fractions of all images (test: of the pool)
    official_test: bool = False  # test split given by the dataset; val is drawn from train
    subjects_known: bool = True
    paper_split_sizes: dict[str, int] | None = None  # warn when a copy differs
    names_photos: bool = False  # a file name is the photo (every field of it parsed): one per name


DATASETS: dict[str, DatasetSpec] = {}


def dataset(name: str, classes, layout: str, fractions, **kw):
    def register(scan):
        DATASETS[name] = DatasetSpec(name, tuple(classes), layout, scan, tuple(fractions), **kw)
        return scan
    return register


def get_spec(name: str) -> DatasetSpec:
    try:
        return DATASETS[name]
    except KeyError:
        raise HSNetError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}") from None


def check_classes(rows: list[dict], classes, manifest: Path, whose: str, what_to_do: str, *,
                  every_class: bool = True) -> None:
    """The data's classes (label -> label_name over the manifest's ``rows``) must be ``classes``,
    index for index (``every_class``: all of them present); otherwise the names a model answers
    with, or the metrics, would be silently wrong (same count, other names) or fail half-way (more
    classes). ``whose`` ends "the classes ..." in the error ("checkpoint X was trained on")."""
    names: dict[int, set] = {}
    for r in rows:
        names.setdefault(int(r["label"]), set()).add(r.get("label_name", ""))
    mixed = {label: sorted(n) for label, n in names.items() if len(n) > 1}
    if mixed:
        label, both = next(iter(mixed.items()))
        raise HSNetError(f"{manifest}: label {label} is named {' and '.join(map(repr, both))} in different "
                         "rows; re-create the manifest with hsnet data import and hsnet crop")
    data = {label: next(iter(n)) for label, n in sorted(names.items())}
    expected = dict(enumerate(classes))
    if data == expected or (not every_class and all(expected.get(k) == v for k, v in data.items())):
        return
    like = [s.name for s in DATASETS.values() if dict(enumerate(s.classes)) == data]
    raise HSNetError(
        f"{manifest} does not hold the classes {whose}: the data has "
        f"{len(data)} classes ({', '.join(f'{i} {n}' for i, n in data.items())})"
        + (f", as {'/'.join(like)} has," if like else "")
        + f" where these {len(classes)} are expected: {', '.join(f'{i} {n}' for i, n in enumerate(classes))}. "
        + what_to_do)


def _walk(root: Path) -> Iterator[str]:
    """The files under ``root`` (relative, '/'-separated), and each folder that is a symbolic link
    as ``"name/"``: not followed (links out of the root are refused, docs/security.md), but named
    among the stray entries, so that an error about a root that seems empty can say why."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        links = [d + "/" for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
        for name in sorted(filenames + links):
            yield Path(dirpath, name).relative_to(root).as_posix() + ("/" if name.endswith("/") else "")


def _is_junk(rel: str) -> bool:
    *folders, name = rel.split("/")
    return name.lower() in JUNK_NAMES or name.startswith("._") or any(f.lower() in JUNK_FOLDERS for f in folders)


def _scan_by_pattern(root: Path, pattern: re.Pattern, make: Callable[[re.Match, str], Record]) -> Scan:
    scan = Scan()
    for rel in _walk(root):
        m = pattern.match(rel.rsplit("/", 1)[-1])
        if m and not _is_junk(rel):
            scan.records.append(make(m, rel))
        else:
            scan.skipped.append(rel)
    return scan


# --- RAF-DB ------------------------------------------------------------------------------

RAFDB_CLASSES = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
RAFDB_LABEL_FILE = "EmoLabel/list_patition_label.txt"  # sic: the file RAF-DB ships


@dataset("rafdb", RAFDB_CLASSES, fractions=(0.1, 0.0), official_test=True, subjects_known=False,
         layout=f"RAF-DB basic: {RAFDB_LABEL_FILE} with lines like 'train_00001.jpg 5' (labels 1-7) "
                "and the images in Image/aligned/train_00001_aligned.jpg (or Image/original/)",
         paper_split_sizes={"train+val": 12271, "test": 3068})
def scan_rafdb(root: Path, options: dict) -> Scan:
    label_file = root / RAFDB_LABEL_FILE
    if not label_file.is_file():
        raise DatasetLayoutError(f"{root} does not look like RAF-DB: {label_file} is missing{_top_hint('rafdb', root)}")
    variant, variants = options.get("rafdb_images", ImportParams.rafdb_images), allowed(ImportParams, "rafdb_images")
    if variant not in variants:
        raise HSNetError(f"rafdb_images must be one of {', '.join(map(repr, variants))}, got {variant!r}")
    try:
        text = label_file.read_text(encoding="utf-8-sig")  # a BOM too
    except UnicodeDecodeError as exc:
        raise DatasetLayoutError(f"{label_file} is not UTF-8 text ({exc.reason} at byte {exc.start}; saved as "
                                 "UTF-16, 'Unicode' in Windows Notepad?): save it as UTF-8, or unpack it again "
                                 "from RAF-DB's archive") from exc
    scan = Scan()
    listed: dict[str, tuple[int, int]] = {}  # image name -> (line, label)
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or not parts[1].isdigit():
            raise DatasetLayoutError(f"{label_file} line {n}: expected '<image name> <label 1-7>', got {line!r}")
        name, label = parts[0], int(parts[1])
        if not 1 <= label <= len(RAFDB_CLASSES):
            raise DatasetLayoutError(f"{label_file} line {n}: unknown label {label} (RAF-DB basic has 1-7)")
        split = "test" if name.startswith("test_") else "train" if name.startswith("train_") else None
        if split is None:
            raise DatasetLayoutError(f"{label_file} line {n}: {name!r} starts with neither train_ nor test_")
        if name in listed:  # one image, listed twice: one record (two would each be "identical" to the other)
            first, first_label = listed[name]
            if first_label != label:
                raise DatasetLayoutError(f"{label_file} lines {first} and {n} give {name!r} two labels ({first_label} "
                                         f"and {label}): keep the right line, delete the other")
            log.warning("%s line %d lists %s again (as line %d did): read once", label_file, n, name, first)
            continue
        listed[name] = (n, label)
        rel = _rafdb_image(name, variant)
        if (root / rel).is_file():
            scan.records.append(Record(rel, RAFDB_CLASSES[label - 1], "", split))
        else:
            scan.missing.append(rel)
    if not scan.records and scan.missing:
        other = next(v for v in variants if v != variant)
        there = sum((root / _rafdb_image(name, other)).is_file() for name in listed)
        advice = (f"Image/{other}/ holds {there} of them: give --rafdb-images {other} (params.yaml: "
                  f"import.rafdb_images)" if there else
                  f"unpack RAF-DB's Image/{variant}.zip into {root / 'Image'} (or give --rafdb-images {other} "
                  f"for the images of Image/{other}.zip)")
        raise DatasetLayoutError(f"{root}: none of the {len(listed)} images {RAFDB_LABEL_FILE} lists is in "
                                 f"Image/{variant}/ (e.g. {scan.missing[0]} is missing); {advice}")
    files = {_rafdb_image(name, variant) for name in listed}
    image_dir = f"Image/{variant}/"
    scan.skipped = [rel for rel in _walk(root) if rel not in files and rel != RAFDB_LABEL_FILE
                    and rel != image_dir  # a linked image folder: its images are opened by name, through it
                    and (rel.startswith(image_dir) or not rel.startswith("Image/"))]
    return scan


def _rafdb_image(name: str, variant: str) -> str:
    """Where RAF-DB keeps the image its label file calls ``name`` (train_00001.jpg): in
    Image/aligned/ as train_00001_aligned.jpg, in Image/original/ as it is."""
    stem, ext = os.path.splitext(name)
    return f"Image/aligned/{stem}_aligned{ext}" if variant == "aligned" else f"Image/original/{name}"


# --- RaFD --------------------------------------------------------------------------------

RAFD_CLASSES = ("angry", "contemptuous", "disgusted", "fearful", "happy", "neutral", "sad", "surprised")
RAFD_PATTERN = re.compile(
    r"^Rafd(?P<angle>\d{3})_(?P<subject>\d{2})_(?P<ethnicity>Caucasian|Moroccan|Kid)_"
    r"(?P<gender>female|male)_(?P<emotion>" + "|".join(RAFD_CLASSES) + r")_"
    r"(?P<gaze>frontal|left|right)\.jpg$", re.IGNORECASE)


@dataset("rafd", RAFD_CLASSES, fractions=(160 / 1005, 201 / 1005), names_photos=True,
         layout="RaFD: files named Rafd{angle}_{subject}_{Caucasian|Moroccan|Kid}_{gender}_{emotion}_"
                "{frontal|left|right}.jpg, e.g. Rafd090_01_Caucasian_female_angry_frontal.jpg",
         # Sect. 4.3: 644 / 160 / 201 images per class; its total "1,440" for val is not 8 x 160
         # (docs/paper-notes.md, "RaFD split sizes")
         paper_split_sizes={"train": 8 * 644, "val": 8 * 160, "test": 8 * 201})
def scan_rafd(root: Path, options: dict) -> Scan:
    return _scan_by_pattern(root, RAFD_PATTERN, lambda m, rel: Record(
        rel, m["emotion"].lower(), f"{m['ethnicity'].lower()}{m['subject']}"))


# --- KDEF --------------------------------------------------------------------------------

KDEF_CODES = {"AF": "afraid", "AN": "angry", "DI": "disgusted", "HA": "happy", "NE": "neutral",
              "SA": "sad", "SU": "surprised"}
KDEF_PATTERN = re.compile(r"^([AB])([FM])(\d\d)(AF|AN|DI|HA|NE|SA|SU)(S|HL|HR|FL|FR)\.JPG$", re.IGNORECASE)


@dataset("kdef", KDEF_CODES.values(), fractions=(0.16, 0.2), names_photos=True,
         layout="KDEF: KDEF/<session><gender><id>/<session><gender><id><emotion><angle>.JPG, "
                "e.g. KDEF/AF01/AF01ANS.JPG")
def scan_kdef(root: Path, options: dict) -> Scan:
    # subject: gender + id (the same person in sessions A and B)
    def record(m: re.Match, rel: str) -> Record:
        return Record(rel, KDEF_CODES[m[4].upper()], f"{m[2].upper()}{m[3]}")

    scan = _scan_by_pattern(root, KDEF_PATTERN, record)
    _kdef_misnamed(scan, record)
    return scan


KDEF_FOLDER = re.compile(r"^[AB][FM]\d\d$", re.IGNORECASE)  # a session's folder: AF01 ... BM35
KDEF_ANGLES = ("S", "HL", "HR", "FL", "FR")


def _kdef_misnamed(scan: Scan, record: Callable[[re.Match, str], Record]) -> None:
    """A session folder (e.g. KDEF/AF31) with one JPEG outside KDEF's naming while exactly one of its
    35 photos (7 expressions x 5 angles) is missing: that file is the missing photo. The archive
    has two such files (AF31V.JPG, AM31H.JPG), which the paper's 4,900 images count; each taken so
    is listed in the summary's ``inferred``."""
    named, stray = defaultdict(set), defaultdict(list)
    for r in scan.records:
        folder, _, name = r.path.rpartition("/")
        named[folder].add(name.upper())
    for rel in scan.skipped:
        folder, _, name = rel.rpartition("/")
        if name.upper().endswith((".JPG", ".JPEG")) and not _is_junk(rel) \
                and KDEF_FOLDER.match(folder.rpartition("/")[2]):
            stray[folder].append(rel)
    for folder, files in stray.items():
        session = folder.rpartition("/")[2].upper()
        missing = {f"{session}{code}{angle}.JPG" for code in KDEF_CODES for angle in KDEF_ANGLES} - named[folder]
        if len(files) == 1 and len(missing) == 1:
            name = missing.pop()
            scan.records.append(record(KDEF_PATTERN.match(name), files[0]))
            scan.skipped.remove(files[0])
            scan.inferred.append(f"{files[0]} as {name}")


# --- FERG-DB (and the built-in sample, drawn in its layout) ------------------------------

FERG_CLASSES = ("anger", "disgust", "fear", "joy", "neutral", "sadness", "surprise")
FERG_CHARACTERS = ("aia", "bonnie", "jules", "malcolm", "mery", "ray")
FERG_PATTERN = re.compile(
    r"^(?P<c>" + "|".join(FERG_CHARACTERS) + r")/(?P=c)_(?P<e>" + "|".join(FERG_CLASSES)
    + r")/(?P=c)_(?P=e)_\d+\.png$", re.IGNORECASE)
FERG_LAYOUT = ("FERG-DB: {character}/{character}_{emotion}/{character}_{emotion}_{n}.png with "
               f"characters {', '.join(FERG_CHARACTERS)} and emotions {', '.join(FERG_CLASSES)}")


def scan_ferg(root: Path, options: dict) -> Scan:
    scan = Scan()
    for rel in _walk(root):
        m = FERG_PATTERN.match(rel)
        if m and not _is_junk(rel):
            scan.records.append(Record(rel, m["e"].lower(), m["c"].lower()))
        else:
            scan.skipped.append(rel)
    return scan


dataset("ferg", FERG_CLASSES, fractions=(0.1, 0.1), layout=FERG_LAYOUT)(scan_ferg)
dataset("sample", FERG_CLASSES, fractions=(0.1, 0.1),
        layout="the built-in sample ('hsnet data sample'), in the " + FERG_LAYOUT)(scan_ferg)


# --- shared --------------------------------------------------------------------------------

def _top_hint(name: str, root: Path) -> str:
    """'; give --root ROOT/TOP' when ``root`` holds the archive's top folder instead of being it."""
    top = ARCHIVE_TOPS.get(name)
    return f"; it holds {top}/: give --root {root / top}" if top and (root / top).is_dir() else ""


def _shown(name: str) -> str:
    """``name`` as text that can be written anywhere: a byte that isn't UTF-8 as ``\\udcXX``."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def _without_duplicates(root: Path, records: list[Record]) -> tuple[list[Record], list[str]]:
    """``records`` (sorted by path) less the files byte-identical to another, and what was left
    out, each with its reason. One photo in two splits is leakage (validate refuses it), and one
    photo under two labels is a contradiction: of identical files with one label the first is kept;
    of identical files with different labels none (KDEF ships four copies of one black placeholder,
    each named for another expression). Only files sharing a size are read."""
    by_size = defaultdict(list)
    for r in records:
        try:
            by_size[os.stat(root / r.path).st_size].append(r)
        except OSError:  # unreadable now: validate names it
            pass
    groups = defaultdict(list)
    for same in by_size.values():
        if len(same) < 2:
            continue
        for r in {r.path: r for r in same}.values():  # a path once: a file is no copy of itself
            try:  # regular files only: a FIFO or a device is refused, never read (validate names it)
                groups[sha256_file(root / r.path)].append(r)
            except HSNetError:
                pass
    dropped, reasons = set(), []
    for group in groups.values():
        if len(group) < 2:
            continue
        labels = sorted({r.label_name for r in group})
        if len(labels) == 1:
            for r in group[1:]:
                dropped.add(r.path)
                reasons.append(f"{r.path}: identical to {group[0].path}")
        else:
            for r in group:
                dropped.add(r.path)
            reasons.append(f"{', '.join(r.path for r in group)}: identical files labelled {', '.join(labels)}")
    return [r for r in records if r.path not in dropped], reasons


def _one_per_name(records: list[Record]) -> tuple[list[Record], list[str]]:
    """``records`` (sorted by path) with one file per name (case aside), and what was left out, each
    with its reason: where a dataset's file name is the photo (RaFD, KDEF), a second file of the same
    name is another copy of that photo (a resized or re-saved folder beside the originals): split
    apart, one photo would be trained on and tested on, and no byte comparison sees it."""
    first: dict[str, Record] = {}
    kept, reasons = [], []
    for r in records:
        name = r.path.rsplit("/", 1)[-1].lower()
        if name in first:
            reasons.append(f"{r.path}: the same photo as {first[name].path} (another copy of it under --root; "
                           "keep one copy of the dataset there)")
        else:
            first[name] = r
            kept.append(r)
    return kept, reasons


def _check_apart(root: Path, out: Path) -> None:
    """Refuse an ``--out`` inside ``--root``: the raw data is read, never written (a manifest there
    would replace a file of the dataset, or change what data.dvc records)."""
    data = os.stat(root)
    # the folder the manifest is written into (its temporary file renamed there: a link named --out is
    # replaced, not followed, as in a DVC checkout with cache.type symlink) and those above it, compared
    # by identity (device, inode): a case-insensitive disk (macOS: --out Data/raw/... for --root
    # data/raw) or another link to the root is the root too
    folder = Path(os.path.realpath(os.path.dirname(out) or "."))  # links first, then "..", as the kernel does
    holders = [p for p in (folder, *folder.parents) if p.exists()]
    if any(os.path.samestat(os.stat(p), data) for p in holders):
        replaced = f", replacing the dataset's {out}" if os.path.lexists(out) else ""
        raise HSNetError(f"--out {out} is inside the dataset folder --root {root}: import writes nothing there "
                         f"(the manifest would change the raw data{replaced}); give a file outside it, e.g. "
                         f"data/interim/<dataset>/{MANIFEST}")


def _inside(root: Path, records: list[Record]) -> tuple[list[Record], list[str]]:
    """``records`` less the images that lead out of ``root`` through a symbolic link (validate
    refuses a manifest holding one: docs/security.md), and those left out. DVC's cache, which a
    ``cache.type symlink`` checkout links into, is inside."""
    linked, kept, outside = dvc_cache_of(root), [], []
    for r in records:
        try:
            safe_join(root, r.path, what="image", also=linked)
            kept.append(r)
        except UnsafePath:
            outside.append(r.path)
    return kept, outside


def _links_hint(root: Path, links: list[str]) -> str:
    if not links:
        return ""
    first = root / links[0].rstrip("/")
    return (f"; {', '.join(links[:3])} {'is a symbolic link' if len(links) == 1 else 'are symbolic links'} to "
            f"a folder, which import doesn't follow (a link out of --root, docs/security.md): give its target "
            f"({os.path.realpath(first)}) or a folder holding it as --root, or copy the files in")


def _outside_hint(outside: list[str]) -> str:
    return (f"; {len(outside)} image(s) lead out of --root through a symbolic link (e.g. {outside[0]}) and are "
            "not imported (docs/security.md): copy them in, or give the folder they are in as --root") if outside else ""


def import_dataset(name: str, root: str | os.PathLike, out: str | os.PathLike,
                   settings: ImportParams = ImportParams()) -> dict:
    """Read dataset ``name`` at ``root`` and write its manifest to ``out``. Returns a summary."""
    spec = get_spec(name)
    seed, split_by, options = settings.seed, settings.split_by, {"rafdb_images": settings.rafdb_images}
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"dataset root {root} is not a directory; expected {spec.layout}")
    _check_apart(root, Path(out))
    output_file(out, "--out")
    if split_by not in allowed(ImportParams, "split_by"):
        raise HSNetError(f"--split-by must be one of {', '.join(map(repr, allowed(ImportParams, 'split_by')))}, "
                         f"got {split_by!r}")
    if split_by == "subject" and not spec.subjects_known:
        raise HSNetError(f"--split-by subject: {name} does not identify subjects; use --split-by class")
    scan = spec.scan(root, options)
    links = [rel for rel in scan.skipped if rel.endswith("/")]  # linked folders, not followed (_walk)
    scan.records, outside = _inside(root, scan.records)  # counted apart from the stray files
    if not scan.records:
        examples = ", ".join(scan.skipped[:3]) or "no files at all"
        raise DatasetLayoutError(f"{root} does not look like {name}: no image matched. Expected {spec.layout}. "
                                 f"Found {len(scan.skipped)} other file(s) ({examples}){_top_hint(name, root)}"
                                 + _links_hint(root, links) + _outside_hint(outside))
    if links:
        log.warning("not read: %s%s", ", ".join(str(root / rel) for rel in links[:3]), _links_hint(root, links))
    if outside:
        log.warning("%s: left out%s", root, _outside_hint(outside))
    unnamed = [r.path for r in scan.records if not is_utf8(r.path)]
    if unnamed:  # a manifest is UTF-8: a name that isn't can't be written there (a zip's code page)
        log.warning("skipped %d image(s) whose names are not UTF-8, e.g. %s: rename them (e.g. with convmv) to "
                    "import them", len(unnamed), ", ".join(map(_shown, unnamed[:3])))
        scan.records = [r for r in scan.records if is_utf8(r.path)]
        scan.skipped += unnamed
    formulas = [r.path for r in scan.records if r.path.startswith(FORMULA_STARTS)]
    if formulas:  # a spreadsheet runs such a manifest cell (OWASP "CSV Injection"): the path can't be written as it is
        log.warning("left out %d image(s) whose path starts with one of %s, e.g. %s: a spreadsheet opening the "
                    "manifest would run it as a formula; rename the folder (or file) to import them",
                    len(formulas), " ".join(repr(c) for c in FORMULA_STARTS), ", ".join(map(_shown, formulas[:3])))
        scan.records = [r for r in scan.records if not r.path.startswith(FORMULA_STARTS)]
    scan.skipped = [_shown(rel) for rel in scan.skipped]
    scan.records.sort(key=lambda r: r.path)
    if not scan.records:
        raise DatasetLayoutError(f"{root}: every image matched has a name that is not UTF-8 or starts like a "
                                 f"spreadsheet formula (e.g. {', '.join(map(_shown, (unnamed + formulas)[:3]))}); "
                                 "rename them to import them")
    matched = len(scan.records)
    scan.records, duplicates = _without_duplicates(root, scan.records)
    if spec.names_photos:
        scan.records, copies = _one_per_name(scan.records)
        duplicates += copies
    if not scan.records:
        raise DatasetLayoutError(f"{root}: every image is identical to another under another label (e.g. "
                                 f"{'; '.join(duplicates[:2])}): nothing is left to import")
    assigned = splits.assign(scan.records, spec, seed=seed, by=split_by)
    rows = [{"path": r.path, "label": spec.classes.index(r.label_name), "label_name": r.label_name,
             "split": split, "subject": r.subject} for r, split in zip(scan.records, assigned)]
    write_manifest(out, rows)
    summary = {
        "dataset": name, "root": str(root), "images": len(rows), "seed": seed, "split_by": split_by,
        "splits": {s: sum(1 for r in rows if r["split"] == s) for s in SPLITS},
        "classes": dict(Counter(r["label_name"] for r in rows)),
        "skipped": len(scan.skipped), "skipped_examples": scan.skipped[:5],
        "outside_root": len(outside), "outside_root_examples": outside[:5],
        "formula_like": len(formulas), "formula_like_examples": [_shown(p) for p in formulas[:5]],
        "missing": len(scan.missing), "missing_examples": scan.missing[:5],
        "duplicates": matched - len(rows), "duplicate_examples": duplicates[:5],
        "inferred": scan.inferred,
    }
    if scan.skipped:
        log.info("skipped %d stray file(s) under %s, e.g. %s", len(scan.skipped), root,
                 ", ".join(scan.skipped[:3]))
    if duplicates:  # each named: which photos the dataset lost
        log.warning("left out %d image(s) identical to another, or another copy of one:", matched - len(rows))
        for reason in duplicates:
            log.warning("  %s", reason)
    for what in scan.inferred:
        log.warning("a misnamed file taken by what its folder lacks: %s", what)
    if scan.missing:
        log.warning("%d image(s) listed by %s are not on disk, e.g. %s", len(scan.missing), name,
                    ", ".join(scan.missing[:3]))
    return summary
