"""Validation of a manifest and its image files with Great Expectations (GX 1.x).

The image files are inspected first (exists, decodes fully, RGB-convertible, size, sha256),
in parallel and cached by file (size, times, inode: hsnet.io.file_stamp) and by the code that
inspects them (hsnet.sources.code_version), so a re-run over 30k images is fast. The results
become columns of the manifest's table, and a GX suite checks the table. The report directory
gets the GX results as JSON and GX's Data Docs as HTML.
"""

from __future__ import annotations

import dataclasses

import html
import logging
import os
import sqlite3
import threading
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from .. import sources
from ..errors import HSNetError
from ..files import DATA_DOCS
from ..files import GX_RESULTS as RESULTS
from ..files import VALIDATION_SUMMARY as SUMMARY
from ..params import ValidateParams
from ..io import CACHE_ENV, FileReadError, UnsafePath, cache_folder, cache_root, check_writable, clean_stale_tmp, dvc_cache_of, file_stamp, \
    open_rgb, remove_stale_temporaries, safe_join, sha256_file, temp_dir, usable_cores, write_json
from .crop import clash_message, colliding_rows, pixels_sha256
from .datasets import get_spec
from .manifest import COLUMNS, SPLITS, manifest_columns, read_manifest

log = logging.getLogger(__name__)

# validate's suites
ROW_SUITE = "manifest_and_images"  # the suite of the critical checks, row by row
SIZE_SUITE = "paper_split_sizes"  # split sizes against the paper's: warnings only



class ValidationFailed(HSNetError):
    """The data failed one or more critical expectations; the message lists them."""


@dataclass
class ImageInfo:
    exists: bool
    decodes: bool
    width: int
    height: int
    sha256: str
    error: str
    pixels: str = ""  # crop.pixels_sha256 of the decoded image: the same photo saved again has the same


def _image_info_cache() -> ImageInfoCache | None:
    """The image checks' cache under :func:`~hsnet.io.cache_root`; None (every image checked, with a
    warning) where it can't be made: validation doesn't need it."""
    try:
        path = cache_folder(cache_root()) / "image-info.sqlite"
        if path.exists() and not os.access(path, os.R_OK | os.W_OK):  # another user's, in a shared cache
            raise HSNetError(f"{path} can't be written by this user: set {CACHE_ENV} to a folder of your own")
        return ImageInfoCache(path)
    except (HSNetError, sqlite3.Error) as exc:
        log.warning("image checks not cached: %s", exc)
        return None


class ImageInfoCache:
    """sqlite: absolute path -> (:func:`~hsnet.io.file_stamp` and the code version that inspected it,
    ImageInfo). Thread-safe, one connection per thread."""

    TABLE = "image_info_v4"  # v1 was keyed by size and mtime alone; v2's errors named the path as spelled; v4: pixels

    def __init__(self, path: Path | None):
        self.path = path
        self._local = threading.local()
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            with sqlite3.connect(path) as db:
                db.execute(f"CREATE TABLE IF NOT EXISTS {self.TABLE} (path TEXT PRIMARY KEY, stamp TEXT,"
                           " decodes INTEGER, width INTEGER, height INTEGER,"
                           " sha256 TEXT, error TEXT, pixels TEXT)")

    def _db(self):
        if not hasattr(self._local, "db"):
            self._local.db = sqlite3.connect(self.path, timeout=30)
        return self._local.db

    def get_many(self, keys: list[str]) -> dict[str, tuple[str, ImageInfo]]:
        """key -> (stamp, ImageInfo) for the keys the cache knows, in a few queries."""
        if self.path is None or not keys:
            return {}
        out = {}
        db = self._db()
        for start in range(0, len(keys), 900):  # sqlite's default limit of bound parameters
            chunk = keys[start:start + 900]
            rows = db.execute(f"SELECT path, stamp, decodes, width, height, sha256, error, pixels FROM {self.TABLE} "
                              f"WHERE path IN ({','.join('?' * len(chunk))})", chunk).fetchall()
            for key, stamp, decodes, w, h, sha, err, pixels in rows:
                out[key] = (stamp, ImageInfo(True, bool(decodes), w, h, sha, err, pixels or ""))
        return out

    def put_many(self, items: list[tuple[str, str, ImageInfo]]) -> None:
        if self.path is None or not items:
            return
        with sqlite3.connect(self.path, timeout=30) as db:
            db.executemany(f"INSERT OR REPLACE INTO {self.TABLE} VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                           [(k, stamp, int(i.decodes), i.width, i.height, i.sha256, i.error, i.pixels)
                            for k, stamp, i in items])


