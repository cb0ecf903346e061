"""Attack 23b: a step in a pod as a cluster really starts it.

A cluster (Kubeflow on Kubernetes, OpenShift) starts a step as an arbitrary non-root uid that has no
/etc/passwd entry (HOME is then "/", USER and LOGNAME are unset), often with a read-only root
filesystem where only /tmp and the mounted volumes can be written, and stops it with SIGTERM, then
SIGKILL. These tests start hsnet's steps that way, without Docker: in Linux user (and mount)
namespaces made with util-linux's ``unshare`` (skipped where the kernel or a sandbox refuses them),
as real subprocesses, with the environment a pod has.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
POD_UID = 1000680000  # an OpenShift-style arbitrary uid: no passwd entry


def _unshare_works(*args: str) -> bool:
    if not shutil.which("unshare"):
        return False
    try:
        return subprocess.run(["unshare", *args, "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _pod_env(tmp: Path) -> dict:
    """What a pod's process has: no USER/LOGNAME, HOME=/ (the runtime's default for a uid without a
    passwd entry), the image's settings; TMPDIR where this test may write."""
    env = {"PATH": os.environ["PATH"], "HOME": "/", "LANG": "C", "PYTHONPATH": str(ROOT),
           "PYTHONUNBUFFERED": "1", "DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "false",
           "MLFLOW_DISABLE_TELEMETRY": "true", "TMPDIR": str(tmp), "HSNET_CACHE_DIR": str(tmp / "hsnet-cache"),
           "MPLCONFIGDIR": str(tmp / "matplotlib")}
    tmp.mkdir(parents=True, exist_ok=True)
    return env


