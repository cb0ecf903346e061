"""Attack 32a: what this test machine's environment hides from the suite (everything runs as root,
with umask 022, in one PID namespace, on every core of the machine), as another user on a shared
box, or a container or pod, meets it.

Root ignores permission bits and git's ownership check, so a folder hsnet leaves at ``mkdtemp``'s
0700, a cache leftover it can't remove, a checkout another user owns all work for every test here;
another user (a teammate sharing ``HSNET_CACHE_DIR`` or a checkout, the pod's uid 1000 reading a
cache volume filled by another uid, a web server showing the Data Docs) meets them. Every process
here has its own PID, so a file named after the PID is private; two containers (each ``hsnet`` PID 1
in its own PID namespace) sharing one cache volume get the same name. And this process may run on
every core, so counting the machine's cores is counting its own.

The other user is ``nobody`` (uid 65534, no files of its own), entered with util-linux's
``setpriv`` (no user is created); the PID namespaces are made with ``unshare --pid --fork``. Each
test is skipped where this machine can't make them (not root). Nothing is created outside the
test's folders but folders under /tmp that ``nobody`` can reach (pytest's own base folder is root's,
0700), removed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
HSNET = Path(sys.executable).with_name("hsnet")
NOBODY = 65534
NAME = "hsnet-sample"


def _can_be_nobody() -> bool:
    """Root, util-linux's setpriv, and a checkout and interpreter another user can reach (a clone
    in a 0700 folder, as ``mktemp -d`` makes, is not: these tests are skipped there)."""
    if os.geteuid() != 0 or not shutil.which("setpriv"):
        return False
    try:
        return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--",
                               sys.executable, "-c", "import hsnet.cli"], env={"PYTHONPATH": str(ROOT)}, cwd="/",
                              capture_output=True, timeout=120).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def _as_nobody(argv: list[str], *, env: dict, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    """``argv`` as ``nobody``, started by setpriv itself (on this machine the venv's interpreter is a link
    into /root, 0700: a shell or ``env`` run as nobody can't start it, setpriv's own exec can)."""
    return subprocess.run(["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--", *argv],
                          env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def shared():
    """A folder under /tmp that every user can reach (0755, root's), removed afterwards."""
    folder = Path(tempfile.mkdtemp(prefix="hsnet-att32a-", dir="/tmp"))
    folder.chmod(0o755)
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)  # this machine's, and most users': made explicit, so the expectation is known
    try:
        yield
    finally:
        os.umask(old)


def _nobodys_env(home: Path, **extra) -> dict:
    """A user's environment: its own home and temporary folder, nothing of the test run's (whose
    TMPDIR, caches and torch's TORCHINDUCTOR_CACHE_DIR are under pytest's folder, root's 0700)."""
    (home / "tmp").mkdir(parents=True, exist_ok=True)
    for p in (home, home / "tmp"):
        os.chown(p, NOBODY, NOBODY)
    env = {key: os.environ[key] for key in ("PATH", "LANG", "PYTHONDONTWRITEBYTECODE", "PYTHONUNBUFFERED")
           if key in os.environ}
    env.update(HOME=str(home), TMPDIR=str(home / "tmp"), DVC_NO_ANALYTICS="1", GX_ANALYTICS_ENABLED="false",
               MLFLOW_DISABLE_TELEMETRY="true", OMP_NUM_THREADS="1", **extra)
    return env


# --- 1. the model cache: a copy another user made is 0700 -------------------------------------------------

