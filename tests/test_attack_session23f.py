"""Attack 23f: today's fixes, part 2 (the MLflow store built beside its name, read-only caches, the
canary sentinel, the stem-version check).

Each test drives the real code (real SQLite/MLflow stores, real files, real namespaces made with
util-linux's ``unshare`` where a read-only volume or another owner is needed: skipped where the
kernel or a sandbox refuses them).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import pytest

from hsnet.errors import HSNetError
from tests.test_attack_session23b import _unshare_works

ROOT = Path(__file__).resolve().parents[1]
OTHER_UID = 12345  # the owner of a shared cache's files: not this process (and not mapped into its namespace)




def _env(**extra) -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "DVC_NO_ANALYTICS": "1", "GX_ANALYTICS_ENABLED": "false",
            "MLFLOW_DISABLE_TELEMETRY": "true", **extra}


def _as_another_users_files(folder: Path, script: str, *args: str, env: dict) -> subprocess.CompletedProcess:
    """Run ``script`` (python -c) where the files under ``folder`` belong to another user and can be
    read, not written: as non-root, by taking write permission away; as root (which ignores
    permissions), by giving them to OTHER_UID and running in a user namespace where only root is
    mapped (so root there has no power over OTHER_UID's files). Skips where that can't be made."""
    if os.geteuid() != 0:
        for p in [folder, *folder.rglob("*")]:
            p.chmod(0o555 if p.is_dir() else 0o444)
        try:
            return subprocess.run([sys.executable, "-c", script, *args], env=env, capture_output=True, text=True,
                                  timeout=120)
        finally:
            for p in [folder, *folder.rglob("*")]:
                p.chmod(0o755 if p.is_dir() else 0o644)
    if not _unshare_works("-Ur"):
        pytest.skip("no user namespaces here (unshare -Ur refused)")
    for p in [folder, *folder.rglob("*")]:
        os.chown(p, OTHER_UID, OTHER_UID, follow_symlinks=False)
    return subprocess.run(["unshare", "-Ur", sys.executable, "-c", script, *args], env=env, capture_output=True,
                          text=True, timeout=120)


def _tables(db: Path) -> set[str]:
    with sqlite3.connect(db) as con:
        return {r[0] for r in con.execute("select name from sqlite_master where type = 'table'")}


# --- hsnet.tracking.ensure_store: a new store built at <path>.creating and renamed into place -----------


def test_a_percent_encoded_sqlite_uri_gets_its_new_store(tmp_path):
    """hsnet.tracking.ensure_store: "Create or upgrade a SQLite MLflow store ... A new store is built
    beside its name and renamed into place". MLflow opens a sqlite URI through SQLAlchemy, which
    percent-decodes the path (``make_url('sqlite:///my%20dir/x.db').database == 'my dir/x.db'``; a URI
    made with urllib.parse.quote, as URIs of folders with spaces are): the store MLflow opens is
    ``<folder with a space>/mlflow.db``. ensure_store takes the path as spelled (``%20``), so MLflow
    builds ``my dir/mlflow.db.creating`` and ensure_store renames ``my%20dir/mlflow.db.creating``:
    FileNotFoundError, no store made, where MLflow alone (and hsnet before today) made it.
    Expectation by hand: the store named by the URI, as SQLAlchemy reads it, is created."""
    from sqlalchemy.engine import make_url

    from hsnet import tracking

    folder = tmp_path / "my store"
    folder.mkdir()
    db = folder / "mlflow.db"
    uri = "sqlite:///" + urllib.parse.quote(str(db))
    assert "%20" in uri and make_url(uri).database == str(db)  # the file MLflow opens
    tracking.ensure_store(uri)
    assert "experiments" in _tables(db), f"no MLflow store at {db}"


def test_a_store_kept_on_a_volume_through_a_link_is_created_on_the_volume(tmp_path):
    """A store whose name is a symbolic link (mlflow/mlflow.db -> /volume/mlflow.db: the runs kept
    on a persistent volume) was created by SQLite at the link's target, as SQLite and MLflow follow
    links. ensure_store now finds the name missing (a dangling link), builds ``mlflow.db.creating``
    beside the link and renames it over the link itself: the link is gone, the store is a plain file
    in the project folder, and nothing reaches the volume (deleted with the pod/checkout). Expectation
    by hand: the link stays a link, and the store is its target."""
    from hsnet import tracking

    volume = tmp_path / "volume"
    volume.mkdir()
    link = tmp_path / "project" / "mlflow" / "mlflow.db"
    link.parent.mkdir(parents=True)
    link.symlink_to(volume / "mlflow.db")
    tracking.ensure_store(f"sqlite:///{link}")
    assert link.is_symlink(), f"{link}, a link to the volume's store, was replaced by a file"
    assert (volume / "mlflow.db").is_file() and "experiments" in _tables(volume / "mlflow.db")


def test_a_store_moved_aside_is_created_again_in_the_same_process(tmp_path):
    """ensure_store's own advice for a store that can't be opened: "move it aside to start a new
    store". A notebook (or any long-lived process: a server, a test session) that did so, and records
    again, calls ensure_store a second time for the same path. The store is built through
    ``MlflowClient('sqlite:///<path>.creating')``, a URI MLflow caches with its open engine: the second
    time no new ``.creating`` file is made (the cached engine still holds the first one, renamed), and
    ``os.replace`` fails with FileNotFoundError. Expectation by hand: the second call creates a new
    store at the path, as the first did."""
    from hsnet import tracking

    db = tmp_path / "mlflow" / "mlflow.db"
    uri = f"sqlite:///{db}"
    tracking.ensure_store(uri)
    assert "experiments" in _tables(db)
    db.rename(db.with_name("mlflow.db.broken"))  # "move it aside to start a new store"
    tracking.ensure_store(uri)
    assert db.is_file() and "experiments" in _tables(db), f"no new store at {db}"


# --- hsnet.tensors.load_split: a cache this user can read, not write ------------------------------------

LOAD = """
import sys
from pathlib import Path
from hsnet.tensors import load_split
base = Path(sys.argv[1])
rows = [{"path": f"{i}.png", "label": i % 2} for i in range(4)]
split = load_split(rows, base / "crops", 16, cache_dir=base / "cache", progress=False)
print("loaded", len(split))
"""


@pytest.fixture
def filled_cache(tmp_path):
    """Four crops and the tensor cache holding their split (a hit for LOAD), made by this user."""
    import numpy as np
    from PIL import Image

    (tmp_path / "crops").mkdir()
    rng = np.random.default_rng(0)
    for i in range(4):
        Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(tmp_path / "crops" / f"{i}.png")
    proc = subprocess.run([sys.executable, "-c", LOAD, str(tmp_path)], env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0 and "loaded 4" in proc.stdout, proc.stderr[-2000:]
    (hit,) = (tmp_path / "cache").glob("*.npy")
    return tmp_path, hit


def test_a_read_only_volume_holding_the_hit_is_used(filled_cache):
    """hsnet.tensors.load_split (today): "a cache this user can read, not write: a hit is used as it
    is" (the tensor cache on a volume filled before and mounted read-only, as the model cache's
    fetch_model also allows: "a read-only cache holding the whole copy (a volume filled before)").
    On a read-only mount, touching the hit fails with EROFS, an OSError but not a PermissionError:
    load_split takes it for a miss and refuses ("hsnet's cache folder ... can't be written") although
    the split is there. Expectation by hand: the split is loaded from the read-only cache."""
    base, _ = filled_cache
    if not _unshare_works("-Urm"):
        pytest.skip("no user + mount namespaces here (unshare -Urm refused)")
    script = ('mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" || exit 78; '
              'touch "$1/.probe" 2>/dev/null && exit 77; shift; exec "$@"')
    proc = subprocess.run(["unshare", "-Urm", "sh", "-c", script, "sh", str(base / "cache"),
                           sys.executable, "-c", LOAD, str(base)], env=_env(), capture_output=True, text=True,
                          timeout=120)
    if proc.returncode in (77, 78):
        pytest.skip(f"can't mount the cache read-only here: {proc.stderr[-300:]}")
    assert proc.returncode == 0 and "loaded 4" in proc.stdout, \
        f"the split in a read-only cache was not used:\n{proc.stderr[-1500:]}"


def test_a_cache_hit_this_user_cant_write_is_used_when_the_cache_is_over_its_limit(filled_cache):
    """load_split (today): "a cache this user can read, not write: a hit is used as it is" (a shared
    HSNET_CACHE_DIR filled by another user). After the hit, load_split always prunes the cache
    (prune_cache: stale decode temporaries, then the least recently used files over
    HSNET_CACHE_MAX_GB), and unlinking another user's file raises PermissionError, uncaught: the
    training fails on the very cache hit that was to be used. Expectation by hand: a cache that can't
    be written is not pruned (or pruning what can't be removed is skipped), and the split loads."""
    import numpy as np

    base, hit = filled_cache
    old = base / "cache" / f"{'0' * 24}_16.npy"  # another split, least recently used
    np.save(old, np.zeros((64, 3, 16, 16), np.uint8))
    stale = base / "cache" / f"{'1' * 24}_16.99.tmp"  # a decode killed days ago
    stale.write_bytes(b"x")
    two_days_ago = time.time() - 2 * 86_400
    for p in (old, stale):
        os.utime(p, (two_days_ago, two_days_ago))
    proc = _as_another_users_files(base / "cache", LOAD, str(base), env=_env(HSNET_CACHE_MAX_GB="0.000001"))
    assert proc.returncode == 0 and "loaded 4" in proc.stdout, \
        f"the cache hit in a cache this user can't write was not used:\n{proc.stderr[-1500:]}"
    assert hit.is_file()


# --- validate: "runs without its image cache when it can't be made" -----------------------------------

INSPECT = """
import sys
from pathlib import Path
from hsnet.data.validate import _image_info_cache, inspect_images
infos = inspect_images([Path(sys.argv[1])], cache=_image_info_cache(), progress=False)
print("checked", infos[0].decodes)
"""


def test_validate_checks_its_images_when_the_shared_image_cache_is_not_its_own(tmp_path):
    """hsnet.data.validate._image_info_cache (what validate opens its image checks' cache with):
    "None (every image checked, with a warning) where it can't be made: validation doesn't need
    it". A shared HSNET_CACHE_DIR (group-writable) whose image-info.sqlite another user made, which
    this user can read, not write, passes the folder's check (cache_folder), and the first write of
    the image checks (put_many) fails with sqlite3.OperationalError "attempt to write a readonly
    database": validation fails instead of running without the cache. Expectation by hand: the
    image is checked (decodes True), with or without the cache."""
    import numpy as np
    from PIL import Image

    cache = tmp_path / "cache"
    image = tmp_path / "img" / "a.png"
    image.parent.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image)
    env = _env(HSNET_CACHE_DIR=str(cache))
    first = subprocess.run([sys.executable, "-c", INSPECT, str(image)], env=env, capture_output=True, text=True,
                           timeout=120)  # the other user's run: it made the cache
    assert first.returncode == 0 and "checked True" in first.stdout, first.stderr[-1500:]
    db = cache / "image-info.sqlite"
    assert db.is_file()
    other = tmp_path / "img" / "b.png"  # a photo the cache doesn't know: its check is written
    Image.fromarray(np.ones((8, 8, 3), np.uint8)).save(other)
    if os.geteuid() != 0:
        db.chmod(0o444)  # the folder stays writable: a shared, group-writable cache
        proc = subprocess.run([sys.executable, "-c", INSPECT, str(other)], env=env, capture_output=True, text=True,
                              timeout=120)
    else:
        if not _unshare_works("-Ur"):
            pytest.skip("no user namespaces here (unshare -Ur refused)")
        os.chown(db, OTHER_UID, OTHER_UID)
        cache.chmod(0o777)
        proc = subprocess.run(["unshare", "-Ur", sys.executable, "-c", INSPECT, str(other)], env=env,
                              capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "checked True" in proc.stdout, \
        f"validation's image checks failed on a cache it can't write:\n{proc.stderr[-1500:]}"


# --- components: source-version's checks, the stem-version check ---------------------------------------


@pytest.fixture
def as_a_step(tmp_path, monkeypatch):
    """A component body run here: start_step sets MLFLOW_TRACKING_URI, logging and the signal
    handlers of the process (hsnet.interrupt.install); put back afterwards."""
    import signal

    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "hsnet-cache"))
    yield
    for sig, handler in handlers.items():
        signal.signal(sig, handler)


