"""Bring a raw dataset to a local folder: from an S3 prefix, a DVC repository, or a local folder.

* ``s3://bucket/prefix``: every object under the prefix, with boto3 (:mod:`hsnet.s3`);
* a DVC repository (git URL or path) plus ``dvc_path`` and optional ``rev``: ``dvc get``,
  which reads the data from the repository's DVC remote at that revision;
* a local folder: copied.

The Kubeflow pipeline's first step; on a workstation ``dvc pull`` does this.

:func:`source_version` names what is at a source now without downloading it (a content version):
the pipeline's caching keys on it, so new data at the same URI is fetched and processed again and
unchanged data is not.
"""

from __future__ import annotations

import functools
import getpass
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from ..errors import HSNetError
from ..io import check_writable, open_regular, safe_join
from ..tracking import mask_text


SOURCE_OPTIONS = ("--source", "--dvc-path", "--rev")  # the names check_source's messages use (the CLI's)


def check_source(source: str, dvc_path: str | None = None, rev: str | None = None, *,
                 names: tuple[str, str, str] = SOURCE_OPTIONS, folders: bool = True) -> None:
    """Refuse what :func:`fetch` and :func:`source_version` can't take as meant: an empty source
    (``Path("")`` is the current folder: whatever the process runs in would be copied), and a
    revision without a DVC path (only a DVC repository has revisions: it would be ignored, the data
    taken as it is now). ``names``: the source, path and revision as the caller's user typed them;
    ``folders``: whether a folder of the caller's is a source it can read (not in a pipeline's pod)."""
    source_name, path_name, rev_name = names
    if not str(source or "").strip():
        raise HSNetError(f"{source_name} is empty: give an s3:// prefix{', a folder,' if folders else ''} or a DVC "
                         f"repository URL with {path_name}")
    if str(rev or "").strip() and not str(dvc_path or "").strip():
        raise HSNetError(f"{rev_name} {rev!r} without {path_name}: a revision is read only from a DVC repository; "
                         f"give {path_name} (the data's path in the repository), or leave {rev_name} empty")


def _masked(step):
    """``step``'s errors and result with the source's credentials masked (a private repository is
    often given as https://oauth2:TOKEN@host/...; dvc's and git's output may repeat it)."""
    @functools.wraps(step)
    def masked(*args, **kwargs):
        try:
            result = step(*args, **kwargs)
        except HSNetError as exc:
            exc.args = (mask_text(str(exc)),)
            raise
        return {**result, "source": mask_text(result["source"])} if isinstance(result, dict) else result
    return masked


@_masked
def fetch(source: str, out: str | os.PathLike, *, dvc_path: str | None = None, rev: str | None = None,
          progress: bool = True, expect_version: str | None = None) -> dict:
    """Copy the raw dataset at ``source`` into the empty or new folder ``out``. ``expect_version``
    (what :func:`source_version` said before: a pipeline's cache key): the data must still have it
    once fetched, else ``out`` is left empty and the error says the source changed meanwhile."""
    check_source(source, dvc_path, rev)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise HSNetError(f"--out {out} exists and is not empty; give an empty or new folder")
    existed = out.is_dir()
    check_writable(out, "--out")
    try:
        if not dvc_path and not source.startswith("s3://") and Path(source).is_dir():
            here, there = os.path.realpath(source), os.path.realpath(out)
            if there == here or there.startswith(here.rstrip(os.sep) + os.sep):  # a copy into itself
                raise HSNetError(f"--out {out} is inside --source {source}: the copy would copy itself; "
                                 "give an output folder outside the source")
        how = _fetch(source, out, dvc_path=dvc_path, rev=rev, progress=progress)
        _check_tree(out, how)
        if expect_version is not None:
            now = source_version(source, dvc_path=dvc_path, rev=rev)
            if now != expect_version:
                raise HSNetError(f"the data at {source} changed while it was being fetched ({expect_version} -> "
                                 f"{now}); fetch again once the upload is complete")
    except BaseException:  # out was empty or new: leave it so, nothing half-fetched behind
        _empty(out, keep=existed)
        raise
    files = sum(1 for p in out.rglob("*") if p.is_file())
    if not files:
        raise HSNetError(f"{how}: no files arrived in {out}")
    return {"source": how, "out": str(out), "files": files}


