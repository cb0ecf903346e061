"""Session 12 attack: findings at the boundaries of today's changes (the training folder lock, the
checked rollback, the stale-temporary cleaning, the suite under xdist, the cached validation).
Each test fails on the code it was written against; the lead fixes the code, not the test."""

from __future__ import annotations

import json

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
    import pytest
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