@pytest.fixture(scope="module")
def registry(trained):
    """A local sqlite store under a folder every user can reach, with the trained checkpoint
    evaluated and registered as ``hsnet-sample`` version 1 (as hsnet evaluate + hsnet register do),
    a photo, and ``nobody``'s home; ``fill(cache, umask)`` downloads the version into a model cache
    as root, in-process (``hsnet predict``'s own load), and ``predict(cache, out)`` runs ``hsnet
    predict --model models:/hsnet-sample/1`` as nobody with that cache."""
    if not _can_be_nobody():
        pytest.skip("needs root, util-linux's setpriv and a checkout another user can read")
    from hsnet.evaluate import evaluate
    from hsnet.predict import load_classifier
    from hsnet.registry import register

    base = Path(tempfile.mkdtemp(prefix="hsnet-att32a-", dir="/tmp"))
    base.chmod(0o755)
    try:
        store, home = base / "store", base / "nobody"
        store.mkdir()
        uri = f"sqlite:///{store / 'mlflow.db'}"
        with pytest.MonkeyPatch.context() as m:
            m.setenv("MLFLOW_TRACKING_URI", uri)
            m.chdir(store)  # the artifacts go beside the store
            evaluate(trained["checkpoint"], trained["data"], store / "eval", progress=False)
            assert register(trained["checkpoint"], store / "eval" / "metrics.json", "sample",
                            name=NAME)["version"] == 1
        home.mkdir()
        photo = home / "face.png"
        shutil.copyfile(sorted((trained["data"] / "images").rglob("*.png"))[0], photo)
        os.chown(photo, NOBODY, NOBODY)

        def fill(cache: Path, umask: int) -> None:
            old = os.umask(umask)
            try:
                with pytest.MonkeyPatch.context() as m:
                    m.setenv("MLFLOW_TRACKING_URI", uri)
                    m.setenv("HSNET_CACHE_DIR", str(cache))
                    load_classifier(f"models:/{NAME}/1", device="cpu")
            finally:
                os.umask(old)

        def predict(cache: Path, out: str) -> subprocess.CompletedProcess:
            env = _nobodys_env(home, MLFLOW_TRACKING_URI=uri, HSNET_CACHE_DIR=str(cache))
            return _as_nobody([str(HSNET), "predict", str(photo), "--model", f"models:/{NAME}/1", "--device", "cpu",
                               "--out", str(home / out)], env=env, cwd=home)

        yield {"base": base, "home": home, "fill": fill, "predict": predict}
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_registered_model_copy_cached_by_another_user_is_used_from_a_read_only_cache(registry):
    """README ("Registry, promotion and inference"): a registry URI "is downloaded once into
    $HSNET_CACHE_DIR/models ... and reused by later runs ... a read-only cache that holds the whole
    copy is used as it is"; model_copies.fetch_model: "a read-only cache holding the whole copy (a volume
    filled before)". The volume is filled before by someone: an init container, a job that warms the
    cache, a teammate; hsnet/k8s/inferenceservice.yaml then serves from it as uid 1000.

    Filled by root here (umask 022, so every folder it makes is 0755), the cache holds the whole copy;
    ``nobody`` runs ``hsnet predict --model models:/hsnet-sample/1`` with HSNET_CACHE_DIR pointing at
    it (read-only to it: root's 0755 folders) and the registry readable. Today the copy's folder is
    the ``tempfile.mkdtemp`` hsnet downloaded it into (``.download-*``, mode 0700, renamed into place),
    so to any other user the whole copy is unreadable: fetch_model's ``(copy / "MLmodel").is_file()``
    raises PermissionError and predict ends with "can't load it from MLflow ... (PermissionError ...)
    Check the name and alias". (Root, who ignores modes, never sees it; the same 0700 makes a
    group-shared cache, umask 002, fail for every teammate but the one who downloaded the version.)

    Expectation by hand: a folder hsnet makes gets what ``mkdir`` gives under the umask (0755), as
    every other folder of the cache has, and nobody's predict answers with the cached copy. A control
    run first: nobody's predict with a cache of its own works (the registry and hsnet are readable)."""
    cache, home = registry["base"] / "cache", registry["home"]
    registry["fill"](cache, 0o022)  # the volume filled before: the whole copy in the cache
    control = registry["predict"](home / "own-cache", "control.jsonl")
    assert control.returncode == 0, f"nobody can't predict even with a cache of its own:\n{control.stderr[-3000:]}"

    copies = [p for p in (cache / "models").glob("*/*") if p.is_dir() and not p.name.startswith(".")]
    assert len(copies) == 1, copies
    modes = {p.relative_to(cache).as_posix(): oct(stat.S_IMODE(p.stat().st_mode))
             for p in [cache, *cache.rglob("*")] if p.is_dir()}
    done = registry["predict"](cache, "shared.jsonl")
    assert done.returncode == 0, (f"a read-only cache holding the whole copy, made by another user, is not used "
                                  f"(its folders' modes: {modes}):\n{done.stderr[-3000:]}")
    (record,) = [json.loads(line) for line in (home / "shared.jsonl").read_text().splitlines()]
    assert "error" not in record and "faces" in record, record


