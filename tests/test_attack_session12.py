"""Session 12 attack: findings at the boundaries of today's changes (the training folder lock, the
checked rollback, the stale-temporary cleaning, the suite under xdist, the cached validation).
Each test fails on the code it was written against; the lead fixes the code, not the test."""

from __future__ import annotations

import json
import os

import pytest
import yaml

from hsnet.io import only_writer


def test_a_refused_ablation_run_leaves_the_running_ones_params_yaml(tiny_data, tiny_params, tmp_path, monkeypatch):
    """hsnet.concurrent.train_and_evaluate writes NAME/params.yaml (the settings NAME/train/ is
    trained with) *before* its ``hsnet train`` is refused by the lock of a training still running in
    NAME/train. The refused group's settings then overwrite the running one's record: the finished
    model's folder says it was trained with settings it was not (wrong result, silently). A running
    ``hsnet train`` holds exactly ``only_writer(NAME/train, ...)``; the test holds the same lock."""
    from hsnet.concurrent import train_and_evaluate
    from hsnet.params import Params

    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "group"
    running = Params.resolve(tiny_params, "sample", {"train": {"max_epochs": 1, "num_threads": 1, "seed": 1}})
    other = Params.resolve(tiny_params, "sample", {"train": {"max_epochs": 1, "num_threads": 1, "seed": 2},
                                                   "model": {"dib": False}})
    (out / "run" / "train").mkdir(parents=True)
    (out / "run" / "params.yaml").write_text(yaml.safe_dump(running.to_file(), sort_keys=False))
    before = (out / "run" / "params.yaml").read_text()

    with only_writer(out / "run" / "train", "hsnet train", "wait"):  # the first group's training, still running
        records = train_and_evaluate(tiny_data, {"run": other}, out, device="cpu", track=False)
    assert records["run"]["returncode"] != 0 and "in use by another hsnet train" in records["run"]["output"]
    assert (out / "run" / "params.yaml").read_text() == before, "the refused run rewrote the running run's settings"
    assert json.loads((out / "runs.json").read_text()) == records


def test_a_refused_durable_training_puts_no_checkpoint_into_the_running_ones_folder(tiny_data, tiny_params,
                                                                                    s3_server, tmp_path, monkeypatch):
    """``hsnet train --checkpoint-uri`` (hsnet.durable.train) restores best.pt/last.pt from S3 into
    --out *before* hsnet.train.train takes the folder's lock. Into the folder of a training still
    running (its first epoch not done: no last.pt yet), a second, refused, durable run downloads
    another run's best.pt and last.pt, then fails with 'in use': the running training's folder now
    holds checkpoints it never wrote (the refused run was to leave it alone: 617b298's promise).
    A running ``hsnet train`` holds exactly ``only_writer(--out, ...)``; the test holds the same lock."""
    from servers import s3_env

    from hsnet import durable
    from hsnet.errors import HSNetError
    from hsnet.params import Params
    from hsnet.s3 import client

    for key, value in s3_env(s3_server).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    s3 = client()
    for name in ("best.pt", "last.pt"):  # another run's durable checkpoints
        s3.put_object(Bucket="hsnet", Key=f"attack12/other-run/{name}", Body=b"another run's " + name.encode())
    out = tmp_path / "running"
    out.mkdir()
    params = Params.resolve(tiny_params, "sample", {"train": {"max_epochs": 1, "num_threads": 1}})
    with only_writer(out, "hsnet train", "wait"):  # a training in its first epoch
        with pytest.raises(HSNetError, match="in use by another hsnet train"):
            durable.train(tiny_data, params, out, "s3://hsnet/attack12/other-run", device="cpu", track=False)
    assert sorted(p.name for p in out.iterdir()) == [], "the refused run wrote into the running one's folder"


