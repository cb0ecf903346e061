"""Bring a raw dataset to a local folder: from an S3 prefix, a DVC repository, or a local folder.

* ``s3://bucket/prefix``: every object under the prefix, with boto3 (:mod:`hsnet.s3`);
* a DVC repository (git URL or path) plus ``dvc_path`` and optional ``rev``: ``dvc get``,
  which reads the data from the repository's DVC remote at that revision;
* a local folder: copied.

The Kubeflow pipeline's first step; on a workstation ``dvc pull`` does this.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from ..errors import HSNetError


def fetch(source: str, out: str | os.PathLike, *, dvc_path: str | None = None, rev: str | None = None,
          progress: bool = True) -> dict:
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise HSNetError(f"--out {out} exists and is not empty; give an empty or new folder")
    if dvc_path:
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            out.rmdir()
        cmd = [sys.executable, "-m", "dvc", "get", source, dvc_path, "-o", str(out)] + (["--rev", rev] if rev else [])
        env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
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
        shutil.copytree(source, out, dirs_exist_ok=True)
        how = f"copy of {source}"
    else:
        raise HSNetError(f"--source {source!r}: not an s3:// prefix, not a folder here, and no --dvc-path "
                         "was given for a DVC repository")
    files = sum(1 for p in out.rglob("*") if p.is_file())
    if not files:
        raise HSNetError(f"{how}: no files arrived in {out}")
    return {"source": how, "out": str(out), "files": files}