def _params() -> dict:
    import yaml

    return yaml.safe_load((ROOT / "params.yaml").read_text())


def test_source_version_refuses_the_canary_share_the_promote_step_refuses(tmp_path, as_a_step):
    """components.convert.check_run: "The pipeline parameters typed in the Kubeflow UI that no later
    step could work with, refused by the first step, before any data is fetched: ... a canary share
    outside 0..100". hsnet_pipeline passes its own ``canary_percent`` parameter to source-version
    (pipelines/hsnet_pipeline.yaml: componentInputParameter canary_percent), and source-version reads
    -1 as "hsnet.deploy.CANARY_PERCENT" (its sentinel for pipelines without the parameter) and
    passes it. The promote step gets the -1 as typed and refuses it (hsnet.deploy.check_canary:
    "must be a whole number between 0 and 100"), after fetch, crop, train, evaluate and register
    have run. Expectation by hand: a -1 typed with deploy on is refused by source-version, as any
    other share outside 0..100 (e.g. -2) is."""
    from components.fetch import source_version
    from hsnet.deploy import check_canary

    with pytest.raises(HSNetError):
        check_canary(-1)  # what the promote step does with the value typed
    raw = tmp_path / "raw"
    raw.mkdir()
    (raw / "a.png").write_bytes(b"x")
    asked = dict(source=str(raw), dvc_path="", dvc_rev="", params=_params(), dataset="sample", check_run=True,
                 crop_device="cpu", mlflow_tracking_uri="http://mlflow:5000", checkpoint_uri="", promote=True,
                 deploy=True)
    with pytest.raises(HSNetError, match="canary"):
        source_version.python_func(**asked, canary_percent=-2)  # the check itself works
    with pytest.raises(HSNetError, match="canary"):
        source_version.python_func(**asked, canary_percent=-1)


