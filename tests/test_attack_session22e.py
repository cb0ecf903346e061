"""Attack, session 22e: today's fixes to resumed training (hsnet.train), the registry and the model
cache (hsnet.registry, hsnet.predict, hsnet.tracking).

Each test fails on the code as it stands and passes once the defect its docstring names is fixed.
The data are the suite's own (the ``tiny_data`` fixture of
tests/conftest.py: the tiny sample on the CPU, a few seconds an epoch).
"""

from __future__ import annotations

import shutil

import pytest
import torch

from hsnet.checkpoint import load
from hsnet.errors import HSNetError
from hsnet.params import Params
from hsnet.train import train

pytestmark = pytest.mark.slow


def _params(params_path, overrides=None) -> Params:
    return Params.resolve(params_path, "sample", overrides)


@pytest.fixture
def quiet(tmp_path, monkeypatch):
    """The tensor cache in this test's folder, no MLflow, no progress bars."""
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    return dict(track=False, progress=False)


SETTINGS = """
datasets:
  sample:
    input_size: 80
    model: {{ktl: false}}
    train: {{lr: 0.001, epochs: 4, batch_size: 16, seed: {seed}, scheduler: {{patience: 1}}}}
"""
SEEDS = (3, 0, 1, 2, 5, 6, 7, 8, 9)  # 3 first (its trajectory on the CPUs these tests were written on); not 4


@pytest.fixture(scope="module")
def two_epochs(tiny_data, tmp_path_factory):
    """Two epochs of a 4-epoch training of the tiny sample whose epoch 2 improves on epoch 1 and
    epoch 3 does not, its epoch-1 best.pt kept aside as ``best-e1.pt``. Which seed gives that
    trajectory depends on the CPU (another one sums in another order: seed 3 did on the machines
    these tests were written on, not on a 2026-12-03 Intel Xeon), so the first of ``SEEDS`` that
    does is found here, by training it, rather than assumed."""
    base = tmp_path_factory.mktemp("att22e-two-epochs")
    path = base / "params.yaml"
    mp = pytest.MonkeyPatch()
    mp.setenv("HSNET_CACHE_DIR", str(base / "cache"))
    try:
        for seed in SEEDS:
            path.write_text(SETTINGS.format(seed=seed))
            out = base / f"run-{seed}"
            train(tiny_data, _params(path), out, stop_after_epochs=1, track=False, progress=False)
            shutil.copyfile(out / "best.pt", base / "best-e1.pt")
            train(tiny_data, _params(path), out, resume=True, stop_after_epochs=1, track=False, progress=False)
            if load(out / "last.pt")["state"]["best_epoch"] != 2:
                continue
            third = base / f"third-{seed}"  # epoch 3 on a copy: the fixture's run stays at two epochs
            shutil.copytree(out, third)
            train(tiny_data, _params(path), third, resume=True, stop_after_epochs=1, track=False, progress=False)
            if load(third / "last.pt")["state"]["best_epoch"] == 2:
                break
        else:
            pytest.fail(f"none of the seeds {SEEDS} improves at epoch 2 and not at epoch 3 on this machine")
        yield {"params": path, "run": out, "best-e1": base / "best-e1.pt", "seed": seed}
    finally:
        mp.undo()


def test_a_best_pt_of_another_training_with_the_same_epoch_number_is_not_kept(tiny_data, two_epochs, tmp_path,
                                                                              quiet):
    """save_epoch: "Stopped between the two [writes], ``last.pt`` names as best its own epoch, whose
    weights it holds: :func:`resume_from` writes ``best.pt`` from it (:func:`_best_as_recorded`)";
    _best_as_recorded: "either way what the run reports is what it holds".

    ``dvc repro`` after a settings change (here the seed) trains into the same ``--out`` from the
    start ("other data, settings or code"); the earlier training's ``best.pt`` stays there until the
    new one's first improvement writes it. Killed between the new ``last.pt`` and its ``best.pt``
    (the window save_epoch's docstring is about), the next ``dvc repro`` resumes, and
    _best_as_recorded compares only epoch *numbers*: the old training's best.pt, of the same epoch
    number as the new best, is taken for the new training's. The run then reports best epoch 1 of
    the new settings, and best.pt (what evaluate, register and serving take) holds the old
    settings' weights. The kill is simulated by placing the new training's epoch-1 last.pt beside
    the old best.pt, exactly the files such a kill leaves."""
    out, other = tmp_path / "run", tmp_path / "other"
    settings = two_epochs["params"]
    out.mkdir()
    shutil.copyfile(two_epochs["best-e1"], out / "best.pt")  # the earlier training's (another seed): epoch 1
    train(tiny_data, _params(settings, {"train": {"seed": 4}}), other, stop_after_epochs=1, **quiet)  # the new one
    shutil.copyfile(other / "last.pt", out / "last.pt")  # killed before epoch 1's best.pt was written
    assert load(out / "best.pt")["state"]["epoch"] == load(out / "last.pt")["state"]["best_epoch"] == 1

    summary = train(tiny_data, _params(settings, {"train": {"seed": 4, "max_epochs": 1}}), out, resume=True,
                    **quiet)

    best, last = load(out / "best.pt"), load(out / "last.pt")
    assert summary["best_epoch"] == last["state"]["epoch"] == 1
    assert best["meta"]["params"]["train"]["seed"] == 4, (
        f"best.pt is the earlier training's (seed {two_epochs['seed']}), kept as the resumed seed-4 training's "
        "best epoch 1")
    for key, tensor in last["model"].items():
        assert torch.equal(best["model"][key], tensor), f"best.pt's {key} is not the best (= last) epoch's"