def _inspect(path: Path) -> ImageInfo:
    """Only regular files are read (a FIFO would hang, /dev/zero never end): anything else, and
    anything that doesn't decode, is a row with ``decodes`` False and the reason in ``error``."""
    digest = ""
    try:
        digest = sha256_file(path)
        img = open_rgb(path)
    except FileReadError as exc:  # the reason without the path, which the row shows (and the cache is
        reason = str(exc)         # shared by runs that spell the path otherwise: the verdict must not vary)
        prefix = f"{path}: "
        return ImageInfo(True, False, 0, 0, digest, reason[len(prefix):] if reason.startswith(prefix) else reason)
    return ImageInfo(True, True, img.width, img.height, digest, "", pixels_sha256(img))


LIBRARIES = ("PIL",)  # (import name) what decodes an image for inspection


def inspect_images(paths: list[Path], *, workers: int | None = None,
                   cache: ImageInfoCache | None = None, progress: bool = True) -> list[ImageInfo]:
    """ImageInfo for each path (same order): parallel, and cached by :func:`~hsnet.io.file_stamp`, the
    code that inspects (:func:`hsnet.sources.code_version`) and Pillow's version."""
    from tqdm import tqdm

    cache = cache or ImageInfoCache(None)
    # one stat per file and a few cache queries up front; only new or changed files are decoded
    infos: list[ImageInfo | None] = [None] * len(paths)
    todo = []
    keys, stats = [], []
    for i, path in enumerate(paths):
        try:
            st = path.stat()
        except OSError:
            infos[i] = ImageInfo(False, False, 0, 0, "", "file not found")
            continue
        keys.append(os.path.abspath(path))
        stats.append((i, path, st))
    known = cache.get_many(keys)
    # an entry holds what this code and Pillow found: other code, or another Pillow, inspects again
    libraries = sources.library_versions(LIBRARIES)
    code = " ".join([sources.code_version(__name__), *(f"{d}={v}" for d, v in libraries.items())])

    def stamp(st) -> str:
        return f"{file_stamp(st)} {code}"

    for key, (i, path, st) in zip(keys, stats):
        hit = known.get(key)
        if hit is not None and hit[0] == stamp(st):
            infos[i] = hit[1]
        else:
            todo.append((i, path, key, st))

    fresh = []
    if todo:
        with ThreadPoolExecutor(max_workers=workers or min(32, usable_cores() * 2)) as pool:
            results = pool.map(lambda t: _inspect(t[1]), todo)
            for (i, _, key, st), info in tqdm(zip(todo, results), total=len(todo), disable=None if progress else True,
                                              desc="inspecting images", unit="img", leave=False):
                infos[i] = info
                fresh.append((key, stamp(st), info))  # the stamp from before the read
    cache.put_many(fresh)
    return infos