def test_a_model_cache_this_user_cant_read_is_named_not_blamed_on_the_registry(registry):
    """A model cache another user keeps private (made under umask 077: every folder 0700, as a user
    who keeps ~/.cache to themselves has it) given as HSNET_CACHE_DIR, or shared by mistake. hsnet
    can't use it, and says so elsewhere in the same words: a cache it can't write gets "can't
    download ... into the model cache ...: set HSNET_CACHE_DIR to a writable folder", a damaged copy
    it can't repair "... set HSNET_CACHE_DIR to a writable folder", and test_attack_session22c's
    read-only cache accepts an error that names HSNET_CACHE_DIR. Here fetch_model's look at the
    copy (``_complete``: ``is_file`` raises PermissionError, which pathlib doesn't swallow) escapes as a
    plain exception and load_classifier reports it as "can't load it from MLflow at <store>
    (PermissionError: ...). Check the name and alias (hsnet promote) and MLFLOW_TRACKING_URI":
    the registry, name and alias are fine; the cache folder is what to change.

    Expectation by hand: nobody's ``hsnet predict`` with that cache either works (a copy of its own
    elsewhere) or ends with an error that names HSNET_CACHE_DIR, not the registry."""
    cache = registry["base"] / "private-cache"
    registry["fill"](cache, 0o077)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o700
    done = registry["predict"](cache, "private.jsonl")
    assert done.returncode == 0 or "HSNET_CACHE_DIR" in done.stderr, \
        f"a model cache this user can't read is reported as a registry problem:\n{done.stderr[-2000:]}"


# --- 2. validate's Data Docs: a folder only its maker can open ------------------------------------------

def test_validation_data_docs_get_the_mode_of_any_folder_the_step_makes(tiny_sample, tmp_path, umask_022,
                                                                        monkeypatch):
    """README: ``--report`` gets "``summary.json`` ..., ``gx_results.json`` and the Data Docs
    (``data_docs/index.html``)", the report a team (or the web server that shows it, another user)
    opens in a browser. validate's ``_build_docs`` builds the site in a ``tempfile.mkdtemp`` folder
    (mode 0700) and renames that folder into place as ``data_docs``: under umask 022, where every
    other folder and file of the report is readable by all (summary.json 0644, the report 0755), the
    Data Docs can be opened by the user who ran validate only (root here, who ignores modes).

    Expectation by hand: ``data_docs`` gets what ``mkdir`` gives under the umask, 0755, like the
    report folder and the folders Great Expectations makes inside it; and ``nobody`` can read
    ``data_docs/index.html`` where it can read ``summary.json`` beside it."""
    from hsnet.data.datasets import import_dataset
    from hsnet.data.validate import ValidationFailed, validate

    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    import_dataset("sample", tiny_sample, tmp_path / "manifest.csv")
    report = tmp_path / "report"
    try:
        validate(tmp_path / "manifest.csv", tiny_sample, "sample", report, progress=False)
    except ValidationFailed:  # 42 photos may leave a split short: the report is written all the same
        pass
    docs = report / "data_docs"
    assert (docs / "index.html").is_file()
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(report) == 0o755 and mode(report / "summary.json") == 0o644  # what the umask gives
    inner = sorted({oct(mode(p)) for p in docs.rglob("*") if p.is_dir()})
    assert mode(docs) == 0o755, (f"data_docs is {oct(mode(docs))} (the folders inside it: {inner}; the report "
                                 f"{oct(mode(report))}): only its maker can open the Data Docs")
    if _can_be_nobody():  # what that mode means to another user (pytest's base folder is root's 0700:
        copy = Path(tempfile.mkdtemp(prefix="hsnet-att32a-", dir="/tmp"))  # a copy, every mode kept, is tried)
        try:
            copy.chmod(0o755)
            shutil.copytree(report, copy / "report")  # copytree keeps each folder's and file's mode
            got = _as_nobody(["cat", str(copy / "report" / "summary.json"),
                              str(copy / "report" / "data_docs" / "index.html")],
                             env={"PATH": os.environ["PATH"]}, cwd=Path("/"))
            assert got.returncode == 0, f"another user can't open the Data Docs: {got.stderr[-500:]}"
        finally:
            shutil.rmtree(copy, ignore_errors=True)


