"""A temporary git + DVC repository holding the project's dvc.yaml, hsnet/ (the stages' code
dependencies), params.yaml with tiny sample settings, and data.dvc over a small sample."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml
from mlflow_store import seed_store

ROOT = Path(__file__).resolve().parents[1]


def make_repo(path: Path, sample_settings: dict, *, per_class: int = 3, extra_env: dict | None = None):
    from hsnet.data.sample import generate

    shutil.copy(ROOT / "dvc.yaml", path / "dvc.yaml")
    shutil.copytree(ROOT / "hsnet", path / "hsnet", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert params["datasets_to_run"] == ["sample"]
    # a section left out is the paper's defaults ({}): dvc needs every section its stages list
    params["datasets"]["sample"] = {**{k: {} for k, v in params["datasets"]["sample"].items() if isinstance(v, dict)},
                                    **sample_settings}
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (path / ".gitignore").write_text("/mlflow/\n__pycache__/\n")
    env = {**os.environ, **(extra_env or {}), "DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "false",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "MLFLOW_TRACKING_URI": f"sqlite:///{path / 'mlflow' / 'mlflow.db'}",
           "HSNET_CACHE_DIR": str(path.parent / "cache"), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e"}

    def sh(*cmd, check=True):
        proc = subprocess.run(cmd, cwd=path, env=env, capture_output=True, text=True)
        if check and proc.returncode:
            raise AssertionError(f"{' '.join(map(str, cmd))} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                                 f"{proc.stderr[-3000:]}")
        return proc

    seed_store(path / "mlflow" / "mlflow.db")  # an empty store, migrated once per test process
    sh("git", "init", "-q", "-b", "main")
    sh("dvc", "init", "-q")
    generate(path / "data" / "raw" / "sample", per_class=per_class, size=96, seed=11)
    sh("dvc", "add", "-q", "data/raw")  # as the project's data.dvc was made
    text = (path / "data" / "raw.dvc").read_text().replace("path: raw", "path: data/raw")
    (path / "data.dvc").write_text(text)
    (path / "data" / "raw.dvc").unlink()
    sh("git", "add", "-A")
    sh("git", "commit", "-qm", "data")
    return env, sh