def build_table(rows: list[dict], root: Path, workers: int | None, cache: ImageInfoCache | None, progress: bool):
    """The manifest as a pandas DataFrame with the columns the expectations check."""
    import pandas as pd

    df = pd.DataFrame(rows)
    for col in ("path", "label_name", "split"):
        df[col] = df[col].replace("", None)
    paths = [p if isinstance(p, str) else "" for p in df["path"]]  # empty cells are None/NaN here
    files, refusals, linked = [], [], dvc_cache_of(root)  # a checkout of links into the DVC cache is the data
    for p in paths:
        try:
            files.append(safe_join(root, p, what="path", also=linked))
            refusals.append("")
        except UnsafePath as exc:
            files.append(None)
            refusals.append(str(exc))
    checked = [f for f in files if f is not None]
    infos = iter(inspect_images(checked, workers=workers, cache=cache, progress=progress))
    infos = [next(infos) if f is not None else ImageInfo(False, False, 0, 0, "", why)
             for f, why in zip(files, refusals)]
    df["path_inside_root"] = [f is not None for f in files]
    clashes = colliding_rows(paths)
    df["crop_name_unique"] = [i not in clashes for i in range(len(df))]
    for i, j in clashes.items():
        infos[i] = dataclasses.replace(infos[i], error=clash_message(paths[i], paths[j]))
    df["file_exists"] = [i.exists for i in infos]
    df["decodes"] = [i.decodes for i in infos]
    df["min_side"] = [min(i.width, i.height) if i.decodes else None for i in infos]  # one failure, one record
    df["sha256"] = [i.sha256 or None for i in infos]
    df["error"] = [i.error for i in infos]
    df["label_pair"] = [f"{lab}:{name}" for lab, name in zip(df["label"], df["label_name"])]
    # what training and evaluation will have: a file that doesn't decode (tolerated or not) is left out
    # by crop, so it shares nothing with another split and makes no split or class present. Identical
    # images are those of the same pixels (a photo saved again, with other bytes, is the same photo)
    usable = [i.pixels or None if ok else None for i, ok in zip(infos, df["decodes"])]
    splits_of = defaultdict(set)
    for digest, split in zip(usable, df["split"]):
        if digest:
            splits_of[digest].add(split)
    df["sha256_splits"] = [len(splits_of[d]) if d else 1 for d in usable]
    df["usable_split"] = [s if ok else None for s, ok in zip(df["split"], df["decodes"])]
    df["train_label"] = [lab if s == "train" and ok else None for lab, s, ok in zip(df["label"], df["split"],
                                                                                    df["decodes"])]
    return df


PER_IMAGE = ("decodes",)  # the checks a few images may fail (ValidateParams.max_bad_fraction): crop leaves them out


def _suites(gx, gxe, classes, min_size, paper_sizes, max_bad_fraction=0.0):
    n = len(classes)
    rows = gx.ExpectationSuite(name=ROW_SUITE)
    for col in COLUMNS:
        rows.add_expectation(gxe.ExpectColumnToExist(column=col))
    for col in ("path", "label", "label_name", "split"):
        rows.add_expectation(gxe.ExpectColumnValuesToNotBeNull(column=col))
    rows.add_expectation(gxe.ExpectColumnValuesToBeInSet(column="label", value_set=list(range(n))))
    rows.add_expectation(gxe.ExpectColumnValuesToBeInSet(
        column="label_pair", value_set=[html.escape(f"{i}:{c}") for i, c in enumerate(classes)]))  # as _as_text
    rows.add_expectation(gxe.ExpectColumnValuesToBeInSet(column="split", value_set=list(SPLITS)))
    rows.add_expectation(gxe.ExpectColumnDistinctValuesToContainSet(column="usable_split", value_set=list(SPLITS)))
    rows.add_expectation(gxe.ExpectColumnDistinctValuesToContainSet(column="train_label",
                                                                    value_set=list(range(n))))
    rows.add_expectation(gxe.ExpectColumnUniqueValueCountToBeBetween(column="label", min_value=n,
                                                                     max_value=n))
    rows.add_expectation(gxe.ExpectColumnValuesToBeUnique(column="path"))
    for col in ("path_inside_root", "crop_name_unique", "file_exists"):
        rows.add_expectation(gxe.ExpectColumnValuesToBeInSet(column=col, value_set=[True]))
    mostly = 1.0 - max_bad_fraction
    rows.add_expectation(gxe.ExpectColumnValuesToBeInSet(column="decodes", value_set=[True], mostly=mostly))
    rows.add_expectation(gxe.ExpectColumnValuesToBeBetween(column="min_side", min_value=min_size))
    rows.add_expectation(gxe.ExpectColumnValuesToBeInSet(column="sha256_splits", value_set=[1]))
    sizes = gx.ExpectationSuite(name=SIZE_SUITE)
    if paper_sizes:
        sizes.add_expectation(gxe.ExpectColumnPairValuesToBeEqual(
            column_A="count", column_B="paper", severity="warning"))
    return rows, sizes