@pytest.mark.slow  # the session's trained checkpoint (~60 s on 2 busy cores)
def test_a_rolled_back_version_is_not_promoted_again_by_the_next_plain_promote(local_mlflow, evaluated):
    """An incident: version 2 went to production, misbehaved, and ``hsnet promote --rollback`` put
    version 1 back (hsnet tags version 2 ``rolled_back_at``). The ``candidate`` alias still names
    version 2, so the next plain ``hsnet promote --name NAME`` (README's command; the pipeline's
    promote step) compares 2 with 1 again and puts the rolled-back version straight back in
    production: the rollback's tag is written but never read. Expected: refused (a rolled-back
    version needs --version/--force to go back), production stays on 1."""
    from mlflow import MlflowClient

    from hsnet.registry import PromotionRefused, promote, register, rollback

    client = MlflowClient(local_mlflow)
    name = "hsnet-sample-attack12"
    register(*evaluated(1)[:2], "sample", name=name)  # answers class 1: the minority of gate_data's test split
    assert promote(name)["production"] == 1
    register(*evaluated(0)[:2], "sample", name=name)  # answers class 0: most of the test split, better
    assert promote(name)["production"] == 2
    assert rollback(name)["production"] == 1
    assert "rolled_back_at" in client.get_model_version(name, "2").tags

    try:
        decision = promote(name)
    except PromotionRefused:
        decision = None
    assert str(client.get_model_version_by_alias(name, "production").version) == "1", (
        f"the plain promote after the rollback put the rolled-back version back: {decision}")


@pytest.mark.slow  # the session's trained checkpoint
def test_a_rollback_with_no_production_leaves_no_previous_alias_on_production(local_mlflow, evaluated, capsys):
    """Production's version was deleted (MLflow removes a deleted version's aliases), and the
    operator rolls back to ``previous``. hsnet moves ``production`` to it but leaves ``previous`` on
    that same version, and says "version None is now 'previous'" while the registry says the
    production version is. README: "The old production version keeps the alias previous"; here
    there is none, so ``previous`` should be gone (a later ``--rollback`` then says there is
    nothing to roll back to, instead of "'previous' is already production")."""
    from mlflow import MlflowClient

    from hsnet.cli import main
    from hsnet.registry import promote, register

    client = MlflowClient(local_mlflow)
    name = "hsnet-sample-attack12-noprod"
    register(*evaluated(1)[:2], "sample", name=name)
    assert promote(name)["production"] == 1
    register(*evaluated(0)[:2], "sample", name=name)
    assert promote(name)["production"] == 2
    client.delete_model_version(name, "2")  # the bad model, removed by an admin: no production now
    capsys.readouterr()
    assert main(["promote", "--name", name, "--rollback"]) in (0, None)
    said = capsys.readouterr().out
    assert str(client.get_model_version_by_alias(name, "production").version) == "1"
    previous = client.get_registered_model(name).aliases.get("previous")
    assert previous is None, f"'previous' still names version {previous}, now production; hsnet said: {said!r}"
    assert "version None" not in said, said


def test_validate_sees_an_image_replaced_by_a_file_of_the_same_size_and_time(tmp_path, monkeypatch):
    """hsnet validate's image cache is keyed by (path, size, mtime_ns) only. A photo replaced under
    its old name by a file of the same size and modification time (a re-extracted archive with
    normalised times, `tar --mtime`/SOURCE_DATE_EPOCH, `rsync -a`/`cp -p` of another copy; every
    same-dimension BMP/PPM has the same size) is not read again: the cached verdict (decodes, its
    sha256 for the cross-split duplicate check) of the old photo passes the new one. Here the new
    file does not even decode. Where the tool writes a new file (tar, rsync: a new inode), DVC sees
    the change (dvc_data's state key is inode, mtime and size: dvc_data/hashfile/state.py), re-runs
    validate, and gets the stale answer from hsnet's cache (no inode or ctime in its key). This test
    rewrites in place (same inode) to stay short; the cache's answer is the same."""
    from hsnet.data.datasets import import_dataset
    from hsnet.data.manifest import read_manifest
    from hsnet.data.sample import generate
    from hsnet.data.validate import ValidationFailed, validate

    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    raw, manifest = tmp_path / "raw", tmp_path / "manifest.csv"
    generate(raw, per_class=2, size=64, seed=7)
    import_dataset("sample", raw, manifest)
    assert validate(manifest, raw, "sample", tmp_path / "r1", progress=False)["success"]

    victim = raw / read_manifest(manifest)[0]["path"]
    st = victim.stat()
    victim.write_bytes(b"\0" * st.st_size)  # same size, not an image
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))  # same time, as the tools above leave it
    with pytest.raises(ValidationFailed, match="do not decode"):
        validate(manifest, raw, "sample", tmp_path / "r2", progress=False)