def test_a_guard_verdict_survives_an_edit_that_training_does_not_read(tiny_data, tmp_path, quiet, monkeypatch):
    """hsnet.train._keep_verdict: a retry "or the next ``dvc repro``, ends with it at once
    (:func:`_earlier_verdict`) instead of training again to the same verdict"; _verdict_key:
    "What makes a training reach the same verdict again: its data, settings, code ...". Today's
    fix (_read_by_train) made ``--resume auto`` treat a training whose evaluate/import/validate
    settings changed as the *same* training ("an edit to evaluate's or import's settings is not
    one to it"); dvc.yaml's train stage depends on ``defaults``, so an edit of
    ``defaults.evaluate`` re-runs it.

    The verdict's key still hashes the whole params mapping (evaluate's settings too), so after
    such an edit the verdict is deleted as "another training's" and the stage loads the data and
    trains to the very same verdict again (minutes for RAF-DB, more for FERG-DB), which the verdict
    exists to prevent."""
    path = tmp_path / "params.yaml"
    path.write_text("""
datasets:
  sample:
    input_size: 80
    model: {ktl: false}
    train: {lr: 30, epochs: 3, batch_size: 16, seed: 3, num_threads: 1}
""")
    out = tmp_path / "run"
    with pytest.raises(HSNetError, match="after epoch 1"):
        train(tiny_data, _params(path), out, resume="auto", **quiet)
    assert (out / "verdict.json").is_file()

    edited = _params(path, {"evaluate": {"tta_hflip": True}})  # read by evaluate alone
    assert edited.train == _params(path).train and edited.model == _params(path).model

    import hsnet.train

    def refuse(*args, **kwargs):
        raise AssertionError("the data was loaded: the training is run again to the verdict it already reached")

    monkeypatch.setattr(hsnet.train, "load_split", refuse)
    with pytest.raises(HSNetError, match=r"earlier attempt .* stopped at epoch 1"):
        train(tiny_data, edited, out, resume="auto", **quiet)


from tests.test_attack_session22c import NAME, read_only, store  # noqa: E402,F401 - the same registered store (a fixture)


def test_a_damaged_copy_in_a_read_only_model_cache_is_named_as_such(store, tmp_path, monkeypatch):
    """hsnet.model_copies.fetch_model (today): "a read-only cache holding the whole copy (a volume
    filled before)": "its copy used as it is"; an unwritable cache is named: "set HSNET_CACHE_DIR
    to a writable folder". hsnet.predict._checked_copy (today): "A copy damaged on this disk (the
    registry's files intact) is downloaded again, not refused for ever".

    Both fixes meet when the read-only cache's copy differs from the registry's files (a volume
    filled from another copy, a file changed on it): _checked_copy finds the registry's files
    intact and calls discard_copy, which opens ``<cache>/.lock`` for appending on the read-only
    volume. The OSError (EROFS) is reported by load_classifier as "can't load it from MLflow ...
    Check the name and alias (hsnet promote) and MLFLOW_TRACKING_URI": the name, the alias and the
    server are fine; the cache is what to fix. Expected: the model is loaded from the registry's
    files (a download elsewhere), or an error naming the cache (HSNET_CACHE_DIR), as fetch_model's
    own refusal of a read-only cache does. Needs a read-only bind mount (root); skipped otherwise."""
    from hsnet.predict import load_classifier

    cache = tmp_path / "cache"
    monkeypatch.setenv("HSNET_CACHE_DIR", str(cache))
    load_classifier(f"models:/{NAME}/1", device="cpu")  # the whole copy, in the cache
    (copy,) = [p for p in (cache / "models").glob("*/*") if p.is_dir() and not p.name.startswith(".")]
    with open(copy / "requirements.txt", "a", encoding="utf-8") as f:  # the copy on this disk changed
        f.write("# changed on this disk\n")
    with read_only(cache):
        try:
            clf = load_classifier(f"models:/{NAME}/1", device="cpu")
        except HSNetError as exc:
            assert "HSNET_CACHE_DIR" in str(exc) and "Check the name and alias" not in str(exc), (
                f"a read-only cache holding a changed copy, reported as: {exc}")
        else:
            assert clf.classes