@_masked
def source_version(source: str, *, dvc_path: str | None = None, rev: str | None = None) -> str:
    """A content version of what :func:`fetch` would bring from ``source`` now, read without
    downloading the data: equal for the same content, different when any file changed.

    * S3 prefix: sha256 over the sorted (key below the prefix, ETag, size) of every object (one
      listing request per 1,000 objects);
    * DVC repository: sha256 over the sorted (path, md5) that ``dvc ls -R --show-hash`` reports for
      ``dvc_path`` at ``rev`` (the hashes in the repository's .dvc files, not the data);
    * local folder: sha256 over the sorted (relative path, sha256 of the content) of every file.
    """
    check_source(source, dvc_path, rev)
    h = hashlib.sha256()
    if dvc_path:
        safe_join(source, dvc_path, what="--dvc-path", links=False)
        cmd = [sys.executable, "-m", "dvc", "ls", "-R", "--show-hash", "--json", source, dvc_path] + \
            (["--rev", rev] if rev else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dvc_env())
        if proc.returncode != 0:
            raise HSNetError(f"dvc ls {source} {dvc_path}{' --rev ' + rev if rev else ''} failed: "
                             f"{(proc.stderr or proc.stdout).strip()[-1500:]}. Check the repository URL, the path, "
                             "the revision and the DVC remote's credentials")
        entries = sorted((e["path"], e.get("md5") or "") for e in json.loads(proc.stdout) if not e.get("isdir"))
        if not entries:
            raise HSNetError(f"dvc ls {source} {dvc_path}: no files at this path")
        kind, items = "dvc", entries
    elif source.startswith("s3://"):
        from ..s3 import list_objects, split_uri

        _, prefix = split_uri(source)
        prefix = prefix + "/" if prefix and not prefix.endswith("/") else prefix
        items = [(o["Key"][len(prefix):], o["ETag"], str(o["Size"])) for o in list_objects(source)]
        if not items:
            raise HSNetError(f"{source}: no objects under this prefix; upload the raw dataset there first")
        kind = "s3"
    elif Path(source).is_dir():
        from ..io import sha256_file

        items = [(rel, sha256_file(path)) for rel, path in folder_files(Path(source))]
        kind = "folder"
    else:
        raise HSNetError(f"--source {source!r}: not an s3:// prefix, not a folder here, and no --dvc-path "
                         "was given for a DVC repository")
    for item in items:
        h.update("\t".join(item).encode() + b"\n")
    return f"{kind}:{h.hexdigest()}"


def dvc_env() -> dict:
    """The environment of a ``dvc`` subprocess as a pod runs it: no analytics; a user name where the
    uid has none (a cluster's arbitrary uid without a passwd entry: DVC keys its site cache on
    ``getpass.getuser()``, which fails there); DVC's site cache (its clones of the repositories
    read) under the temporary folder, this uid's own, unless set (a read-only root filesystem has
    no writable /var/tmp/dvc)."""
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    try:
        getpass.getuser()
    except (KeyError, OSError):
        env["USER"] = f"uid{os.getuid()}"
    env.setdefault("DVC_SITE_CACHE_DIR", os.path.join(tempfile.gettempdir(), f"dvc-site-cache-{os.getuid()}"))
    return env


