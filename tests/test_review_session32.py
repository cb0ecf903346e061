"""Session 32's review: defects found by reading the code and the CI rehearsal again."""
from __future__ import annotations

import os
import sys
from pathlib import Path
from urllib.parse import unquote, urlparse

import pytest

from hsnet import model_copies


def test_no_bytecode_puts_the_users_setting_back_when_the_last_of_overlapping_bodies_ends(monkeypatch):
    """Two model loads overlap (serve's threads): the first to end must not turn bytecode writing
    (or reading, for a copy that holds some) back on under the second, and the last to end puts
    back what the user had (False, None here)."""
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    monkeypatch.setattr(sys, "pycache_prefix", None)
    first, second = model_copies.no_bytecode(ignore_found=True), model_copies.no_bytecode()
    first.__enter__()
    assert sys.dont_write_bytecode is True
    empty = Path(sys.pycache_prefix)
    assert empty.is_dir() and not any(empty.iterdir())  # bytecode looked for where there is none
    second.__enter__()
    first.__exit__(None, None, None)  # the first ends while the second still loads
    assert sys.dont_write_bytecode is True and sys.pycache_prefix is None and not empty.exists()
    second.__exit__(None, None, None)
    assert sys.dont_write_bytecode is False and sys.pycache_prefix is None
    with model_copies.no_bytecode():  # a copy without bytecode: found bytecode (the installed packages') is read
        assert sys.dont_write_bytecode is True and sys.pycache_prefix is None
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # PYTHONDONTWRITEBYTECODE=1: kept
    with model_copies.no_bytecode(ignore_found=True):
        pass
    assert sys.dont_write_bytecode is True and sys.pycache_prefix is None


@pytest.mark.slow
def test_a_version_loaded_in_place_by_a_notebook_stays_usable_and_its_bytecode_is_never_run(
        trained, tmp_path, monkeypatch):
    """README's local store (sqlite + a folder of artifacts): ``mlflow.pyfunc.load_model("models:/...")``
    in a notebook, or ``mlflow models serve``, loads the version's own folder in place, and Python
    (PYTHONDONTWRITEBYTECODE unset, as on most boxes) writes ``__pycache__`` there. Seen in session
    32's CI rehearsal without PYTHONDONTWRITEBYTECODE: hsnet then refused the version for good as
    "changed after registration ... check who can write to the tracking server", though only
    Python's own cache had been added. A bytecode file is never registered (model_copies.no_bytecode),
    so it is no part of the check; but hsnet must not run one it didn't check: one planted in the
    store that Python would take for mlflow_model.py's (its header matches the source) is not run."""
    import importlib.util
    from importlib._bootstrap_external import _code_to_timestamp_pyc

    import mlflow

    from hsnet.evaluate import evaluate
    from hsnet.predict import load_classifier
    from hsnet.registry import check_model_files, promote, register

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # the artifacts go beside the store
    evaluate(trained["checkpoint"], trained["data"], tmp_path / "eval", progress=False)
    name = "hsnet-inplace"
    assert register(trained["checkpoint"], tmp_path / "eval" / "metrics.json", "sample", name=name)["version"] == 1
    client = mlflow.MlflowClient()
    model_id = client.get_model_version(name, "1").source.removeprefix("models:/")
    folder = Path(unquote(urlparse(client.get_logged_model(model_id).artifact_location).path))
    assert not list(folder.rglob("*.pyc"))  # registered without bytecode

    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    mlflow.pyfunc.load_model(f"models:/{name}/1")  # a notebook's load: in place
    written = list(folder.rglob("__pycache__/*.pyc"))
    assert written, "the scenario: Python wrote its bytecode into the store's folder"
    assert check_model_files(client, name, 1)  # what hsnet promote checks: not "changed"
    promote(name)

    source = folder / "mlflow_model.py"  # the model-from-code file MLflow imports first
    marker = tmp_path / "planted-code-ran"
    planted = compile(f"open({str(marker)!r}, 'w').close()\n" + source.read_text(), str(source), "exec")
    st = source.stat()
    Path(importlib.util.cache_from_source(str(source))).write_bytes(
        _code_to_timestamp_pyc(planted, int(st.st_mtime), st.st_size))  # what Python would load for it
    clf = load_classifier(f"models:/{name}@production", device="cpu")
    assert clf.classes and not marker.exists(), "hsnet loaded bytecode it never checked"
    cached = [p for p in (tmp_path / "cache" / "models").glob("*/*") if not p.name.startswith(".")]
    assert len(cached) == 1 and (cached[0] / "__pycache__" / Path(importlib.util.cache_from_source(
        str(source))).name).is_file()  # the planted file came with the copy, and was not run


def test_usable_cores_counts_a_containers_cpu_limit(tmp_path):
    """A pod with ``limits.cpu: 1.5`` on a big node runs on every core but gets 1.5 cores' time
    (cgroup v2 ``cpu.max`` "150000 100000"): hsnet's thread pools size to 2, not the node's cores;
    no limit ("max") leaves the cores it may run on (its affinity: tested in attack 32a)."""
    from hsnet.io import usable_cores

    mine = len(os.sched_getaffinity(0))
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "mountinfo").write_text(f"30 25 0:27 / {tmp_path} ro - cgroup2 cgroup rw\n")
    (proc / "cgroup").write_text("0::/\n")  # a container's own cgroup namespace: its limit at the root
    cpu_max = tmp_path / "cpu.max"
    for text, by_hand in (("150000 100000\n", 2), ("50000 100000\n", 1), ("100000 100000\n", 1),
                          ("max 100000\n", mine), ("6400000 100000\n", mine)):
        cpu_max.write_text(text)
        assert usable_cores(proc) == min(by_hand, mine), text
    assert usable_cores(tmp_path / "none") == mine  # no cgroups here
    cpu_max.write_text("garbage")
    assert usable_cores(proc) == mine


def test_the_commit_of_a_checkout_is_read_from_its_files_as_git_reads_it(tmp_path):
    """tracking._head_commit (git_commit's answer where git refuses another user's checkout): the
    commit ``git rev-parse HEAD`` gives, with the branch's ref loose, packed, detached, and in a
    worktree (``.git`` a file naming its folder); nothing for a folder outside any checkout."""
    import subprocess

    from hsnet.tracking import _head_commit

    def git(*args, cwd=tmp_path / "repo"):
        return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()

    repo = tmp_path / "repo"
    (repo / "pkg").mkdir(parents=True)
    git("init", "-q", "-b", "main")
    (repo / "pkg" / "a.py").write_text("x = 1\n")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    first = git("rev-parse", "HEAD")
    assert _head_commit(repo / "pkg") == first  # refs/heads/main, loose
    (repo / "pkg" / "a.py").write_text("x = 2\n")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam", "two")
    git("pack-refs", "--all")
    assert not (repo / ".git" / "refs" / "heads" / "main").exists()
    assert _head_commit(repo / "pkg") == git("rev-parse", "HEAD") != first  # packed-refs
    git("worktree", "add", "-q", str(tmp_path / "wt"), first)
    assert _head_commit(tmp_path / "wt" / "pkg") == first  # a worktree, detached at the first commit
    git("checkout", "-q", "--detach", first)
    assert _head_commit(repo / "pkg") == first
    (tmp_path / "plain").mkdir()
    assert _head_commit(tmp_path / "plain") is None  # no checkout above (pytest's folders are in /tmp)
