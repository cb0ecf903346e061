"""Attack session 17d: today's fixes (a7116f9..HEAD) read against what they promise.

Each test fails on the code as it stands (9574265) and passes once the defect it names is fixed.
No GPU, no cluster, no MLflow server: deploy plans are pure functions of the live object, the
registry is a local sqlite store filled with the records hsnet evaluate / register write, the
HTTPS tracking server is 17b's self-signed loopback one.
"""

from __future__ import annotations


import pytest
from isvc import image_of as _image, live_isvc as _live


# --- 1. a rollout from an older hsnet puts a newer release's serving image back to its own ---------

def test_a_rollout_does_not_downgrade_a_newer_releases_serving_image():
    """hsnet/deploy.py ``_release_image`` (4f74357): "this release's SERVE_IMAGE where the live one
    is another tag of its repository (an **earlier** release's first deploy made it: its hsnet may
    not read the checkpoints this release trains ...)". The check is only "same repository, other
    tag", so a LATER release's image is replaced by this (older) one: a team member, or a CI
    job, whose hsnet is 0.1.0 runs ``hsnet promote --deploy`` against the InferenceService that
    the 0.2.0 pipeline deployed, and the rollout swaps hsnet-serve:0.2.0 for hsnet-serve:0.1.0.
    The canary pods of the older server then get the versions the 0.2.0 pipeline trains (a newer
    checkpoint format: hsnet/checkpoint.py ``OtherFormat``: "upgrade hsnet where it is read (...
    the serving image ...)"), and the server's fixes are rolled back. Before 4f74357 the live
    image was kept. Expected: a newer release's image is not replaced by an older one."""
    from hsnet import __version__
    from hsnet.deploy import SERVE_IMAGE, plan_rollout

    major, minor, patch = (int(p) for p in __version__.split(".")[:3])
    newer = f"{SERVE_IMAGE.rsplit(':', 1)[0]}:{major}.{minor + 1}.0"
    plan = plan_rollout(_live(newer), "models:/hsnet-rafdb/8", name="hsnet-rafdb", namespace="models",
                        canary_percent=10)
    assert _image(plan["object"]) == newer, (plan.get("note"), _image(plan["object"]))


# --- 2. a rollback after the rollout that changed the serving image keeps the new image ------------

def test_a_rollback_after_a_rollout_that_replaced_the_serving_image_does_not_keep_the_new_image_unsaid():
    """4f74357: a rollout replaces an earlier release's serving image with this release's. README:
    "``--rollback --deploy`` stops a running canary (``canaryTrafficPercent: 0``) or rolls the
    model back"; docs: the previous version comes back. After the image swap is at 100% (the
    README's ``--canary-percent 100`` step), ``plan_rollback`` (``set_model(current, model_uri,
    None)``) points the InferenceService back at the previous version but leaves the NEW image:
    the old version never ran there. It was trained by the earlier release, whose checkpoint
    format this release may refuse (hsnet/checkpoint.py ``OtherFormat``: "an older hsnet ...
    train it again"; FORMAT changed before, 1 -> 2), in which case KServe keeps the traffic on
    the last ready revision, the bad version, and the rollback, the one step meant to be safe,
    does nothing. The rollout knew the image it replaced and recorded it nowhere. Expected: the
    rollback brings back the image the version was served with, or at least says it doesn't."""
    from hsnet.deploy import SERVE_IMAGE, plan_rollback, plan_rollout

    older = SERVE_IMAGE.rsplit(":", 1)[0] + ":0.0.9"
    live = _live(older, "models:/hsnet-rafdb/7")
    canary = plan_rollout(live, "models:/hsnet-rafdb/8", name="hsnet-rafdb", namespace="models", canary_percent=10)
    assert _image(canary["object"]) == SERVE_IMAGE  # today's fix
    full = plan_rollout(canary["object"], "models:/hsnet-rafdb/8", name="hsnet-rafdb", namespace="models",
                        canary_percent=100)
    back = plan_rollback(full["object"] or canary["object"], "models:/hsnet-rafdb/7", name="hsnet-rafdb",
                         namespace="models")
    assert _image(back["object"]) == older or older in str(back), (_image(back["object"]), back.get("note"))


