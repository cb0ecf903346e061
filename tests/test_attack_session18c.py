"""Attack 18c: today's changes (mask_uri's '@', the gate's tta_hflip, the fp16 scaler, GPUs for
concurrent runs, crop's HSNET_DEVICE, schema_message, fetch's expect_version, one-home moves).
Each test fails on the code it was written against and passes once the defect is fixed."""

from __future__ import annotations

import urllib.parse

import pytest


# --- 1. mask_uri: a token given as the user, a port, and an '@' later in the URI --------------

@pytest.mark.parametrize("uri", [
    "http://tok3n@host:5000/runs/a@b",          # '@' in the path
    "https://tok3n@host:443/?user=a@b.org",     # '@' in a query value
    "http://tok3n@host:5000#/experiments/x@y",  # '@' in the fragment (MLflow UI links are '#/...')
])
def test_mask_uri_hides_a_token_when_the_host_has_a_port_and_an_at_follows(uri):
    """mask_uri's promise: a user part alone (``scheme://TOKEN@host``, a token sent as the user) is
    replaced by ``***``; "an '@' in the path is not" part of the user (the commit, and
    tests/registry/test_registry.py's case ``http://tok@host:5000/p``). urllib reads each of these
    as user ``tok3n`` at ``host`` with a port. With a port AND a later '@', the regex's user part
    runs on over ``@host`` (its look-ahead accepts the port's ':') and the port and path become the
    "password": the token is printed and the host eaten. Before today these were masked."""
    from hsnet.tracking import mask_uri

    parts = urllib.parse.urlsplit(uri)
    assert parts.username == "tok3n" and parts.hostname == "host"  # how urllib (and requests) read it
    shown = mask_uri(uri)
    assert "tok3n" not in shown, shown
    assert shown.startswith(f"{parts.scheme}://***@host:{parts.port}"), shown


# --- 4. visible_gpus: CUDA_VISIBLE_DEVICES as CUDA reads it ------------------------------------