def _fetch(source: str, out: Path, *, dvc_path: str | None, rev: str | None, progress: bool) -> str:
    if dvc_path:
        safe_join(source, dvc_path, what="--dvc-path", links=False)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            out.rmdir()
        cmd = [sys.executable, "-m", "dvc", "get", source, dvc_path, "-o", str(out)] + (["--rev", rev] if rev else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, env=dvc_env())
        if proc.returncode != 0:
            raise HSNetError(f"dvc get {source} {dvc_path}{' --rev ' + rev if rev else ''} failed: "
                             f"{(proc.stderr or proc.stdout).strip()[-1500:]}. Check the repository URL, the path, "
                             "the revision and the DVC remote's credentials")
        how = f"dvc get {source} {dvc_path}" + (f" @ {rev}" if rev else "")
    elif source.startswith("s3://"):
        from ..s3 import download_prefix

        download_prefix(source, out, progress=progress)
        how = f"s3 {source}"
    elif Path(source).is_dir():
        failed = []
        for rel, path in folder_files(Path(source)):  # what source_version hashed, no more
            target = out / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                _copy_regular(path, target)
            except (OSError, HSNetError) as exc:
                failed.append(f"{path}: {exc}")
        if failed:
            raise HSNetError(f"copy of {source}: {len(failed)} file(s) not copied: {'; '.join(failed[:5])}")
        how = f"copy of {source}"
    else:
        raise HSNetError(f"--source {source!r}: not an s3:// prefix, not a folder here, and no --dvc-path "
                         "was given for a DVC repository")
    return how


def folder_files(root: Path) -> list[tuple[str, Path]]:
    """The files of the folder ``root`` as fetch copies them and :func:`source_version` hashes them:
    (relative name, path to read), sorted. A link to a file is followed when it stays in ``root``
    or leads to a file's entry in its DVC project's cache (a ``cache.type symlink`` checkout:
    :func:`hsnet.io.in_dvc_cache`); any other link, every link to a folder, and a folder that can't
    be listed are refused by name: a copy must not bring in what lies outside the
    source (in a pod, its service account's token) or what a version didn't hash."""
    from ..io import dvc_cache_of, in_dvc_cache

    base, caches = root.resolve(), dvc_cache_of(root)
    files, bad = [], []

    def unreadable(exc: OSError) -> None:  # os.walk skips a folder it can't list unless told: a copy would lack it
        bad.append(f"{exc.filename} can't be listed ({exc.strerror or exc})")

    for folder, dirs, names in os.walk(root, onerror=unreadable):  # links to folders are not entered: refused
        for name in sorted(dirs + names):
            path = Path(folder) / name
            rel = path.relative_to(root).as_posix()
            if path.is_symlink():
                target = path.resolve()
                if target.is_dir():
                    bad.append(f"{rel} is a link to the folder {target}")
                    continue
                if not (target.is_relative_to(base) or in_dvc_cache(target, caches)):
                    bad.append(f"{rel} is a link to {target}, outside {root}")
                    continue
            if name in names:
                files.append((rel, path))
    if bad:
        raise HSNetError(f"--source {root}: refusing to copy it ({'; '.join(bad[:5])}"
                         f"{f'; ... {len(bad) - 5} more' if len(bad) > 5 else ''}); copy the files themselves there")
    return sorted(files)


def _empty(out: Path, keep: bool) -> None:
    """Remove what a failed fetch left in ``out``; the folder itself too unless ``keep``."""
    if not keep:
        shutil.rmtree(out, ignore_errors=True)
        return
    out.mkdir(parents=True, exist_ok=True)
    for child in out.iterdir():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def _copy_regular(src: str, dst: str) -> None:
    """shutil.copy2 for regular files only: a FIFO would hang the copy, /dev/zero never end."""
    with open_regular(src):
        pass
    shutil.copy2(src, dst)


def _check_tree(out: Path, how: str) -> None:
    """Everything that arrived is a regular file or a folder inside ``out``: no symbolic link leading
    out of it (which a later step would follow), no FIFO or device."""
    bad = []
    base = out.resolve()
    for folder, dirs, files in os.walk(out):
        for name in dirs + files:
            p = Path(folder) / name
            if p.is_symlink():
                target = p.resolve()
                if not target.is_relative_to(base):
                    bad.append(f"{p} is a link to {target}, outside {out}")
            elif not (p.is_dir() or p.is_file()):
                bad.append(f"{p} is not a regular file")
    if bad:
        raise HSNetError(f"{how}: refusing what arrived ({'; '.join(bad[:5])}"
                         f"{f'; ... {len(bad) - 5} more' if len(bad) > 5 else ''}); {out} was removed")