# --- registry records made with MLflow's client (what hsnet evaluate / register write), no training -

def _store(local_mlflow):
    import mlflow

    from hsnet import tracking

    mlflow.set_tracking_uri(local_mlflow)
    client = mlflow.MlflowClient()
    exp = client.get_experiment_by_name(tracking.EXPERIMENT)
    return client, exp.experiment_id if exp else client.create_experiment(tracking.EXPERIMENT)


def _evaluation(local_mlflow, sha: str, data_version: str, accuracy: float, *, split="test", logged_twice=False):
    """A finished ``hsnet evaluate`` run's record: tags, params and one value of each metric."""
    import time

    import tempfile
    from pathlib import Path

    client, exp = _store(local_mlflow)
    run = client.create_run(exp, tags={"step": "evaluate", "dataset": "sample"})
    rid = run.info.run_id
    for k, v in {"checkpoint": "runs/sample/train/best.pt", "checkpoint_sha256": sha,
                 "test_data_version": data_version, "split": split, "tta_hflip": "False"}.items():
        client.log_param(rid, k, v)
    with tempfile.TemporaryDirectory() as tmp:  # the bytes evaluated, as hsnet evaluate logs them
        (Path(tmp) / "best.pt").write_bytes(f"weights {sha}".encode())
        client.log_artifact(rid, str(Path(tmp) / "best.pt"), artifact_path="checkpoint")
    for k in ("test_accuracy", "test_mean_accuracy"):
        client.log_metric(rid, k, accuracy)
        if logged_twice:
            client.log_metric(rid, k, accuracy + 0.5)
    client.set_terminated(rid, "FINISHED")
    time.sleep(0.01)  # start times differ: "the newest" is well defined
    return rid


def _version(local_mlflow, name: str, sha: str, evaluation: str, *, files_recorded=True) -> str:
    """A registered version as hsnet register leaves it: registration run params (checkpoint sha256,
    evaluation run, the model files' digest), the version tagged with the sha256."""
    import mlflow

    from hsnet import registry

    client, exp = _store(local_mlflow)
    run = client.create_run(exp, tags={"step": "register"})
    rid = run.info.run_id
    client.log_text(rid, "stand-in for the pyfunc model", "model/MLmodel")
    uri = f"runs:/{rid}/model"
    client.log_param(rid, "checkpoint_sha256", sha)
    client.log_param(rid, "evaluation_run_id", evaluation)
    if files_recorded:
        client.log_param(rid, registry.MODEL_FILES_PARAM, registry._download_digest(uri))
    client.set_terminated(rid, "FINISHED")
    try:
        client.get_registered_model(name)
    except mlflow.exceptions.MlflowException:
        client.create_registered_model(name)
    mv = client.create_model_version(name, source=uri, run_id=rid, tags={"checkpoint_sha256": sha})
    return mv.version


# --- 3. promote --force fails on an altered evaluation of production it picked by itself ------------

