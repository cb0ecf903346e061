"""Attack 32c on today's changes (4b3bce1..4aa7315): io.temp_dir, model_copies.no_bytecode, the
bytecode left out of registry's model-file check, and tracking.git_commit's reading of another
user's checkout. Each test fails for the reason its docstring gives."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path
from types import SimpleNamespace

import pytest

NOBODY = 65534


# --- 1. io.temp_dir in a shared (setgid) cache folder ---------------------------------------------

def test_temp_dir_keeps_the_setgid_group_an_ordinary_mkdir_keeps(tmp_path):
    """io.temp_dir (32a; the model cache's download folder, renamed into the copy, and the Data
    Docs build folder) promises "the mode an ordinary ``mkdir`` gives ... not mkdtemp's 0700: ...
    read by others too (a teammate sharing a cache ...)". A team's shared cache is the usual
    setgid folder (``chgrp ml; chmod 2775``): a folder made in it inherits the group and the setgid
    bit, so that everything written below it stays the team's group. temp_dir's
    ``chmod(0o777 & ~umask)`` clears the setgid bit mkdir gave it: what MLflow then downloads
    into the copy gets the downloader's own group, and with a team umask of 007 or 027 a teammate
    can enter the copy but not read its files (a PermissionError in the digest check, which
    ``hsnet predict`` reports as "can't load it from MLflow ... Check the name and alias")."""
    from hsnet.io import temp_dir

    shared = tmp_path / "shared"
    shared.mkdir()
    team_gid = None
    if os.geteuid() == 0:  # root can hand the folder to a group of its own: the team's
        team_gid = 4242
        os.chown(shared, -1, team_gid)
    shared.chmod(0o2775)
    if not shared.stat().st_mode & stat.S_ISGID:
        pytest.skip("this filesystem keeps no setgid bit on folders")
    plain = shared / "plain"
    plain.mkdir()  # what mkdir (and MLflow's os.makedirs) gives there
    made = temp_dir(".download-", dir=shared)
    (plain / "MLmodel").write_text("x")
    (made / "MLmodel").write_text("x")  # what the download writes into the copy
    assert oct(stat.S_IMODE(made.stat().st_mode)) == oct(stat.S_IMODE(plain.stat().st_mode)), \
        "temp_dir cleared the setgid bit an ordinary mkdir in the shared folder keeps"
    if team_gid is not None:
        assert (made / "MLmodel").stat().st_gid == (plain / "MLmodel").stat().st_gid == team_gid, \
            "a file downloaded into temp_dir's folder lost the shared folder's group"


# --- 2. model_copies.no_bytecode that can't start ------------------------------------------------------

def test_no_bytecode_that_cant_start_leaves_pythons_settings_as_they_were(tmp_path, monkeypatch):
    """model_copies.no_bytecode: Python's settings "are put back when the last such body ends". With
    ``ignore_found`` (every hsnet load of a copy that holds bytecode: all versions older hsnet
    registered, and the local store's versions loaded in place) it makes its empty folder with
    tempfile.mkdtemp after it has counted the body and turned bytecode writing off, and before its
    ``try``. Where no temporary folder is usable (a read-only root filesystem without a /tmp volume,
    TMPDIR naming a folder since removed) the load fails, and the count is never taken back:
    ``sys.dont_write_bytecode`` stays True for the rest of the process (a notebook, ``hsnet serve``),
    and no later body puts it back, as the count never returns to zero."""
    import tempfile

    from hsnet import model_copies

    monkeypatch.setattr(model_copies, "_bytecode", dict(model_copies._bytecode))  # this test's count only
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    monkeypatch.setattr(sys, "pycache_prefix", None)
    with monkeypatch.context() as no_tmp:
        no_tmp.setattr(tempfile, "tempdir", str(tmp_path / "removed"))  # no usable temporary folder
        try:
            with model_copies.no_bytecode(ignore_found=True):
                pass
        except OSError:
            pass  # refused: fine, where nothing is left changed
        assert (sys.dont_write_bytecode, sys.pycache_prefix) == (False, None), \
            "a no_bytecode that failed to start left Python's settings changed"
    with model_copies.no_bytecode():  # the next load, a temporary folder usable again
        pass
    assert sys.dont_write_bytecode is False, "bytecode writing stays off for good after one failed start"


# --- 3. bytecode passes the gate; MLflow's own loaders run it ---------------------------------------

def test_a_version_that_passes_hsnets_check_makes_mlflows_loader_run_no_unchecked_bytecode(tmp_path, monkeypatch):
    """docs/security.md: "hsnet promote downloads the candidate and refuses it if the digest differs"
    because "replacing a version's files in the artifact store would otherwise run someone's code";
    README serves the production version with ``mlflow models serve -m models:/NAME@production`` and
    loads it with ``mlflow.pyfunc.load_model`` in a notebook. Since 6f01244/b9c086f the check leaves
    every ``__pycache__`` out, and 4aa7315 says of a planted .pyc that those loaders "may run it, as
    they would run any file changed after the check". It is not that: a .pyc put into the version
    in the artifact store *before* promotion passes promote's own check (a file changed after the
    check needs a race; this needs none), and a hash-based .pyc (PEP 552, its header the source's
    hash, not its mtime) survives every download, so any MLflow loader, on any store, runs it
    instead of the checked source. Here: a models-from-code model as the store holds it, its digest
    recorded as registration records it, a checked hash-based .pyc of its code file added; the
    download passes check_model_files (what promote, rollback and hsnet serve call), and MLflow's
    loader runs the planted code. Either the check refuses such bytecode (Python writes only
    timestamp .pyc files on import, which no download can reuse), or nothing loads it."""
    import importlib.util
    from importlib._bootstrap_external import _code_to_hash_pyc

    import mlflow

    from hsnet.registry import MODEL_FILES_PARAM, ModelChanged, check_model_files, model_files_digest

    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    monkeypatch.setattr(sys, "pycache_prefix", None)
    code = tmp_path / "src" / "tiny_model.py"
    code.parent.mkdir()
    code.write_text("import mlflow\n\n\nclass Echo(mlflow.pyfunc.PythonModel):\n"
                    "    def predict(self, context, model_input, params=None):\n        return model_input\n\n\n"
                    "mlflow.models.set_model(Echo())\n")
    store = tmp_path / "store" / "model"  # the version's files in the artifact store
    mlflow.pyfunc.save_model(str(store), python_model=str(code), pip_requirements=[])
    recorded = model_files_digest(store)  # registration's record of them
    source = store / code.name
    assert source.is_file() and not list(store.rglob("*.pyc"))

    marker = tmp_path / "planted-bytecode-ran"
    planted = compile(f"open({str(marker)!r}, 'w').close()\n" + source.read_text(), str(source), "exec")
    pyc = Path(importlib.util.cache_from_source(str(source)))
    pyc.parent.mkdir(exist_ok=True)
    pyc.write_bytes(_code_to_hash_pyc(planted, importlib.util.source_hash(source.read_bytes()), checked=True))

    download = tmp_path / "download"  # promote's download, a notebook's, mlflow models serve's: new files
    shutil.copytree(store, download, copy_function=shutil.copyfile)
    client = SimpleNamespace(
        get_model_version=lambda name, version: SimpleNamespace(name=name, version=version, run_id="run"),
        get_run=lambda run_id: SimpleNamespace(data=SimpleNamespace(params={MODEL_FILES_PARAM: recorded})))
    try:
        check_model_files(client, "hsnet-sample", 1, download)
    except ModelChanged:
        return  # refused at the gate: production never names it
    mlflow.pyfunc.load_model(str(download))
    assert not marker.exists(), (
        "a version holding a planted hash-based .pyc passed hsnet's model-file check (promote's gate), "
        "and MLflow's own loader (README's notebook load and mlflow models serve) ran it from a fresh download")


# --- 4, 5. git_commit in another user's checkout ---------------------------------------------------

def _git(*args, cwd: Path) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd,
                          capture_output=True, text=True, check=True, timeout=60).stdout.strip()


def _checkout(tmp_path: Path) -> tuple[Path, str]:
    """A git checkout holding a package folder ``hsnet``; its commit."""
    if os.geteuid() != 0 or not shutil.which("git"):
        pytest.skip("needs root (to give a checkout to another user) and git")
    repo = tmp_path / "checkout"
    (repo / "hsnet").mkdir(parents=True)
    _git("init", "-q", cwd=repo)
    (repo / "hsnet" / "__init__.py").write_text("")
    _git("add", ".", cwd=repo)
    _git("commit", "-qm", "one", cwd=repo)
    return repo, _git("rev-parse", "HEAD", cwd=repo)


def _give_to_nobody(repo: Path) -> None:
    os.lchown(repo, NOBODY, NOBODY)
    for base, dirs, files in os.walk(repo):
        for name in [*dirs, *files]:
            os.lchown(os.path.join(base, name), NOBODY, NOBODY)


def _as_hsnet_in(repo: Path, monkeypatch) -> None:
    """tracking.git_commit as it runs with hsnet's package in ``repo/hsnet``, git speaking English."""
    from hsnet import tracking

    monkeypatch.delenv("HSNET_GIT_COMMIT", raising=False)
    monkeypatch.setattr(tracking, "__file__", str(repo / "hsnet" / "tracking.py"))
    for key in ("LC_ALL", "LC_MESSAGES", "LANGUAGE"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("LANG", "C.UTF-8")


def test_git_commit_reads_another_users_checkout_whatever_language_git_speaks(tmp_path, monkeypatch):
    """32a: git_commit gives ``COMMIT-unchecked`` in a checkout git refuses as another user's, read
    from its files. It recognises the refusal by git's English words ("dubious ownership" in
    stderr); git translates its messages (LANG=de_DE.UTF-8, or a desktop's LANGUAGE=de_DE:de), so
    for a German, French, ... user the fallback never runs and the run records ``unknown``, the
    case 32a fixed. (Here LANGUAGE=de stands for a German locale: this machine generates none.)"""
    from hsnet import tracking

    repo, commit = _checkout(tmp_path)
    _give_to_nobody(repo)
    _as_hsnet_in(repo, monkeypatch)
    assert tracking.git_commit() == commit + "-unchecked"  # git in English: read from the files
    monkeypatch.setenv("LANGUAGE", "de")
    said = subprocess.run(["git", "-C", str(repo / "hsnet"), "rev-parse", "HEAD"], capture_output=True,
                          text=True, timeout=60).stderr
    if "dubious ownership" in said:
        pytest.skip("git's messages are not translated on this machine")
    assert tracking.git_commit() == commit + "-unchecked", f"git said: {said.strip()[:300]}"


def test_git_commit_never_blocks_on_a_checkouts_head(tmp_path, monkeypatch):
    """git_commit runs git with a 5 s timeout; _head_commit (32a) reads ``HEAD`` with no such
    bound, and without the ``is_file`` check it makes of the other files. git takes a HEAD that is a
    symbolic link whose target starts with ``refs/`` as valid without opening it (and then
    refuses the checkout as another user's), so a HEAD linked to a FIFO (or, one ``.git`` below
    the checkout git refused, to /dev/zero) makes every ``hsnet train``, ``evaluate`` and
    ``register`` hang for ever (or fill the memory) in git_commit, where before it said
    ``unknown`` at once."""
    from hsnet import tracking

    repo, _ = _checkout(tmp_path)
    head = repo / ".git" / "HEAD"
    fifo = repo / ".git" / "refs" / "pipe"
    os.mkfifo(fifo)
    head.unlink()
    head.symlink_to("refs/pipe")
    _give_to_nobody(repo)
    _as_hsnet_in(repo, monkeypatch)
    said = subprocess.run(["git", "-C", str(repo / "hsnet"), "rev-parse", "HEAD"], capture_output=True,
                          text=True, timeout=60).stderr
    assert "dubious ownership" in said, said  # the scenario: git takes it for a checkout, another user's

    got: list[str] = []
    reader = threading.Thread(target=lambda: got.append(tracking.git_commit()), daemon=True)
    reader.start()
    reader.join(15)  # git itself is given 5 s
    blocked = reader.is_alive()
    if blocked:  # let it go: a writer that closes at once gives the reader the end of the file
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:
            pass
        reader.join(30)
    assert not blocked, "git_commit blocked reading the checkout's HEAD (a FIFO), with no end"