# --- 3. the tensor cache: a temporary file named after the PID, in a volume two containers share ---------

DECODE = r'''
import sys, time
from pathlib import Path
import hsnet.tensors as tensors
from hsnet.data.manifest import read_manifest

data, cache, gate = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]) if len(sys.argv) > 3 else None
real = tensors.open_rgb
def held(path):  # the first decode waits for the test's word: this container is mid-way through its decode
    image = real(path)
    if gate is not None and not gate.exists():
        gate.with_suffix(".started").write_text(str(__import__("os").getpid()))
        while not gate.exists():
            time.sleep(0.05)
    return image
tensors.open_rgb = held
rows = [r for r in read_manifest(data / "manifest.csv") if r["split"] == "train"]
split = tensors.load_split(rows, data, 80, cache_dir=cache, progress=False)
print("decoded", len(split), int(split.images.sum()))
'''


def _unshare_pid_works() -> bool:
    if not shutil.which("unshare"):
        return False
    try:
        done = subprocess.run(["unshare", "--pid", "--fork", sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, timeout=30)
        return done.returncode == 0 and done.stdout.strip() == "1"
    except (OSError, subprocess.SubprocessError):
        return False


def test_two_containers_decoding_the_same_split_into_a_shared_tensor_cache_both_train(tiny_data, tmp_path):
    """README: the crops "are decoded once into a memory-mapped uint8 tensor file
    ($HSNET_CACHE_DIR/tensors ...)"; hsnet/tensors.py guards the cache against other processes
    (a prune by another process, "mapped before it is in place: no other prune can take it first").
    The decode writes into ``<key>_<size>.<pid>.tmp`` and renames it into place. A PID is unique on
    one machine only: in containers (``docker run``, a Kubernetes pod) ``hsnet`` is PID 1 (or tini's
    child, PID 7) in each. Two trainings of the same crops (two GPUs, two containers or pods) sharing
    one cache volume both decode into ``<key>_80.1.tmp``: the second truncates and rewrites the file
    the first is mapping, renames it into place, and the first then finds its temporary file gone
    (FileNotFoundError from ``np.load(tmp)``): that training dies before its first epoch.

    Made with two PID namespaces (``unshare --pid --fork``: the Python in each is PID 1). Container A
    starts decoding and is held after its first image; container B decodes the same split to the
    end; A goes on. Expectation by hand: both end with the split (what either gets alone), as two
    processes with different PIDs do (here, on one machine)."""
    if not _unshare_pid_works():
        pytest.skip("needs PID namespaces (unshare --pid --fork, root)")
    cache, gate = tmp_path / "shared-cache", tmp_path / "go"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    a = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-c", DECODE,
                          str(tiny_data), str(cache), str(gate)], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not gate.with_suffix(".started").exists():
            assert a.poll() is None, f"container A ended before its decode: {a.communicate()[1][-2000:]}"
            assert time.monotonic() < deadline, "container A never started decoding"
            time.sleep(0.1)
        assert gate.with_suffix(".started").read_text() == "1"  # PID 1, as in a container
        b = subprocess.run(["unshare", "--pid", "--fork", "--kill-child", sys.executable, "-c", DECODE,
                            str(tiny_data), str(cache)], env=env, capture_output=True, text=True, timeout=300)
        assert b.returncode == 0, f"container B's decode failed: {b.stderr[-2000:]}"
        gate.write_text("go")
        out, err = a.communicate(timeout=300)
    finally:
        if a.poll() is None:
            a.kill()
            a.wait()
    assert a.returncode == 0, ("container A's training died decoding its split into the shared tensor cache, "
                               f"where container B (also PID 1) decoded the same split meanwhile:\n{err[-2000:]}")
    assert out.split() == b.stdout.split(), (out, b.stdout)