def test_promote_force_still_promotes_when_productions_newest_evaluation_on_the_candidates_data_is_altered(
        local_mlflow):
    """9574265: when the two versions were tested on different data, promote looks up the newest
    evaluation of production's checkpoint on the candidate's data (``_newest_evaluation``) and reads
    it with ``_figures``, OUTSIDE the ``try/except NoEvaluation`` that turns a missing or broken
    record into a refusal. ``_figures`` raises NoEvaluation for a record "changed after the
    evaluation" (a metric logged twice) or an older evaluate that lacks a metric, so promote ends
    in that error: without ``--force`` instead of the refusal ("... Production is unchanged; use
    --force to promote anyway"), and WITH ``--force`` too. The docstring: "Raises PromotionRefused
    ... when the two were tested on different data, or when either has no evaluation record,
    unless ``force``"; docs/security.md: such a version "is refused unless --force". Before
    9574265 the same store gave "not comparable", and --force promoted. Expected: --force promotes
    (recorded as forced)."""
    from hsnet.registry import promote

    name = "hsnet-sample"
    prod_sha, cand_sha = "a" * 64, "b" * 64
    old_data, new_data = "sha256:" + "1" * 16, "sha256:" + "2" * 16
    v1 = _version(local_mlflow, name, prod_sha, _evaluation(local_mlflow, prod_sha, old_data, 0.5))
    assert promote(name, version=v1)["production"] == int(v1)
    v2 = _version(local_mlflow, name, cand_sha, _evaluation(local_mlflow, cand_sha, new_data, 0.9))
    _evaluation(local_mlflow, prod_sha, new_data, 0.5, logged_twice=True)  # production on the new data, altered
    decision = promote(name, version=v2, force=True)
    assert decision["promoted"] and decision["forced"] and decision["production"] == int(v2), decision


# --- 4. the "same checkpoint as production" shortcut lets an UNCHECKED version past the gate --------

def test_an_unchecked_version_of_productions_checkpoint_does_not_skip_the_gate(local_mlflow):
    """4f74357: ``same`` (the candidate's registration run names production's checkpoint sha256)
    promotes without a gate. Its comment and docs/security.md give the reason: "production's own
    checkpoint, registered again (**its files now recorded**)", "register its checkpoint again (a
    new version, with the digest ...) and promote that one". Nothing checks that the candidate is
    that version: the OLD version, registered before files were recorded (check_model_files:
    "its files can't be checked", a warning, and promote goes on), is let through too, replacing
    a checked production with an unchecked copy and ignoring ``--min-delta``. Before 4f74357 it
    met the gate like any version (the same figures: refused by a positive --min-delta).
    Expected: a version whose files can't be checked gets no shortcut past the gate."""
    from hsnet.registry import PromotionRefused, promote

    name = "hsnet-sample"
    sha, data = "c" * 64, "sha256:" + "3" * 16
    evaluation = _evaluation(local_mlflow, sha, data, 0.7)
    old = _version(local_mlflow, name, sha, evaluation, files_recorded=False)  # an older hsnet's registration
    checked = _version(local_mlflow, name, sha, evaluation)  # registered again: files recorded
    assert promote(name, version=checked)["production"] == int(checked)
    try:
        decision = promote(name, version=old, min_delta=0.05)
    except PromotionRefused:
        return  # the gate: the same figures don't beat production by 0.05
    assert not decision.get("promoted"), decision


# --- 5. promote --rollback --deploy --dry-run without a cluster: "use --dry-run" --------------------

def test_a_rollback_dry_run_without_a_cluster_does_not_answer_use_dry_run(local_mlflow, tmp_path, monkeypatch,
                                                                          capsys):
    """CLI: ``--dry-run``: "with --deploy: print the manifest, apply nothing"; before 4f74357 it
    never needed a cluster. Now dry_run reads the live InferenceService; without a Kubernetes
    configuration a promotion's dry run prints the first deploy's manifest ("said so"), but a
    rollback's re-raises ``_api``'s error, whose advice is "Use --dry-run to see the manifest
    without a cluster": the command the user just ran. Expected: a rollback dry run without a
    cluster either shows what it can (the rollback's manifest, said so) or says why it can't,
    without sending the user in a circle."""
    import mlflow

    from hsnet.cli import main

    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    name = "hsnet-rafdb"
    mlflow.set_tracking_uri(local_mlflow)
    client = mlflow.MlflowClient()
    client.create_registered_model(name)
    v1 = client.create_model_version(name, source=str(tmp_path / "model1"))
    v2 = client.create_model_version(name, source=str(tmp_path / "model2"))
    client.set_registered_model_alias(name, "previous", v1.version)
    client.set_registered_model_alias(name, "production", v2.version)
    rc = main(["promote", "--name", name, "--rollback", "--deploy", "--dry-run"])
    captured = capsys.readouterr()
    assert rc in (0, None) or "--dry-run to see" not in captured.err, captured.err