@pytest.mark.parametrize("visible, cuda_sees", [
    ("0,1,abc", ["0", "1"]),  # not a number: CUDA (strtoul) stops there, as at "-1"
    ("0,1,7", ["0", "1"]),    # index 7 on a 2-GPU machine: invalid, CUDA stops there
])
def test_visible_gpus_stops_at_the_first_entry_cuda_finds_invalid(monkeypatch, visible, cuda_sees):
    """visible_gpus' promise: "those CUDA_VISIBLE_DEVICES names (as CUDA reads it: up to the first
    invalid entry)". CUDA's documentation (CUDA C++ Programming Guide, CUDA Environment Variables):
    "If one of the indices is invalid, only the devices whose index precedes the invalid index are
    visible to CUDA applications" (e.g. ``0,2,-1,1``: 0 and 2). torch's own reading
    (torch/cuda/__init__.py ``_parse_visible_devices`` with ``_strtoul``, and
    ``_device_count_nvml``, which stops at an ordinal >= the raw count) stops at "abc" and at 7.
    hsnet only stops at an empty entry or one starting with '-', so a third concurrent run gets
    ``CUDA_VISIBLE_DEVICES=abc``/``7``: no GPU at all, and ``hsnet train`` without --device then
    trains on the CPU (pick_device: "cuda" only when one is visible)."""
    import torch

    from hsnet.concurrent import visible_gpus

    monkeypatch.delenv("HSNET_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)  # a machine with 2 GPUs
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert visible_gpus() == cuda_sees


# --- 2. the gate's advice measures production as the candidate was: split included -----------

def test_the_refusals_evaluate_command_measures_on_the_candidates_split(local_mlflow):
    """The gate compares on "the same test data (the evaluation's data version and split) and with
    the same evaluate.tta_hflip" (README, promote; ``_measured``: "(test data version, split,
    evaluate.tta_hflip)"), and a refusal's commands are to measure production's checkpoint "as
    the candidate was" (the commit) so that the gate then finds that evaluation. A candidate
    evaluated on the val split (``hsnet evaluate --split val``, which register accepts) against
    production on test: the advised ``hsnet evaluate`` gives no ``--split``, so it measures on
    test (the CLI's default), the gate finds no evaluation on val and refuses again, forever."""
    import shlex
    from types import SimpleNamespace

    from hsnet.cli import build_parser
    from hsnet.registry import _not_comparable

    data = "sha256:0123456789abcdef"
    cand = SimpleNamespace(version="2", tags={})
    prod = SimpleNamespace(version="1", tags={"train_run_id": "0" * 32})
    p_fig = {"evaluation_run_id": "0" * 32, "checkpoint_file": "best.pt"}  # production's evaluation record
    reason = _not_comparable(cand, prod, p_fig, (data, "val", "False"), (data, "test", "False"))
    command = reason.split("then hsnet evaluate ", 1)[1].split(", tracked)")[0]
    command = command.replace("<the candidate's crops>", "crops")
    args = build_parser().parse_args(["evaluate", *shlex.split(command)])
    assert args.split == "val", command



def test_the_refusals_download_fetches_productions_checkpoint_not_a_later_best_of_its_run(
        quick_log_model, local_mlflow, trained, evaluated, gate_data, other_test_data, tmp_path):
    """The refusal's commands are to measure *production's checkpoint* on the candidate's data
    (README: "a tracked hsnet evaluate of production's checkpoint ... makes them comparable"); the
    gate then looks for an evaluation of production's checkpoint_sha256. The download names the
    training run's ``checkpoint/best.pt``, which hsnet.train ``_finish`` logs again at the end of
    every invocation of that run: a run stopped early (``--max-epochs``), its best.pt
    registered and promoted, then resumed (``--resume`` continues the same MLflow run; train.epochs
    is a resumable change) overwrites it with a later best. The advice then measures another
    checkpoint, the gate finds nothing and refuses again with the same advice. The evaluation run
    the gate itself trusts keeps the very bytes it measured (hsnet.evaluate: ``checkpoint/<name>``,
    "the bytes evaluated")."""
    import hashlib
    import re
    import shutil

    import mlflow
    import torch

    from hsnet import tracking
    from hsnet.evaluate import evaluate
    from hsnet.registry import PromotionRefused, promote, register

    # production's checkpoint, as a tracked training run R wrote it (meta names R; _finish logs best.pt)
    mlflow.set_tracking_uri(local_mlflow)
    mlflow.set_experiment(tracking.EXPERIMENT)
    with mlflow.start_run(tags={"step": "train"}) as train_run:
        pass
    ckpt = torch.load(trained["checkpoint"], weights_only=True)
    ckpt["meta"]["mlflow_run_id"] = train_run.info.run_id
    prod_ckpt = tmp_path / "prod" / "best.pt"
    prod_ckpt.parent.mkdir()
    torch.save(ckpt, prod_ckpt)
    client = mlflow.MlflowClient(local_mlflow)
    client.log_artifact(train_run.info.run_id, str(prod_ckpt), "checkpoint")
    evaluate(prod_ckpt, gate_data, tmp_path / "prod-eval", progress=False)
    register(prod_ckpt, tmp_path / "prod-eval" / "metrics.json", "sample")
    assert promote("hsnet-sample")["production"] == 1
    # the run resumed later: its end logs the newer best.pt at the same artifact path
    ckpt["state"]["epoch"] += 1
    newer = tmp_path / "resumed" / "best.pt"
    newer.parent.mkdir()
    torch.save(ckpt, newer)
    client.log_artifact(train_run.info.run_id, str(newer), "checkpoint")

    cand_ckpt, cand_metrics, _ = evaluated(0, data=other_test_data)
    register(cand_ckpt, cand_metrics, "sample")
    with pytest.raises(PromotionRefused) as refused:
        promote("hsnet-sample")
    download = re.search(r"mlflow artifacts download -r (\S+) -a (\S+) -d (\S+),", str(refused.value))
    assert download, str(refused.value)
    got = mlflow.artifacts.download_artifacts(run_id=download[1], artifact_path=download[2],
                                              dst_path=str(tmp_path / download[3]))
    want = hashlib.sha256(prod_ckpt.read_bytes()).hexdigest()
    assert hashlib.sha256(open(got, "rb").read()).hexdigest() == want, "the advice measures another checkpoint"
    shutil.rmtree(tmp_path / download[3])


# --- 7. fetch: a DVC repository URL that carries a token ----------------------------------------

def test_fetch_errors_never_print_a_dvc_repositorys_token(tmp_path, monkeypatch):
    """docs/security.md, Credentials: "Every URI hsnet prints goes through one rule,
    hsnet.tracking.mask_uri (a password, a user part alone such as https://TOKEN@host ...)". A
    private DVC repository is commonly given as ``https://oauth2:TOKEN@gitlab.example.com/...``
    (the Kubeflow pipeline's ``source`` parameter, ``hsnet data fetch --source``). fetch's and
    source_version's refusals print ``source`` as given, and dvc's own stderr with it: the token is
    in the error (a pod's log, the terminal). The check moved into fetch today
    (``expect_version``: "the data at {source} changed ...") prints it the same way."""
    from hsnet.data.fetch import fetch, source_version
    from hsnet.errors import HSNetError

    monkeypatch.setenv("GIT_TERMINAL_PROMPT", "0")
    source = "https://oauth2:s3cr3t-t0ken@127.0.0.1:9/group/data.git"  # nothing listens on port 9
    with pytest.raises(HSNetError) as listed:
        source_version(source, dvc_path="data/raw")
    assert "s3cr3t-t0ken" not in str(listed.value), str(listed.value)
    with pytest.raises(HSNetError) as fetched:
        fetch(source, tmp_path / "out", dvc_path="data/raw", progress=False)
    assert "s3cr3t-t0ken" not in str(fetched.value), str(fetched.value)