WHAT = {  # expectation type (+ column) -> what a person should read
    "expect_column_to_exist": "required column missing",
    "expect_column_values_to_not_be_null": "empty values",
    "expect_column_values_to_be_in_set:label": "unknown labels",
    "expect_column_values_to_be_in_set:label_pair": "label and label_name disagree",
    "expect_column_values_to_be_in_set:split": "unknown split names",
    "expect_column_distinct_values_to_contain_set:usable_split": "a split is empty (of images that decode)",
    "expect_column_distinct_values_to_contain_set:train_label": "a class is missing from train",
    "expect_column_unique_value_count_to_be_between:label": "wrong number of classes",
    "expect_column_values_to_be_unique:path": "duplicate paths",
    "expect_column_values_to_be_in_set:path_inside_root": "paths escaping the root (absolute, '..' or a link out)",
    "expect_column_values_to_be_in_set:crop_name_unique": "rows whose crops would clash (one file name, or one crop's name the other's folder)",
    "expect_column_values_to_be_in_set:file_exists": "missing files",
    "expect_column_values_to_be_in_set:decodes": "files that do not decode as images",
    "expect_column_values_to_be_between:min_side": "images smaller than the minimum size",
    "expect_column_values_to_be_in_set:sha256_splits": "identical images in more than one split (leakage), by their pixels whatever the files' bytes",
    "expect_column_pair_values_to_be_equal": "split sizes differ from the paper's",
}


def _explain(result: dict, df, every: bool = False) -> dict:
    """A failed expectation as the summary reports it: what, how many, and the first five rows
    (``every``: all of them, for the images a tolerance lets through: each is named)."""
    cfg = result["expectation_config"]
    kwargs = cfg.get("kwargs", {})
    col = kwargs.get("column") or kwargs.get("column_A")
    what = WHAT.get(f"{cfg['type']}:{col}") or WHAT.get(cfg["type"], cfg["type"])
    res = result.get("result") or {}
    idx = res.get("unexpected_index_list") or []
    examples = []
    if idx and df is not None and "path" in df:
        examples = [f"{df['path'].iloc[i]}" + (f" ({df['error'].iloc[i]})" if df["error"].iloc[i] else "")
                    for i in (idx if every else idx[:5])]
    elif res.get("partial_unexpected_list"):
        examples = [html.unescape(str(v)) for v in res["partial_unexpected_list"][:5]]  # GX saw them escaped
    elif "observed_value" in res:
        examples = [f"observed {res['observed_value']}"]
    return {"expectation": cfg["type"], "column": col, "what": what,
            "severity": cfg.get("severity", "critical"), "unexpected_count": res.get("unexpected_count"),
            "examples": examples}


def _as_text(frame):
    """``frame`` with its text cells HTML-escaped, for Great Expectations, which writes the values
    a check found into its Data Docs as markup: a manifest path such as ``<img src=x onerror=...>``
    ran as script in the report (the Kubeflow UI shows it). ``html.escape`` keeps distinct texts
    distinct, and the suites' text value sets are escaped alike (:func:`_suites`), so every check
    gives the same answer."""
    import pandas as pd

    out = frame.copy()
    for col in out.columns:
        if out[col].dtype == object or pd.api.types.is_string_dtype(out[col]):
            out[col] = out[col].map(lambda v: html.escape(v) if isinstance(v, str) else v)
    return out