# --- 6. the health check's TLS is not MLflow's: INSECURE_TLS=1, REQUESTS_CA_BUNDLE, a CA folder (end) ---



def test_a_tracking_server_with_mlflow_tracking_insecure_tls_1_is_reachable(https_tracking_server, monkeypatch):
    """e955dc8: the health check "uses MLflow's TLS variables" (hsnet/tracking.py ``_tls_context``:
    "TLS as MLflow sets it up from its environment variables"), but reads
    ``MLFLOW_TRACKING_INSECURE_TLS`` as ``.lower() == "true"`` only. MLflow reads it as a boolean
    variable that takes "true", "false", "1" or "0", case-insensitive (mlflow/environment_variables.py
    ``_BooleanEnvironmentVariable.get``: ``return lowercased in ["true", "1"]``). With
    ``MLFLOW_TRACKING_INSECURE_TLS=1`` MLflow talks to a self-signed server; hsnet's pre-flight check
    verifies its certificate and stops train/evaluate/register with "unreachable"
    (CERTIFICATE_VERIFY_FAILED). Expected: reachable, as for "true"."""
    from mlflow.environment_variables import MLFLOW_TRACKING_INSECURE_TLS

    from hsnet import tracking

    url, _ = https_tracking_server
    monkeypatch.setenv("MLFLOW_TRACKING_INSECURE_TLS", "1")
    assert MLFLOW_TRACKING_INSECURE_TLS.get() is True  # what MLflow makes of it
    tracking.check_reachable(url)


def test_a_tracking_server_behind_a_private_ca_in_requests_ca_bundle_is_reachable(https_tracking_server,
                                                                                   monkeypatch):
    """The same promise (e955dc8: "the tracking health check uses MLflow's TLS variables (private
    CA ...)"; 17b: "hsnet's own pre-flight health check must accept what MLflow accepts"). Without
    ``MLFLOW_TRACKING_SERVER_CERT_PATH`` MLflow sends ``verify=True`` (mlflow/utils/rest_utils.py
    ``MlflowHostCreds.verify``: ``return not self.ignore_tls_verification``) through a
    ``requests.Session`` (mlflow/utils/request_utils.py ``session.request``), and requests then
    takes the CA bundle from ``REQUESTS_CA_BUNDLE`` (or ``CURL_CA_BUNDLE``): requests'
    ``Session.merge_environment_settings``, the usual way a company's CA is given to Python
    clients. hsnet's check builds ``ssl.create_default_context(cafile=None)``: the system store
    only, so a server MLflow talks to is "unreachable" and train/evaluate stop before starting."""
    import requests

    from hsnet import tracking

    url, cert = https_tracking_server
    monkeypatch.delenv("MLFLOW_TRACKING_SERVER_CERT_PATH", raising=False)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    with requests.Session() as session:  # what MLflow's client does
        assert session.request("GET", url + "/health", verify=True, timeout=5).status_code == 200
    tracking.check_reachable(url)


# --- 7. fetch of a folder: a subfolder it can't read is skipped in silence ------------------------