# --- 4. the commit a run records, in a checkout another user owns ---------------------------------------

def test_a_run_in_a_checkout_another_user_owns_records_the_checkouts_commit():
    """README: every train and evaluate run records "git commit" (tracking.git_commit: "the git
    checkout this package lives in ... ``-dirty`` when the package's own files have uncommitted
    changes; else ``unknown``"); the checkpoint's meta, the MLflow runs' tags and the registered
    version's ``git_commit``/``train_git_commit`` come from it. Since git 2.35.2 git refuses to work
    in a repository owned by another user ("fatal: detected dubious ownership in repository",
    exit 128): a team's shared checkout, a checkout mounted into a container whose process runs
    as another uid (a dev container running as root over the host user's files, a CI runner's
    workspace). git_commit takes that refusal for "no checkout" and records ``unknown``, silently:
    the run's code can no longer be traced to its commit, though the checkout has one. Here every
    process is root and the checkout is root's, so the suite never sees it.

    Run as ``nobody`` over this (root's) checkout, hsnet.tracking.git_commit() must give the
    commit the checkout is at, as ``git -c safe.directory=* rev-parse HEAD`` reads it (with
    ``-dirty`` or not: the package's files are as the owner's git_commit finds them); not ``unknown``."""
    if not _can_be_nobody() or not shutil.which("git"):
        pytest.skip("needs root, util-linux's setpriv, git and a checkout another user can read")
    import hsnet
    from hsnet.tracking import git_commit

    package = Path(hsnet.__file__).resolve().parent
    head = subprocess.run(["git", "-c", "safe.directory=*", "-C", str(package), "rev-parse", "HEAD"],
                          capture_output=True, text=True, timeout=30)
    if head.returncode != 0:
        pytest.skip("hsnet is not installed from a git checkout here")
    env = {key: os.environ[key] for key in ("PATH", "LANG", "PYTHONDONTWRITEBYTECODE") if key in os.environ}
    env.update(HOME="/nonexistent", PYTHONPATH=str(package.parent))  # no HSNET_GIT_COMMIT: a checkout's run
    mine = git_commit() if "HSNET_GIT_COMMIT" not in os.environ else None
    got = _as_nobody([sys.executable, "-c", "from hsnet.tracking import git_commit; print(git_commit())"],
                     env=env, cwd=Path("/"), timeout=120)
    assert got.returncode == 0, got.stderr[-2000:]
    commit = got.stdout.strip()
    # the commit, read from the checkout's files; whether the files changed is not checked for another
    # user's checkout (git would run its owner's configuration: filters, fsmonitor), and said so
    assert commit == head.stdout.strip() + "-unchecked", \
        f"another user's run in this checkout records git_commit {commit!r}, the checkout is at {head.stdout.strip()}"
    if mine is not None:
        assert mine.removesuffix("-dirty") == head.stdout.strip()  # its owner's run: checked


# --- 5. a shared (sticky, world-writable) tensor cache holding another user's leftover ----------------

LOAD = r'''
import sys
from pathlib import Path
from hsnet.tensors import load_split
from hsnet.data.manifest import read_manifest

data, cache = Path(sys.argv[1]), Path(sys.argv[2])
rows = [r for r in read_manifest(data / "manifest.csv") if r["split"] == "train"]
split = load_split(rows, data, 80, cache_dir=cache, progress=False)
print("decoded", len(split))
'''