@pytest.fixture(scope="module")
def dvc_source(tmp_path_factory):
    """A git + DVC repository whose data/raw (a few sample photos) is pushed to a local remote: the
    fetch step's ``raw_source`` with ``dvc_path`` data/raw."""
    from hsnet.data.sample import generate

    base = tmp_path_factory.mktemp("dvc-source")
    repo = base / "repo"
    repo.mkdir()
    generate(repo / "data" / "raw", per_class=1, size=48, seed=1)
    env = {**os.environ, "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@e",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@e"}
    dvc = [sys.executable, "-m", "dvc"]
    for cmd in (["git", "init", "-q"], [*dvc, "init", "-q"], [*dvc, "add", "-q", "data/raw"],
                [*dvc, "remote", "add", "-q", "-d", "storage", str(base / "remote")], [*dvc, "push", "-q"],
                ["git", "add", "-A"], ["git", "commit", "-qm", "data"]):
        proc = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, f"{cmd}: {proc.stdout}{proc.stderr}"
    return repo, sum(1 for p in (repo / "data" / "raw").rglob("*") if p.is_file())


# the fetch step as components/fetch.py runs it: source-version reads the content version
# (dvc ls), then fetch_raw downloads (dvc get) and checks it against that version
FETCH = ("import sys; from hsnet.data.fetch import fetch, source_version; "
         "v = source_version(sys.argv[1], dvc_path='data/raw'); "
         "print(fetch(sys.argv[1], sys.argv[2], dvc_path='data/raw', progress=False, expect_version=v)['files'])")


def test_dvc_source_is_fetched_by_a_uid_without_a_passwd_entry(dvc_source, tmp_path):
    """README, "The container": the launcher's emptyDir volumes mean "any uid works" (the images
    run as uid 1000, but OpenShift and a pod's runAsUser start a step as an arbitrary uid that the
    image's /etc/passwd doesn't list). The source-version and fetch steps of a DVC ``raw_source``
    (README, "Kubeflow Pipelines": "a DVC repository URL with dvc_path and dvc_rev") run
    ``dvc ls``/``dvc get``, and DVC names its site cache after ``getpass.getuser()``, which raises
    KeyError for such a uid when USER/LOGNAME are unset (as in a pod): the step fails with
    "unexpected error - 'getpwuid(): uid not found'" before fetching anything. hsnet starts these
    dvc processes itself (hsnet.data.fetch), so it can give them a user name (USER) when the uid has
    none."""
    try:
        pwd.getpwuid(POD_UID)
        pytest.skip(f"uid {POD_UID} has a passwd entry here")
    except KeyError:
        pass
    if not _unshare_works("--user", f"--map-user={POD_UID}", f"--map-group={POD_UID}"):
        pytest.skip("no user namespaces here (unshare --user refused)")
    repo, n = dvc_source
    env = _pod_env(tmp_path / "tmp")
    proc = subprocess.run(["unshare", "--user", f"--map-user={POD_UID}", f"--map-group={POD_UID}",
                           sys.executable, "-c", FETCH, str(repo), str(tmp_path / "raw")],
                          env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"the fetch step failed as uid {POD_UID}:\n{proc.stderr[-1500:]}"
    assert proc.stdout.split()[-1] == str(n)


def test_dvc_source_is_fetched_on_a_read_only_root_filesystem(dvc_source, tmp_path):
    """A pod with ``readOnlyRootFilesystem`` (Pod Security "restricted", which the project gives its
    own InferenceService, hsnet/k8s/inferenceservice.yaml) can write only its volumes: the pipeline
    mounts size-limited emptyDirs at /tmp and the artifact folders for exactly that
    (pipelines/hsnet_pipeline.py, SCRATCH: "the kubelet evicts a step that writes more instead of
    letting it fill the node"). ``dvc ls``/``dvc get`` keep a site cache in /var/tmp/dvc (outside
    every volume), so the source-version and fetch steps of a DVC ``raw_source`` fail there with
    "Read-only file system: '/var/tmp/dvc/repo/...'". hsnet could point DVC_SITE_CACHE_DIR at its
    temporary folder."""
    if not _unshare_works("-Urm"):
        pytest.skip("no user + mount namespaces here (unshare -Urm refused)")
    repo, n = dvc_source
    env = _pod_env(tmp_path / "tmp")
    # the root filesystem read-only, tmp_path (this pod's volumes) writable: 77 where /var/tmp is a
    # writable mount of its own here (nothing to show)
    script = ('mount --bind "$1" "$1" && mount -o remount,bind,ro / || exit 78; '
              'touch /var/tmp/.hsnet-probe 2>/dev/null && { rm -f /var/tmp/.hsnet-probe; exit 77; }; '
              'shift; exec "$@"')
    proc = subprocess.run(["unshare", "-Urm", "sh", "-c", script, "sh", str(tmp_path),
                           sys.executable, "-c", FETCH, str(repo), str(tmp_path / "raw")],
                          env=env, capture_output=True, text=True, timeout=120)
    if proc.returncode == 78:
        pytest.skip(f"can't make the root filesystem read-only here: {proc.stderr[-300:]}")
    if proc.returncode == 77:
        pytest.skip("/var/tmp is a writable mount of its own here")
    assert proc.returncode == 0, f"the fetch step failed on a read-only root filesystem:\n{proc.stderr[-1500:]}"
    assert proc.stdout.split()[-1] == str(n)


# a tracking step's start, as a step killed at any moment has it: hsnet.tracking.connect() creates
# the SQLite store (MLflow's table migrations); SQLAlchemy's log names each statement before it runs
OPEN_STORE = ("import logging, sys, mlflow; logging.basicConfig(level=logging.INFO, stream=sys.stderr); "
              "logging.getLogger('sqlalchemy.engine').setLevel(logging.INFO); from hsnet import tracking; "
              "tracking.connect()")


def test_a_step_killed_while_it_creates_the_store_leaves_one_the_retry_can_use(tmp_path):
    """README: every train and evaluate run goes to the SQLite store mlflow/mlflow.db, which the
    first tracked step creates (hsnet.tracking.ensure_store: "Create or upgrade a SQLite MLflow
    store"), and "Ctrl-C ... SIGTERM: files are written atomically, so none is half-written"; a
    killed step is run again (dvc repro, a Kubeflow retry). MLflow creates a store by running some
    70 schema migrations that SQLite doesn't make atomic (MLflow's own _upgrade_db: "not guaranteed
    to be transactional"): a step killed in the first seconds of the first training (here with
    SIGKILL while a migration copies a table; SIGTERM and Ctrl-C do the same at other moments)
    leaves a half-migrated mlflow.db, and every later tracked step of the project fails on it for
    good with a traceback ("table _alembic_tmp_metrics already exists", "duplicate column name")
    until someone deletes the store. Expected: a store killed while being created is absent or
    whole (built beside it and renamed into place), so the retry works."""
    from hsnet import tracking

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "MLFLOW_TRACKING_URI": uri, "MLFLOW_DISABLE_TELEMETRY": "true"}
    victim = subprocess.Popen([sys.executable, "-c", OPEN_STORE], env=env, stderr=subprocess.PIPE, text=True)
    copied = killed = None
    try:
        for line in victim.stderr:  # a migration that rebuilds a table: created a copy, now filling it
            if copied is None and "CREATE TABLE _alembic_tmp_" in line:
                copied = line.split("CREATE TABLE ", 1)[1].split()[0]
            elif copied and f"INSERT INTO {copied}" in line:
                victim.send_signal(signal.SIGKILL)  # a node lost, an OOM kill, the end of a pod's grace period
                killed = copied
                break
    finally:
        victim.kill()
        victim.communicate(timeout=60)
    if killed is None:
        pytest.skip("this MLflow creates its store without rebuilding a table: no moment to kill it at")
    error = None
    try:  # the retry: the next tracked step opens the same store
        tracking.ensure_store(uri)
    except Exception as exc:  # noqa: BLE001 - what the retry dies of
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    assert error is None, f"killed while filling {killed}, the store can't be opened again: {error}"


@pytest.mark.parametrize("verb", ["validate", "train"])
def test_a_home_that_cannot_be_written_is_named_not_a_traceback(verb, tiny_data, tmp_path):
    """README: image checks and decoded crops are cached "in ~/.cache/hsnet (HSNET_CACHE_DIR)". A
    pod's HOME is "/" for a uid without a passwd entry (and read-only with a read-only root), a
    cron job's or service's may be any folder it can't write: with HSNET_CACHE_DIR unset,
    ``hsnet validate`` and ``hsnet train`` then die with a Python traceback
    (PermissionError/NotADirectoryError from mkdir, no word of the cache or the variable), where
    ``hsnet predict`` says "set HSNET_CACHE_DIR to a writable folder" (hsnet.tracking) and every
    other unwritable folder is refused by name (hsnet.io.check_writable). Expected: the step runs
    without the cache, or ends with hsnet's error (exit 2) naming HSNET_CACHE_DIR."""
    blocker = tmp_path / "home-is-a-file"
    blocker.write_text("")
    env = {k: v for k, v in os.environ.items() if k != "HSNET_CACHE_DIR"}
    env.update(HOME=str(blocker / "home"), PYTHONPATH=str(ROOT), MLFLOW_DISABLE_TELEMETRY="true",
               GX_ANALYTICS_ENABLED="false")
    if verb == "validate":
        from hsnet.data.datasets import import_dataset
        from hsnet.data.sample import generate

        generate(tmp_path / "raw", per_class=1, size=48, seed=2)
        import_dataset("sample", tmp_path / "raw", tmp_path / "manifest.csv")
        args = ["validate", "--manifest", str(tmp_path / "manifest.csv"), "--root", str(tmp_path / "raw"),
                "--dataset", "sample", "--report", str(tmp_path / "report")]
    else:
        params = tmp_path / "params.yaml"
        params.write_text("datasets:\n  sample:\n    input_size: 80\n    model: {ktl: false}\n"
                          "    train: {lr: 0.001, epochs: 1, batch_size: 16, seed: 3}\n")
        args = ["train", "--data", str(tiny_data), "--params", str(params), "--dataset", "sample",
                "--out", str(tmp_path / "run"), "--no-mlflow"]
    proc = subprocess.run([sys.executable, "-m", "hsnet.cli", *args], env=env, capture_output=True, text=True,
                          timeout=300)
    assert "Traceback" not in proc.stderr, f"hsnet {verb} died with a traceback:\n{proc.stderr[-1200:]}"
    assert proc.returncode == 0 or (proc.returncode == 2 and "HSNET_CACHE_DIR" in proc.stderr), proc.stderr[-800:]


def test_a_crop_killed_and_run_again_leaves_no_half_written_file_in_its_output(tmp_path):
    """README: "A re-run [of hsnet crop] only processes images whose content or settings changed",
    and a retried or preempted step should end as one never stopped; dvc.yaml caches crop's whole
    --out folder (and Kubeflow uploads it as the Dataset artifact). A crop killed by SIGKILL (the
    pod's end after its grace period, the OOM killer) leaves the crops it was writing as
    ``images/.../.NAME.RANDOM.tmp``; the re-run into the same --out keeps them (hsnet.io's
    clean_stale_tmp removes only those an hour old, in case another process is still writing them),
    so the finished output holds files a run never stopped doesn't, which DVC hashes and caches with
    the crops. crop holds its --out for itself (hsnet.io.only_writer), so no other process can be
    writing them: the re-run can remove them all."""
    from hsnet.data.datasets import import_dataset
    from hsnet.data.sample import generate

    generate(tmp_path / "raw", per_class=20, size=96, seed=4)
    import_dataset("sample", tmp_path / "raw", tmp_path / "manifest.csv")
    out = tmp_path / "crops"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "hsnet.cli", "crop", "--manifest", str(tmp_path / "manifest.csv"),
           "--root", str(tmp_path / "raw"), "--out", str(out), "--detector", "none", "--size", "64"]
    left = []
    for _ in range(4):  # killed while a crop is being written (a .tmp beside it)
        shutil.rmtree(out, ignore_errors=True)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        while proc.poll() is None and not any((out / "images").rglob("*.tmp")):
            pass
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
        left = list(out.rglob("*.tmp"))
        if left:
            break
    if not left:
        pytest.skip("no crop was being written when the process was killed")
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-800:]
    still = sorted(str(p.relative_to(out)) for p in out.rglob("*.tmp"))
    assert not still, f"the finished crops folder still holds what the killed run was writing: {still[:5]}"