def test_fetch_of_a_folder_with_a_subfolder_it_cannot_read_fails_instead_of_copying_the_rest(tmp_path,
                                                                                               monkeypatch):
    """4f74357 replaced ``shutil.copytree`` with a loop over ``folder_files``, which lists the folder
    with ``os.walk(root)`` and no ``onerror``. Python's docs (os.walk): "By default, errors from
    the scandir() call are ignored": a subfolder that can't be listed (permissions, an NFS or
    FUSE mount that fails, a folder removed meanwhile) is left out with no word, and fetch reports
    success with a dataset short of that folder (a whole class, a whole split); source_version
    hashes the same short list, so the version doesn't notice either. copytree collected such
    errors and raised (shutil.Error -> "copy of ...: N file(s) not copied"). As root (this box)
    permissions don't stop a listing, so the PermissionError a non-root user gets from
    ``os.scandir`` is made here the way the OS makes it."""
    import os

    from hsnet.data.fetch import fetch
    from hsnet.errors import HSNetError

    src = tmp_path / "raw"
    (src / "happy").mkdir(parents=True)
    (src / "sad").mkdir()
    (src / "happy" / "1.jpg").write_bytes(b"a")
    (src / "sad" / "2.jpg").write_bytes(b"b")
    real_scandir = os.scandir

    def scandir(path="."):
        if not isinstance(path, int) and os.path.basename(os.fspath(path)) == "sad":  # chmod 000, as non-root
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    try:
        result = fetch(str(src), tmp_path / "out", progress=False)
    except HSNetError as exc:
        assert "sad" in str(exc), exc
        return
    pytest.fail(f"fetch left out the unreadable folder sad/ and reported success: {result}")


# --- 8. the refusal's way out ("evaluate production's checkpoint there") does not run as written ----

def test_the_not_comparable_refusal_gives_commands_that_run_as_written(local_mlflow, tmp_path):
    """9574265: "the refusal says how (its training run's checkpoint/best.pt, hsnet evaluate)
    instead of only --force": "evaluate production's checkpoint there (mlflow artifacts download
    -r RUN -a checkpoint/best.pt, then hsnet evaluate --checkpoint best.pt --data <the
    candidate's crops>, tracked) and promote again". As written, neither step works:
    ``mlflow artifacts download`` without ``-d`` downloads "to a new uniquely-named directory"
    (its --help) and prints that path, so there is no ``best.pt`` where the user is (and with
    ``-d .`` it is ``./checkpoint/best.pt``); and ``hsnet evaluate`` requires ``--out``
    (hsnet/cli.py: ``p.add_argument("--out", required=True, ...)``), so the command is refused by
    argparse. Expected: commands a user can paste, in that order, and get the evaluation."""
    import re
    import shlex

    import mlflow

    from hsnet.cli import build_parser
    from hsnet.registry import PromotionRefused, promote

    name = "hsnet-sample"
    prod_sha, cand_sha = "d" * 64, "e" * 64
    old_data, new_data = "sha256:" + "4" * 16, "sha256:" + "5" * 16
    client, exp = _store(local_mlflow)
    train_run = client.create_run(exp, tags={"step": "train"}).info.run_id
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "best.pt").write_bytes(b"weights")
    client.log_artifact(train_run, str(tmp_path / "ckpt" / "best.pt"), artifact_path="checkpoint")
    client.set_terminated(train_run, "FINISHED")
    v1 = _version(local_mlflow, name, prod_sha, _evaluation(local_mlflow, prod_sha, old_data, 0.5))
    client.set_model_version_tag(name, v1, "train_run_id", train_run)  # what register tags a version with
    promote(name, version=v1)
    v2 = _version(local_mlflow, name, cand_sha, _evaluation(local_mlflow, cand_sha, new_data, 0.9))
    with pytest.raises(PromotionRefused) as refused:
        promote(name, version=v2)
    message = str(refused.value)
    download = re.search(r"(mlflow artifacts download [^,]*)", message).group(1)
    evaluate = re.search(r"(hsnet evaluate [^,]*)", message).group(1)
    work = tmp_path / "work"
    work.mkdir()
    args = dict(zip(*[iter(shlex.split(download)[3:])] * 2))  # -r RUN -a PATH [-d DIR], as the CLI takes them
    mlflow.artifacts.download_artifacts(run_id=args["-r"], artifact_path=args["-a"],
                                        dst_path=str(work / args["-d"]) if "-d" in args else None)
    evaluate_argv = shlex.split(evaluate.replace("<the candidate's crops>", "crops"))[1:]
    try:
        parsed = build_parser().parse_args(evaluate_argv)
    except SystemExit:
        pytest.fail(f"hsnet refuses its own advice: {evaluate!r}")
    assert (work / parsed.checkpoint).is_file(), f"{download!r} then {evaluate!r}: no {parsed.checkpoint} there"