def test_a_training_in_a_shared_tensor_cache_leaves_another_users_stale_leftover_alone(tiny_data, shared):
    """hsnet/tensors.py prune_cache: "Also drops temporary files that a killed decode left behind
    more than a day ago", and of the cache's files another user owns: "not ours to remove (a shared
    cache): left, and counted". A cache shared by a team is a folder everyone may write, with the
    sticky bit (mode 1777, as /tmp: each user may remove only their own files). A teammate's decode
    killed two days ago left ``<key>_80.<pid>.tmp`` there. The stale temporaries are removed by
    hsnet.io.remove_stale_temporaries, which lets any error but FileNotFoundError through: the
    teammate's file can't be unlinked (EPERM), so every load_split in that cache, i.e. every
    ``hsnet train`` and ``hsnet evaluate``, ends in PermissionError after decoding its split.
    Root may unlink anything, so the suite never sees it.

    Run as ``nobody``: the crops readable, the cache 1777 with root's stale leftover. Expectation by
    hand: the split is decoded and loaded (a leftover that isn't this user's is left, as prune_cache
    leaves another user's tensor files), and the leftover is still there."""
    if not _can_be_nobody():
        pytest.skip("needs root, util-linux's setpriv and a checkout another user can read")
    data = shared / "crops"
    shutil.copytree(tiny_data, data)
    for p in [data, *data.rglob("*")]:
        p.chmod(0o755 if p.is_dir() else 0o644)
    cache = shared / "cache" / "tensors"
    cache.mkdir(parents=True)
    cache.chmod(0o1777)
    leftover = cache / ("0" * 24 + "_80.4242.tmp")  # a killed decode's, root's
    leftover.write_bytes(b"\0" * 1024)
    two_days_ago = time.time() - 2 * 86_400
    os.utime(leftover, (two_days_ago, two_days_ago))
    home = shared / "nobody"
    home.mkdir()
    env = _nobodys_env(home, PYTHONPATH=str(ROOT))
    done = _as_nobody([sys.executable, "-c", LOAD, str(data), str(cache)], env=env, cwd=home, timeout=300)
    assert done.returncode == 0 and done.stdout.split()[0] == "decoded", \
        f"a training in a shared tensor cache fails on another user's leftover:\n{done.stderr[-2000:]}"
    assert leftover.exists()


# --- 6. the cores a group of trainings shares: the machine's, not the process's --------------------------

JOBS = r'''
import os, sys
from hsnet.concurrent import Job, run_jobs

show = "import os; print('threads', os.environ['OMP_NUM_THREADS'])"
done = run_jobs([Job(name, [sys.executable, "-c", show]) for name in ("a", "b")], 1)  # one at a time
print("cores", len(os.sched_getaffinity(0)))
for name, record in done.items():
    print(name, record["returncode"], record["output"].split()[-1])
'''


def test_trainings_share_the_cores_the_process_may_run_on_not_the_machines():
    """hsnet.concurrent.threads_per_job: "The CPU threads each of ``concurrent`` processes gets: the
    cores shared out, at least one", given to each job as OMP_NUM_THREADS/MKL_NUM_THREADS (the GPU
    group of the Kubeflow ablation, ``hsnet reproduce ablation --concurrent N``). It counts
    ``os.cpu_count()``: every core of the machine, also where the process may run on a few of them
    only: a container given cores (``docker run --cpuset-cpus``, a Kubernetes Guaranteed pod under the
    static CPU manager policy: an exclusive cpuset), a job pinned with ``taskset``/``numactl``. Two
    trainings on a 2-core cpuset of a 64-core node each get 32 threads on 2 cores, the oversubscription
    tests/conftest.py measured (4 threads on 2 cores: 488 s against 369 s) and avoids for the suite with
    ``os.sched_getaffinity``. Here the process may run on every core, so nothing shows.

    Pinned to one core (sched_setaffinity, as taskset does) on this 2-core machine, jobs run one at a
    time must get one thread each (the cores shared out are the one core there is), not the machine's
    two."""
    if not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs Linux's CPU affinity and two cores or more")
    one = {min(os.sched_getaffinity(0))}
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("OMP_NUM_THREADS", None)
    done = subprocess.run([sys.executable, "-c", JOBS], env=env, capture_output=True, text=True, timeout=120,
                          preexec_fn=lambda: os.sched_setaffinity(0, one))
    assert done.returncode == 0, done.stderr[-2000:]
    lines = dict(line.split(" ", 1) for line in done.stdout.splitlines())
    assert lines["cores"] == "1"
    assert lines["a"] == "0 1" and lines["b"] == "0 1", \
        f"jobs run one at a time on one core were each given OMP_NUM_THREADS {lines['a'].split()[1]}: {done.stdout}"
