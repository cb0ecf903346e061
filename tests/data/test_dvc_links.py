"""Raw data that real DVC checked out as symbolic links into its cache (``cache.type symlink``,
the usual choice for large datasets, with the cache elsewhere by ``cache.dir``): the data steps
read it as the project's own data, and still refuse a link anywhere else."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from hsnet.data.crop import crop
from hsnet.data.datasets import import_dataset
from hsnet.data.manifest import read_manifest
from hsnet.data.sample import generate
from hsnet.data.validate import ValidationFailed, validate
from hsnet.io import dvc_cache_of
from hsnet.params import CropParams

import pytest


def _sh(cwd: Path, *cmd: str) -> None:
    env = {**os.environ, "DVC_NO_ANALYTICS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, f"{' '.join(cmd)}: {done.stdout[-2000:]}{done.stderr[-2000:]}"


def test_a_symlink_checkout_into_a_cache_elsewhere_is_read_and_other_links_are_not(tmp_path, monkeypatch):
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "hsnet-cache"))
    project = tmp_path / "project"
    project.mkdir()
    _sh(project, "git", "init", "-q")
    _sh(project, "dvc", "init", "-q")
    _sh(project, "dvc", "config", "cache.type", "symlink")
    _sh(project, "dvc", "config", "--local", "cache.dir", "../shared-cache")  # DVC writes it relative to .dvc
    raw = project / "data" / "raw" / "sample"
    generate(raw, per_class=3, size=48, seed=3)
    _sh(project, "dvc", "add", "-q", "data/raw/sample")
    files = [p for p in raw.rglob("*.png")]
    assert files and all(p.is_symlink() for p in files), "dvc did not check the data out as links"
    shared = os.path.realpath(tmp_path / "shared-cache")
    assert os.path.realpath(files[0]).startswith(shared + os.sep)  # the links lead out of the project
    assert dvc_cache_of(raw) == (shared,)

    manifest = tmp_path / "m.csv"
    assert import_dataset("sample", raw, manifest)["images"] == len(files)
    summary = validate(manifest, raw, "sample", tmp_path / "report", progress=False)
    assert summary["success"]
    report = crop(manifest, raw, tmp_path / "crops", settings=CropParams(detector="none", size=32), progress=False)
    assert report["processed"] == len(files) and not report["refused"] and not report["unreadable"]

    # a link that leads anywhere but the cache is still refused, by name
    outside = tmp_path / "elsewhere.png"
    outside.write_bytes(files[0].read_bytes())  # a good image: only where it is differs
    victim = read_manifest(manifest)[0]["path"]
    (raw / victim).unlink()
    (raw / victim).symlink_to(outside)
    with pytest.raises(ValidationFailed, match=r"paths escaping the root.*" + victim.replace(".", r"\.")):
        validate(manifest, raw, "sample", tmp_path / "report2", progress=False)


def test_dvc_cache_of_reads_the_local_config_over_the_project_one(tmp_path):
    """DVC's order: .dvc/config.local over .dvc/config, relative to .dvc; none: .dvc/cache;
    outside a DVC project: nothing is followed."""
    (tmp_path / "p" / ".dvc").mkdir(parents=True)
    (tmp_path / "p" / "data").mkdir()
    assert dvc_cache_of(tmp_path / "p" / "data") == (os.path.realpath(tmp_path / "p" / ".dvc" / "cache"),)
    (tmp_path / "p" / ".dvc" / "config").write_text("[core]\n    remote = s\n['remote \"s\"']\n    url = s3://b/x\n"
                                                    "[cache]\n    dir = /mnt/dvc-cache\n")
    assert dvc_cache_of(tmp_path / "p" / "data") == ("/mnt/dvc-cache",)
    (tmp_path / "p" / ".dvc" / "config.local").write_text("[cache]\n    dir = ../../c\n")
    assert dvc_cache_of(tmp_path / "p" / "data") == (os.path.realpath(tmp_path / "c"),)
    (tmp_path / "q").mkdir()
    assert dvc_cache_of(tmp_path / "q") == ()
    # a hostile archive's own .dvc (cache.dir = /, so that every link would be followed) is not the
    # project's: only a .dvc above the data counts, and a cache holding the data is none
    (tmp_path / "q" / ".dvc").mkdir()
    (tmp_path / "q" / ".dvc" / "config").write_text("[cache]\n    dir = /\n")
    assert dvc_cache_of(tmp_path / "q") == ()
    (tmp_path / "p" / ".dvc" / "config.local").write_text("[cache]\n    dir = /\n")
    assert dvc_cache_of(tmp_path / "p" / "data") == ()
