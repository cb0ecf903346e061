"""Attack 22c: a registered HSNet as its consumers use it (mlflow.pyfunc.load_model, hsnet predict
--model models:/..., the registry's records an auditor reads).

One real registration (hsnet register of a trained and evaluated checkpoint, local sqlite store)
is shared by the module; the test that tampers with the artifact store registers its own copy
under another name.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import unquote, urlparse

import mlflow
import pandas as pd
import pytest
from servers import read_only

from hsnet.errors import HSNetError

pytestmark = pytest.mark.slow

NAME = "hsnet-sample"


@pytest.fixture(scope="module")
def store(trained, tmp_path_factory):
    """A local sqlite store (hsnet's default kind) with the trained checkpoint evaluated (tracked)
    and registered as ``hsnet-sample`` version 1, as ``hsnet evaluate`` + ``hsnet register`` do."""
    from hsnet.evaluate import evaluate
    from hsnet.registry import register

    base = tmp_path_factory.mktemp("att22c-store")
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{base / 'mlflow.db'}")
    mp.chdir(base)  # the artifacts go beside the store
    try:
        evaluate(trained["checkpoint"], trained["data"], base / "eval", progress=False)
        registration = register(trained["checkpoint"], base / "eval" / "metrics.json", "sample", name=NAME)
        assert registration["version"] == 1
        yield {"base": base, "checkpoint": trained["checkpoint"], "data": trained["data"],
               "metrics": base / "eval" / "metrics.json",
               "registration": registration}
    finally:
        mp.undo()


@pytest.fixture
def cache(store, tmp_path, monkeypatch):
    """A model cache of this test's own (HSNET_CACHE_DIR)."""
    folder = tmp_path / "cache"
    monkeypatch.setenv("HSNET_CACHE_DIR", str(folder))
    return folder


def _sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _records(client, name: str, version) -> set[str]:
    """Every value the registry records for a version (its tags, its registration run's params and
    tags), hashes without their ``sha256:`` prefix: what an auditor can match a file against."""
    mv = client.get_model_version(name, str(version))
    run = client.get_run(mv.run_id)
    values = {*mv.tags.values(), *run.data.params.values(), *run.data.tags.values()}
    return {v.removeprefix("sha256:") for v in values}


def _store_folder(client, name: str, version) -> Path:
    """Where the artifact store (a local folder here) holds a version's model files."""
    mv = client.get_model_version(name, str(version))
    model_id = mv.source.removeprefix("models:/")
    location = client.get_logged_model(model_id).artifact_location
    return Path(unquote(urlparse(location).path))


def test_the_registered_weights_are_traceable_to_the_evaluated_checkpoint(store, cache, tmp_path):
    """docs/security.md: a checkpoint's "sha256 is its identity"; the version's tag and the
    registration run's param ``checkpoint_sha256`` name the evaluated file. An auditor holding the
    registered version's weights (``artifacts/model.pt``), or the ``model.sha256`` that
    ``hsnet.predict.predict``/``load_classifier`` reports for ``models:/NAME/VERSION``
    (``Classifier.info``), must be able to match them to what the registry recorded.

    register re-saves the checkpoint (hsnet.registry.log_model: ``torch.save(for_inference(ckpt))``
    into a file named model.pt, whose zip entries are named after it), so the bytes served have a
    sha256 that appears nowhere in the registry, and the docs don't say why."""
    from hsnet.predict import load_classifier

    client = mlflow.MlflowClient()
    mv = client.get_model_version(NAME, "1")
    folder = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{NAME}/1", dst_path=str(tmp_path / "dl")))
    weights = _sha256(folder / "artifacts" / "model.pt")
    known = _records(client, NAME, 1)
    assert mv.tags["checkpoint_sha256"] == _sha256(store["checkpoint"])  # what evaluate measured
    assert weights in known, (
        f"the registered weights artifacts/model.pt have sha256 {weights}, recorded nowhere in version 1's tags "
        f"or its registration run (checkpoint_sha256 {mv.tags['checkpoint_sha256']})")
    reported = load_classifier(f"models:/{NAME}/1", device="cpu").info["sha256"]
    assert reported in known, (
        f"load_classifier('models:/{NAME}/1') reports the model's sha256 as {reported}, which the registry "
        f"does not know (checkpoint_sha256 {mv.tags['checkpoint_sha256']})")


def test_a_damaged_local_copy_is_not_reported_as_a_changed_registry_version(store, cache):
    """security.md: ``hsnet predict --model models:/...`` checks "the copy they are about to load";
    README: a version "is downloaded once into $HSNET_CACHE_DIR/models ... and reused". When only
    that local copy is damaged (a disk error, a stray edit) and the registry's files are intact
    (hsnet.registry.check_model_files on a fresh download passes), the next load must either
    fetch the version again or say that the local copy (naming it) is what differs. Today every
    later load is refused with ModelChanged "changed after registration ... Register the
    checkpoint again and check who can write to the tracking server", forever: the cached copy is
    reused and never replaced, and the message sends the user after the registry."""
    from hsnet.predict import load_classifier
    from hsnet.registry import check_model_files

    load_classifier(f"models:/{NAME}/1", device="cpu")  # downloads it into the cache
    copies = [p for p in (cache / "models").glob("*/*") if p.is_dir() and (p / "MLmodel").is_file()]
    assert len(copies) == 1, copies
    local = copies[0]
    with open(local / "requirements.txt", "a", encoding="utf-8") as f:
        f.write("\n")  # one byte more in the local copy only
    client = mlflow.MlflowClient()
    assert check_model_files(client, NAME, 1)  # the registry's files are those registered
    try:
        clf = load_classifier(f"models:/{NAME}/1", device="cpu")
    except HSNetError as exc:
        assert str(local) in str(exc), (
            f"the local copy {local} was damaged, the registry's files are intact, and the error blames the "
            f"registry without naming the copy: {exc}")
    else:
        assert clf.classes


def test_registering_again_after_a_changed_version_gives_a_checked_version(store, cache):
    """The refusal of a version whose files were replaced in the artifact store (hsnet.registry.
    check_model_files, ModelChanged) tells the user: "Register the checkpoint again (hsnet
    register)". Doing so must give a version whose files are those registered (a new version),
    not the changed one again: today ``register`` finds the changed version by its checkpoint's
    sha256 and returns it as ``already_registered``, which promote and hsnet predict refuse
    again, so the advised remedy is a dead end."""
    from hsnet.registry import ModelChanged, check_model_files, promote, register

    name = NAME + "-swapped"
    first = register(store["checkpoint"], store["metrics"], "sample", name=name)
    client = mlflow.MlflowClient()
    folder = _store_folder(client, name, first["version"])
    requirements = folder / "requirements.txt"
    assert requirements.is_file(), list(folder.iterdir())
    with open(requirements, "a", encoding="utf-8") as f:  # someone with write access to the artifact store
        f.write("some-other-package==1.0\n")
    with pytest.raises(ModelChanged, match="Register the checkpoint again") as refused:
        promote(name)
    assert "hsnet register" in str(refused.value)

    again = register(store["checkpoint"], store["metrics"], "sample", name=name)  # as the message says
    assert again["version"] != first["version"], (
        f"hsnet register returned version {again['version']} again (already_registered="
        f"{again['already_registered']}), the version whose files were changed")
    assert check_model_files(client, name, again["version"]), again


def test_an_empty_batch_keeps_the_signature_types(store, cache):
    """The logged signature (hsnet.pyfunc.signature) says ``expression`` is a string column; the
    pyfunc's docstring: "Output: one row per image with expression, confidence and prob_<class>".
    A batch of no images (an empty partition of a batch job) must give the same columns with the
    same types as a non-empty one, so code written against the signature (``out.expression.str``)
    works on it; today ``expression`` comes back as float64."""
    from hsnet.data.sample import draw_face
    import io

    import numpy as np

    model = mlflow.pyfunc.load_model(f"models:/{NAME}/1")
    buf = io.BytesIO()
    draw_face("aia", "joy", np.random.default_rng(0), size=80).save(buf, format="PNG")
    full = model.predict(pd.DataFrame({"image": [buf.getvalue()]}))
    empty = model.predict(pd.DataFrame({"image": pd.Series([], dtype=object)}))
    assert list(empty.columns) == list(full.columns)
    schema = {c.name: c.type.name for c in model.metadata.get_output_schema().inputs}
    assert schema["expression"] == "string"
    assert pd.api.types.is_string_dtype(full["expression"])
    assert pd.api.types.is_string_dtype(empty["expression"]), (
        f"expression of an empty batch is {empty['expression'].dtype}, the signature says string")
    empty["expression"].str.upper()  # what a consumer does with a string column


def test_mlflow_models_serve_takes_its_tensor_input_forms(store, cache, tmp_path):
    """hsnet/pyfunc.py: "each cell is an encoded image (PNG/JPEG bytes; base64 text from the REST API
    is decoded too)"; README: ``mlflow models serve`` serves the registered model. MLflow's scoring
    server takes ``dataframe_split``, ``dataframe_records``, ``instances`` and ``inputs`` JSON; for
    the last two it hands the model the base64 *text* as bytes (b'iVBORw0...'), which the pyfunc
    takes for an encoded image and refuses: a valid PNG answered with HTTP 400 "image 0: not a
    readable image". The same image must get the same prediction in every form MLflow accepts."""
    import base64
    import io
    import json
    import urllib.error
    import urllib.request

    import numpy as np
    from servers import Server, free_port, models_serve_env

    from hsnet.data.sample import draw_face

    buf = io.BytesIO()
    draw_face("aia", "joy", np.random.default_rng(0), size=80).save(buf, format="PNG")
    text = base64.b64encode(buf.getvalue()).decode()
    port = free_port()
    env = models_serve_env()
    server = Server(["mlflow", "models", "serve", "-m", f"models:/{NAME}/1", "--env-manager", "local",
                     "-h", "127.0.0.1", "-p", str(port), "-w", "1"], f"http://127.0.0.1:{port}", "/ping", env,
                    tmp_path / "serve.log")

    def invoke(body):
        req = urllib.request.Request(server.url + "/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    try:
        status, split = invoke({"dataframe_split": {"columns": ["image"], "data": [[text]]}})
        assert status == 200, split  # the README's form
        for body in ({"instances": [{"image": text}]}, {"inputs": {"image": [text]}}):
            status, answer = invoke(body)
            assert status == 200, f"{list(body)[0]}: HTTP {status} {str(answer.get('message', answer))[-200:]}"
            assert answer["predictions"] == split["predictions"], list(body)[0]
    finally:
        server.stop()
    # MLflow served the local store's own folder in place, and Python's __pycache__ written there made
    # every later check refuse the version as changed (session 31's CI rehearsal: the next test failed)
    from hsnet.registry import check_model_files

    client = mlflow.MlflowClient()
    assert list(_store_folder(client, NAME, 1).rglob("__pycache__/*.pyc"))  # what a user's box writes there
    assert check_model_files(client, NAME, 1)


def test_a_complete_model_copy_in_a_read_only_cache_is_used(store, cache):
    """README: a registry version "is downloaded once into $HSNET_CACHE_DIR/models ... and reused by
    later runs"; the copy is checked against the registry's digest before it is loaded
    (security.md). A cache that already holds the whole copy but is mounted read-only (a volume
    filled by an init container, an image with a read-only root filesystem) needs nothing written
    to be reused: ``hsnet predict``/``hsnet serve`` must load from it, or at least say that
    HSNET_CACHE_DIR must be writable. Today the cache lock (``<cache>/.lock``, opened for appending
    even to read) fails with EROFS, reported as "can't load it from MLflow ... Check the name and
    alias (hsnet promote) and MLFLOW_TRACKING_URI". Needs a read-only bind mount (root); skipped
    where the machine can't make one."""
    from hsnet.predict import load_classifier

    load_classifier(f"models:/{NAME}/1", device="cpu")  # the copy, whole, in the cache
    with read_only(cache):
        try:
            clf = load_classifier(f"models:/{NAME}/1", device="cpu")
        except HSNetError as exc:
            assert "HSNET_CACHE_DIR" in str(exc), f"a read-only cache with the whole copy in it: {exc}"
        else:
            assert clf.classes


def test_a_version_measured_with_test_time_flips_says_so(store, cache, tmp_path):
    """hsnet evaluate with ``evaluate.tta_hflip`` warns that "each image is scored with its mirror
    image averaged in, which hsnet predict, the registered model and the server never do: these
    figures are not the served model's". The registered version's tags and description (README:
    "tags (dataset, test accuracy and mean accuracy, the test data's version ...)", "for people and
    the UI") are what a consumer of ``models:/NAME@production`` reads; they must say that its
    test accuracy was measured with test-time flips, as the evaluation run's param records. Today
    they give the figure alone ("HSNet on sample: test accuracy 0.xxxx ..."), as if it were the
    served model's."""
    from hsnet.evaluate import evaluate
    from hsnet.params import EvaluateParams
    from hsnet.registry import register

    out = tmp_path / "eval-tta"
    evaluate(store["checkpoint"], store["data"], out, settings=EvaluateParams(tta_hflip=True), progress=False)
    name = NAME + "-tta"
    got = register(store["checkpoint"], out / "metrics.json", "sample", name=name)
    client = mlflow.MlflowClient()
    evaluation = client.get_run(got["evaluation_run_id"])
    assert evaluation.data.params["tta_hflip"] == "True"  # the record says how it was measured
    mv = client.get_model_version(name, str(got["version"]))
    said = " ".join([mv.description or "", *(f"{k}={v}" for k, v in mv.tags.items())]).lower()
    assert "tta" in said or "flip" in said, (
        f"version {mv.version} of {name}: test accuracy {mv.tags.get('test_accuracy')} measured with test-time "
        f"flips, and neither its description ({mv.description!r}) nor its tags say so")

