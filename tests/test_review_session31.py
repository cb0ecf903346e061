"""Session 31: leftovers of earlier notes, each written as a failing test first."""

from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.slow


def _train_out_of_memory_at(epoch: int, tiny_data, tiny_params, out, monkeypatch, capsys) -> str:
    """``hsnet train`` whose ``epoch`` runs out of GPU memory; its stderr."""
    from hsnet import cli, train

    real = train.train_one_epoch

    def one_epoch(model, split, tp, setup, optimizer, number, *args, **kwargs):
        if number >= epoch:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB.")
        return real(model, split, tp, setup, optimizer, number, *args, **kwargs)

    monkeypatch.setattr(train, "train_one_epoch", one_epoch)
    rc = cli.main(["train", "--data", str(tiny_data), "--dataset", "sample", "--params", str(tiny_params),
                   "--out", str(out), "--device", "cpu", "--no-mlflow"])
    assert rc == 2
    return capsys.readouterr().err


def test_out_of_memory_in_the_first_epoch_does_not_point_at_a_checkpoint_that_is_not_there(
        tiny_data, tiny_params, tmp_path, monkeypatch, capsys):
    """The out-of-memory hint said "last.pt holds the last finished epoch (add --resume ...)" when no
    epoch had finished and there was no last.pt (a left-over of session 26's note)."""
    out = tmp_path / "run"
    err = _train_out_of_memory_at(1, tiny_data, tiny_params, out, monkeypatch, capsys)
    assert not (out / "last.pt").exists()
    assert "holds the last finished epoch" not in err
    assert "no epoch finished" in err and "batch_size" in err


def test_out_of_memory_after_an_epoch_points_at_its_checkpoint(tiny_data, tiny_params, tmp_path, monkeypatch,
                                                               capsys):
    out = tmp_path / "run"
    err = _train_out_of_memory_at(2, tiny_data, tiny_params, out, monkeypatch, capsys)
    assert (out / "last.pt").is_file()
    assert f"{out / 'last.pt'} holds the last finished epoch" in err and "--resume" in err


def test_behind_a_server_a_plain_path_artifact_location_this_machine_lacks_is_refused(tmp_path, monkeypatch):
    """26b's case with the location as a plain path, not a ``file:`` URI: a tracking server started
    with ``--default-artifact-root /srv/mlruns`` (no scheme, the old way), or an experiment made
    with ``artifact_location="/srv/..."``. MLflow's client writes such a location's artifacts to
    its own disk, as it does a ``file:`` one (a left-over of sessions 26-30: "plain-path experiment
    locations are unchecked"). Expected: refused, naming the location, and nothing made here."""
    import mlflow

    from servers import refused_run, start_mlflow

    workdir = tmp_path / "server"
    workdir.mkdir()
    elsewhere = tmp_path / "the-server-machine" / "srv" / "mlruns"
    mlflow.MlflowClient(tracking_uri=f"sqlite:///{workdir / 'server.db'}").create_experiment(
        "hsnet", artifact_location=str(elsewhere))
    mlflow.set_tracking_uri(None)
    server = start_mlflow(workdir, str(tmp_path / "served"))
    try:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", server.url)
        location = mlflow.MlflowClient().get_experiment_by_name("hsnet").artifact_location
        assert "://" not in location and not location.startswith("file:"), location  # a plain path, as given
        message = refused_run(f"{elsewhere} on the client's disk")
        assert str(elsewhere) in message and "rename" in message.lower(), message
        assert not elsewhere.parent.exists(), f"{elsewhere.parent} was created on the client"
    finally:
        server.stop()