def _store_folder(client, name: str, version):
    """Where the artifact store (a local folder here) holds a version's model files."""
    from pathlib import Path
    from urllib.parse import unquote, urlparse

    mv = client.get_model_version(name, str(version))
    location = client.get_logged_model(mv.source.removeprefix("models:/")).artifact_location
    return Path(unquote(urlparse(location).path))


def test_a_best_pt_repaired_after_a_cut_off_upload_reaches_the_prefix(tiny_data, two_epochs, tmp_path, quiet,
                                                                      s3_server, monkeypatch):
    """hsnet/durable.py: "a ``best.pt`` upload cut off leaves a ``last.pt`` whose best epoch the
    prefix's ``best.pt`` doesn't hold, which the resumed training repairs
    (:func:`hsnet.train._best_as_recorded`)"; the Uploader: "``best.pt`` goes with the ``last.pt``
    it belongs to".

    The repair is made in the pod's local folder only: the Uploader uploads best.pt only when an
    epoch *improved* since its last upload, and a best.pt rewritten by the resume is not one. So
    the retried pod's next upload puts a last.pt naming epoch 2 as best beside the prefix's
    epoch-1 best.pt, the very state the repair was for, and for good (until an epoch improves). If
    that pod is killed too, the next retry's _best_as_recorded finds epoch 1 in the history and
    makes it "the best from here on": epoch 2's weights, repaired once, are lost, and the run
    reports a worse best epoch. The prefix is given what an attempt killed after epoch 2's
    last.pt upload, during its best.pt upload, leaves: epoch 2's last.pt and epoch 1's best.pt.
    The fixture's seed is one whose epoch 2 improves on epoch 1 and whose epoch 3 does not."""
    from hsnet import durable
    from hsnet.s3 import client, split_uri
    from servers import s3_env

    for key, value in s3_env(s3_server).items():
        monkeypatch.setenv(key, value)
    uri = "s3://hsnet/checkpoints/att22e-repair/sample"
    s3 = client()
    assert load(two_epochs["run"] / "last.pt")["state"]["best_epoch"] == 2
    for name, path in (("last.pt", two_epochs["run"] / "last.pt"), ("best.pt", two_epochs["best-e1"])):
        bucket, key = split_uri(f"{uri}/{name}")
        s3.upload_file(str(path), bucket, key)

    pod = tmp_path / "pod2"  # the retried pod, on another node: restores from the prefix
    durable.train(tiny_data, _params(two_epochs["params"]), pod, uri, min_interval_s=0, stop_after_epochs=1,
                  **quiet)
    assert load(pod / "best.pt")["state"]["epoch"] == 2  # repaired locally
    last = load(pod / "last.pt")["state"]
    assert last["epoch"] == 3 and last["best_epoch"] == 2, last["history"]
    bucket, key = split_uri(f"{uri}/last.pt")
    assert s3.head_object(Bucket=bucket, Key=key)["ContentLength"] == (pod / "last.pt").stat().st_size  # went up
    bucket, key = split_uri(f"{uri}/best.pt")
    s3.download_file(bucket, key, str(tmp_path / "prefix-best.pt"))
    held = load(tmp_path / "prefix-best.pt")["state"]["epoch"]
    assert held == last["best_epoch"], (
        f"the prefix's last.pt names epoch {last['best_epoch']} as best; its best.pt holds epoch {held} "
        "(the repair was never uploaded)")