def _run_suites(dataset: str, spec, settings: ValidateParams, df, counts, docs_dir: Path) -> tuple[dict, list[dict]]:
    """Run the GX suites on the manifest's table and the split counts; (results, problems): the
    failed expectations, and the per-image ones that passed with a few images failing them
    (severity ``tolerated``)."""
    import great_expectations as gx
    import great_expectations.expectations as gxe
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx = gx.get_context(mode="ephemeral")
    ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
    ctx.add_data_docs_site(site_name="hsnet", site_config={
        "class_name": "SiteBuilder",
        "site_index_builder": {"class_name": "DefaultSiteIndexBuilder"},
        "store_backend": {"class_name": "TupleFilesystemStoreBackend", "base_directory": str(docs_dir.resolve())}})
    source = ctx.data_sources.add_pandas(f"{dataset}")
    row_suite, size_suite = _suites(gx, gxe, spec.classes, settings.min_size, spec.paper_split_sizes,
                                    settings.max_bad_fraction)
    results, problems = {}, []
    for name, suite, frame in (("manifest", row_suite, df), ("split_sizes", size_suite, counts)):
        shown = _as_text(frame)  # what GX checks is what its pages show: HTML-escaped
        if not len(suite.expectations):
            continue
        batch_def = source.add_dataframe_asset(name).add_batch_definition_whole_dataframe("all")
        suite = ctx.suites.add(suite)
        vd = ctx.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch_def, suite=suite))
        checkpoint = ctx.checkpoints.add(gx.Checkpoint(
            name=f"{name}_checkpoint", validation_definitions=[vd],
            actions=[gx.checkpoint.UpdateDataDocsAction(name="data_docs", site_names=["hsnet"])],
            result_format={"result_format": "COMPLETE", "unexpected_index_column_names": []}))
        run = checkpoint.run(batch_parameters={"dataframe": shown})
        for vr in run.run_results.values():
            vr = vr.to_json_dict()
            results[name] = vr
            problems += [_explain(r, frame if name == "manifest" else None)
                         for r in vr["results"] if not r["success"]]
            problems += [dict(_explain(r, frame, every=True), severity="tolerated") for r in vr["results"]
                         if name == "manifest" and r["success"] and (r.get("result") or {}).get("unexpected_count")
                         and r["expectation_config"]["kwargs"].get("column") in PER_IMAGE]
    return results, problems