# --- 9. fetch of a folder: "its DVC project's cache" is whatever a .dvc/config above it says --------

def test_fetch_does_not_follow_links_into_a_cache_that_a_config_beside_the_data_names(tmp_path, monkeypatch):
    """4f74357: a folder copy "follows a link only to a file inside the folder or in its DVC
    project's cache" (docs/security.md, data fetch); security.md: "A planted link into that cache
    reads one of them [the project's own tracked files], nothing else", and "The raw data (... a
    local folder) is written by whoever can upload there ... None of it is trusted".
    ``dvc_cache_of`` takes the nearest ``.dvc/`` ABOVE the source and believes its ``cache.dir``.
    Where the source is a folder in an upload area (``--source uploads/rafdb``), an uploader who
    can write ``uploads/`` plants ``uploads/.dvc/config`` (``[cache] dir = <anywhere>``) beside
    the data and a link in it: fetch then copies whatever that "cache" holds (here a token file
    outside every DVC project, as ``/var/run/secrets/...`` is in a pod). Expected: refused like
    any link out of the folder."""
    from hsnet.data.fetch import fetch
    from hsnet.errors import HSNetError

    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "token").write_text("service-account-token")
    uploads = tmp_path / "uploads"
    (uploads / ".dvc").mkdir(parents=True)
    (uploads / ".dvc" / "config").write_text("[cache]\n    dir = ../../secrets\n")  # planted beside the data
    data = uploads / "rafdb"
    data.mkdir()
    (data / "1.jpg").write_bytes(b"a photo")
    (data / "2.jpg").symlink_to(secrets / "token")
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)  # the user's own folder: no DVC project
    try:
        fetch(str(data), work / "raw", progress=False)
    except HSNetError as exc:
        assert "2.jpg" in str(exc), exc
        return
    copied = (work / "raw" / "2.jpg").read_text()
    pytest.fail(f"fetch copied {secrets / 'token'} through a link into a 'cache' the data's folder named: {copied!r}")


# --- 10. the tracking server lost at the end of training (uploading best.pt): now a case of
# tests/test_attack_session17b.py::test_a_tracking_server_lost_mid_training_ends_with_a_message_and_the_way_to_resume

# --- 6 (cont.). MLFLOW_TRACKING_SERVER_CERT_PATH naming a folder of certificates -----------------------

def test_a_tracking_server_whose_ca_is_given_as_a_certificate_folder_is_reachable(https_tracking_server,
                                                                                   monkeypatch, tmp_path):
    """``MLFLOW_TRACKING_SERVER_CERT_PATH`` is requests' ``verify`` (mlflow/environment_variables.py:
    "Sets the verify param in requests.request"; rest_utils ``MlflowHostCreds.verify`` returns
    it), and requests takes there "a path to a CA bundle file **or directory** with certificates of
    trusted CAs" (requests' API docs; a directory goes to urllib3 as ``ca_cert_dir``: an OpenSSL
    hashed folder, e.g. /etc/ssl/certs). hsnet's check passes it as ``cafile=`` only, which a
    folder is not: "unreachable" where MLflow connects."""
    import shutil
    import subprocess

    import requests

    from hsnet import tracking

    if not shutil.which("openssl"):
        pytest.skip("needs openssl rehash to make a hashed certificate folder")
    url, cert = https_tracking_server
    folder = tmp_path / "ca-dir"
    folder.mkdir()
    shutil.copy(cert, folder / "private-ca.pem")
    subprocess.run(["openssl", "rehash", str(folder)], check=True, capture_output=True)
    assert requests.get(url + "/health", verify=str(folder), timeout=5).status_code == 200  # what MLflow does
    monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(folder))
    tracking.check_reachable(url)