def test_a_restore_cut_off_after_last_pt_is_completed_by_the_next_attempt(two_epochs, tmp_path, s3_server,
                                                                          monkeypatch):
    """hsnet/durable.py: "The local ``--out`` stays the working copy: when it already holds a
    ``last.pt`` (the same machine, restarted) that copy is used; otherwise the prefix's copies are
    downloaded"; restore: "Bring ``best.pt``/``last.pt`` ... from the prefix".

    Today's reorder (FILES = (LAST, BEST), "upload order, as train writes them") is also restore's
    download order. A restore cut off after ``last.pt`` landed (a read timeout, a throttled GET,
    the process killed) now leaves ``--out`` holding a ``last.pt`` without its ``best.pt``; the
    next attempt into the same ``--out`` (``hsnet.durable.train`` again, as the error invites)
    takes it for a local working copy and downloads nothing. The resumed training then finds no
    best.pt and, when the best epoch is not the last, declares the best epoch's weights "gone" and
    the last epoch the best (_best_as_recorded), although the prefix holds them. (Downloading
    best.pt first, as before today, or last.pt only once the rest is in place, leaves no such
    state.) The cut-off GET is simulated by a client whose best.pt download fails once."""
    from botocore.exceptions import ClientError

    import hsnet.s3
    from hsnet import durable
    from hsnet.s3 import split_uri
    from servers import s3_env

    for key, value in s3_env(s3_server).items():
        monkeypatch.setenv(key, value)
    uri = "s3://hsnet/checkpoints/att22e-restore/sample"
    real = hsnet.s3.client
    s3 = real()
    for name, path in (("last.pt", two_epochs["run"] / "last.pt"), ("best.pt", two_epochs["run"] / "best.pt")):
        bucket, key = split_uri(f"{uri}/{name}")
        s3.upload_file(str(path), bucket, key)

    class CutOff:  # the real client, but for one best.pt GET that never completes
        def __init__(self):
            self.inner, self.failed = real(), False

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def download_file(self, bucket, key, dest, *args, **kwargs):
            if key.endswith("best.pt") and not self.failed:
                self.failed = True
                raise ClientError({"Error": {"Code": "RequestTimeout", "Message": "cut off"}}, "GetObject")
            return self.inner.download_file(bucket, key, dest, *args, **kwargs)

    cut = CutOff()
    monkeypatch.setattr(hsnet.s3, "client", lambda *a, **k: cut)
    out = tmp_path / "out"
    with pytest.raises(HSNetError, match="best.pt"):
        durable.restore(uri, out)
    durable.restore(uri, out)  # the next attempt, into the same --out
    assert (out / "best.pt").is_file(), (
        f"{out} holds {sorted(p.name for p in out.iterdir())}: last.pt without the best.pt the prefix has")


def test_a_version_registered_with_validation_figures_is_not_promoted(store, trained, tmp_path, monkeypatch):
    """README: "Only figures on the test split are registered (an ``evaluate --split val`` or
    ``train`` measures images the model was selected or trained on, and is refused by name)";
    commit a27f460: "a val/train evaluation's figures would be shown as test accuracy and could
    reach production on a first promotion"; ``promote`` "moves ``production`` to the candidate only
    if its *test* metric beats production's".

    The fix refuses such a registration, but the registry keeps the versions hsnet registered
    before it, which ``promote`` still takes: with no production yet (the first promotion) a
    candidate whose only figures are validation accuracy becomes production, tagged as test
    accuracy. Promotion reads the evaluation run (its ``split`` param) anyway, so it can refuse
    it by name. The older registration is made here by the current ``register`` with its split
    check pointed at ``val`` (``hsnet.registry.TEST``), which is what hsnet before a27f460 did."""
    import mlflow

    import hsnet.registry
    from hsnet.evaluate import evaluate
    from hsnet.registry import promote, register

    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{store['base'] / 'mlflow.db'}")
    monkeypatch.chdir(store["base"])
    name = NAME + "-val"
    evaluate(trained["checkpoint"], trained["data"], tmp_path / "eval-val", split="val", progress=False)
    with monkeypatch.context() as older:  # hsnet before a27f460: any split registered
        older.setattr(hsnet.registry, "TEST", "val")
        got = register(trained["checkpoint"], tmp_path / "eval-val" / "metrics.json", "sample", name=name)
    client = mlflow.MlflowClient()
    assert client.get_model_version(name, str(got["version"])).tags["test_split"] == "val"
    try:
        decision = promote(name)
    except HSNetError as exc:
        assert "val" in str(exc), str(exc)
    else:
        assert not decision.get("promoted"), (
            f"version {got['version']}, measured on the validation split only, became production: {decision}")