def _build_docs(docs_dir: Path, run):
    """``run(folder)`` with Great Expectations writing its Data Docs site into a new folder beside
    ``docs_dir``, which then replaces it: a run that fails half-way (killed, an error) leaves the
    last complete site, never one half of each (GX writes its pages one by one, in place)."""
    import shutil
    import tempfile

    building = temp_dir(f".{docs_dir.name}.", ".tmp", dir=docs_dir.parent)  # others read it as any folder
    try:
        result = run(building)
        if docs_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{docs_dir.name}.", suffix=".tmp", dir=docs_dir.parent))
            os.replace(docs_dir, old / docs_dir.name)
            os.replace(building, docs_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(building, docs_dir)
        return result
    finally:
        shutil.rmtree(building, ignore_errors=True)


def validation_page(report: str | os.PathLike) -> Path | None:
    """The Data Docs page a Kubeflow run shows of the validation written into ``report`` (also
    of one that failed): the page of the critical checks (:data:`ROW_SUITE`, where a failure
    is), the latest of its runs; the split sizes' page only where there is no other; or None."""
    validations = Path(report) / DATA_DOCS / "validations"
    for where in (validations / ROW_SUITE, validations):
        pages = sorted(where.rglob("*.html"), key=lambda p: (p.stat().st_mtime_ns, str(p)))
        if pages:
            return pages[-1]
    return None


def validate(manifest: str | os.PathLike, root: str | os.PathLike, dataset: str,
             report: str | os.PathLike, settings: ValidateParams = ValidateParams(), *,
             workers: int | None = None, use_cache: bool = True, progress: bool = True) -> dict:
    """Validate ``manifest`` (rows under ``root``) for ``dataset``; write the report; return the summary.

    Raises :class:`ValidationFailed` (after writing the report) when a critical expectation fails.
    """
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    import pandas as pd

    spec = get_spec(dataset)
    root, report = Path(root), Path(report)
    if not root.is_dir():
        raise HSNetError(f"data root {root} is not a directory")
    rows = read_manifest(manifest, required=[])
    check_writable(report, "--report")
    clean_stale_tmp(report)
    remove_stale_temporaries(report, f".{DATA_DOCS}.*.tmp")  # a Data Docs site a killed run was building
    if not rows:
        raise ValidationFailed(f"manifest {manifest} has no rows")
    for row in rows:  # a missing core column is reported by the suite, not by a KeyError here
        for col in COLUMNS:
            row.setdefault(col, None)
    cache = _image_info_cache() if use_cache else None
    df = build_table(rows, root, workers, cache, progress)
    present_cols = set(manifest_columns(manifest))
    for col in COLUMNS:
        if col not in present_cols:
            df = df.drop(columns=[col])

    counts = pd.DataFrame()
    if spec.paper_split_sizes:
        split_counts = df["split"].value_counts().to_dict() if "split" in df else {}
        observed = {s: int(split_counts.get(s, 0)) for s in SPLITS}
        observed["train+val"] = observed["train"] + observed["val"]
        counts = pd.DataFrame([{"split": k, "count": observed[k], "paper": v}
                               for k, v in spec.paper_split_sizes.items()])

    docs_dir = report / DATA_DOCS
    results, problems = _build_docs(docs_dir, lambda building: _run_suites(dataset, spec, settings, df, counts,
                                                                           building))

    critical = [p for p in problems if p["severity"] == "critical"]
    warnings = [p for p in problems if p["severity"] != "critical"]
    for p in warnings:
        if p["severity"] == "tolerated":
            p["what"] += (f" ({p['unexpected_count']} of {len(df)}, within validate.max_bad_fraction "
                          f"{settings.max_bad_fraction:g}: crop lists each and leaves it out)")
    summary = {
        "dataset": dataset, "manifest": str(manifest), "root": str(root), "images": len(df),
        "success": not critical, "failed": critical, "warnings": warnings,
        "splits": {s: int((df["split"] == s).sum()) for s in SPLITS} if "split" in df else {},
        # what goes on to crop: the rows whose image decodes (the others are tolerated and left out)
        "usable": {s: int(((df["split"] == s) & df["decodes"]).sum()) for s in SPLITS} if "split" in df else {},
        "left_out": int((~df["decodes"]).sum()),
        "data_docs": str(docs_dir / "index.html"),
    }
    write_json(report / RESULTS, results)
    write_json(report / SUMMARY, summary)
    for w in warnings:
        log.warning("%s: %s", w["what"], "; ".join(w["examples"]))
    if critical:
        lines = [f"- {p['what']}" + (f" ({p['unexpected_count']} rows)" if p["unexpected_count"] else "")
                 + (f", more than validate.max_bad_fraction {settings.max_bad_fraction:g} of the {len(df)} images"
                    if p["column"] in PER_IMAGE else "")
                 + (f": {', '.join(p['examples'])}" if p["examples"] else "") for p in critical]
        raise ValidationFailed(f"{manifest} failed {len(critical)} expectation(s):\n" + "\n".join(lines)
                               + f"\nFull report: {report / SUMMARY}, {summary['data_docs']}")
    return summary