def test_a_gpu_group_refuses_stem_weights_changed_since_source_version(tmp_path, as_a_step):
    """components.convert.check_stem_version (today): "Refuse a training whose stem weights are no
    longer the ones source-version read (... this task's stem_version: its cache key): a training
    with weights uploaded meanwhile would be cached under the old weights' key and served to a later
    run that has them." train_model checks; the ablation's GPU groups (runs_per_gpu > 1,
    train_evaluate_group) take the same key (each runs item's ``stem_version``, "part of the cache key
    only") and never check, so a group trains on the new weights and is cached under the old key.
    Expectation by hand: the group step refuses, naming the change, before any training starts (the
    check is independent of where the weights are: a file here, s3:// alike)."""
    from kfp import dsl

    from components.convert import run_items
    from components.train_group import train_evaluate_group
    from hsnet.params import for_step

    params = _params()
    weights = tmp_path / "stem.pt"
    weights.write_bytes(b"the weights source-version read")
    params["datasets"]["sample"].setdefault("model", {}).update(ktl=True, stem_weights=str(weights))
    runs = run_items(params, "sample", [{"model": {"ktl": True}, "seed": 0}])  # source-version's run_items
    assert runs[0]["stem_version"]
    weights.write_bytes(b"other weights, uploaded meanwhile")

    def artifact(cls, name):
        a = cls(name=name, uri=f"file://{tmp_path / name}")
        a.path = str(tmp_path / name)
        return a

    crops = artifact(dsl.Dataset, "crops")
    (tmp_path / "crops").mkdir()
    with pytest.raises(HSNetError, match="changed since this run started"):
        train_evaluate_group.python_func(dataset="sample", params=for_step(params, "sample", "train", "evaluate"),
                                         mlflow_tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", crops=crops,
                                         runs=runs, models=artifact(dsl.Model, "models"),
                                         evaluations=artifact(dsl.Artifact, "evaluations"))
