"""Attack 18a: mutation review of sessions 16-17's code. Unlike other attack files these tests
PASS on the current code; each one FAILS on a named mutant that survived the existing suite
(docstrings name the mutant: file, before -> after)."""

from __future__ import annotations

import io as _io
import os

import pytest

from hsnet.errors import HSNetError

ENTRY = ("ab", "c" * 30)  # DVC's cache entry name: files/md5/<2 hex>/<30 hex> (DVC 3), <2 hex>/<30 hex> (DVC 2)


def _png(color=(200, 30, 30), size=16) -> bytes:
    from PIL import Image

    buf = _io.BytesIO()
    Image.new("RGB", (size, size), color).save(buf, format="PNG")
    return buf.getvalue()


# --- link following: io.in_dvc_cache, io.dvc_cache_of, fetch.folder_files, tensors.load_split ------


def test_only_a_dvc_cache_entry_itself_counts_not_a_file_below_or_beside_one_named_like_it(tmp_path):
    """Mutant io2 (hsnet/io.py in_dvc_cache: ``_DVC_CACHE_ENTRY.fullmatch(`` -> ``.match(``).
    in_dvc_cache's docstring: "Only an entry's name as DVC lays it out counts, so a cache folder that
    a planted config names (a secrets folder, a home directory) lends none of its other files".
    DVC's layout is ``files/md5/XX/<30 hex>`` (DVC 3) or ``XX/<30 hex>`` (DVC 2): a file *inside* a
    folder named like an entry, or an entry name with more after it, is no entry."""
    from hsnet.io import in_dvc_cache

    cache = str(tmp_path / "cache")
    entry = os.path.join(cache, "files", "md5", *ENTRY)
    assert in_dvc_cache(entry, (cache,))  # the real layout: followed
    assert in_dvc_cache(os.path.join(cache, *ENTRY), (cache,))  # DVC 2's
    for other in (os.path.join(entry, "id_rsa"), entry + "0", entry + ".key", os.path.join(cache, *ENTRY, "token")):
        assert not in_dvc_cache(other, (cache,)), other


def test_fetch_refuses_a_link_to_a_file_below_a_folder_named_like_a_cache_entry(tmp_path):
    """Mutant io2 again, end to end through ``hsnet fetch`` of a folder (fetch.folder_files): the
    project's cache holds a folder named like an entry, with a file in it; a link to that file is
    no checkout link (DVC links a tracked file to the entry itself) and is refused by name."""
    from hsnet.data.fetch import fetch

    project = tmp_path / "project"
    hidden = project / ".dvc" / "cache" / "files" / "md5" / ENTRY[0] / ENTRY[1] / "credentials"
    hidden.parent.mkdir(parents=True)
    hidden.write_text("aws_secret_access_key = x")
    src = project / "data" / "raw"
    src.mkdir(parents=True)
    (src / "a.png").write_bytes(_png())
    (src / "b.png").symlink_to(hidden)
    with pytest.raises(HSNetError, match=r"b\.png is a link to .*credentials, outside"):
        fetch(str(src), tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()


def test_a_dvc_folder_inside_the_data_does_not_name_the_cache(tmp_path):
    """Mutant io3 (hsnet/io.py dvc_cache_of: ``for project in here.parents`` -> ``in [here, *here.parents]``).
    dvc_cache_of's docstring: "The project is looked for above ``folder`` only (a ``.dvc`` in the
    data itself came with it)" (commit fa2b2d9: a .dvc shipped inside a hostile archive). Here the
    data (inside a real project) brings its own .dvc/config naming another project's cache; the
    cache is still the enclosing project's."""
    from hsnet.io import dvc_cache_of

    project = tmp_path / "project"
    (project / ".dvc").mkdir(parents=True)
    data = project / "data" / "upload"
    (data / ".dvc").mkdir(parents=True)
    victim_cache = tmp_path / "victim" / ".dvc" / "cache"
    victim_cache.mkdir(parents=True)
    (data / ".dvc" / "config").write_text(f"[cache]\n    dir = {victim_cache}\n")
    assert dvc_cache_of(data) == (os.path.realpath(project / ".dvc" / "cache"),)
    # and with no project above, a .dvc that came with the data makes none
    alone = tmp_path / "alone"
    (alone / ".dvc").mkdir(parents=True)
    (alone / ".dvc" / "config").write_text(f"[cache]\n    dir = {victim_cache}\n")
    assert dvc_cache_of(alone) == ()


def test_fetch_of_an_upload_with_its_own_dvc_config_does_not_copy_another_projects_cached_data(tmp_path):
    """Mutant io3 end to end: an uploaded folder ships ``.dvc/config`` with ``cache.dir`` naming
    another project's DVC cache (the user's private data, by its md5) and a link to an entry of
    it. fetch.folder_files' docstring: a link is followed only when it stays in the folder or
    leads to "a file's entry in its DVC project's cache"; the upload is not a DVC project of its own."""
    from hsnet.data.fetch import fetch

    other_entry = tmp_path / "private" / ".dvc" / "cache" / "files" / "md5" / ENTRY[0] / ENTRY[1]
    other_entry.parent.mkdir(parents=True)
    other_entry.write_bytes(_png((1, 2, 3)))
    src = tmp_path / "uploads" / "rafdb"
    (src / ".dvc").mkdir(parents=True)
    (src / ".dvc" / "config").write_text(f"[cache]\n    dir = {tmp_path / 'private' / '.dvc' / 'cache'}\n")
    (src / "a.png").write_bytes(_png())
    (src / "b.png").symlink_to(other_entry)
    with pytest.raises(HSNetError, match=r"b\.png is a link to .*, outside"):
        fetch(str(src), tmp_path / "out", progress=False)


def test_fetch_refuses_a_link_to_a_file_beside_the_source_folder(tmp_path):
    """Mutant f2 (hsnet/data/fetch.py folder_files: ``target.is_relative_to(base)`` ->
    ``target.is_relative_to(base.parent)``). folder_files' docstring: a link is followed "when it
    stays in ``root``"; one to a sibling of the folder (``../x``: another upload, the parent's
    secrets) is outside it. The existing tests only link to /etc/passwd, /dev/zero and tmp_path's
    top, which are outside the parent too."""
    from hsnet.data.fetch import fetch, source_version

    uploads = tmp_path / "uploads"
    src = uploads / "rafdb"
    src.mkdir(parents=True)
    (uploads / "other-user.png").write_bytes(_png((9, 9, 9)))
    (src / "a.png").write_bytes(_png())
    (src / "b.png").symlink_to("../other-user.png")
    with pytest.raises(HSNetError, match=r"b\.png is a link to .*other-user\.png, outside"):
        fetch(str(src), tmp_path / "out", progress=False)
    with pytest.raises(HSNetError, match=r"b\.png is a link"):
        source_version(str(src))


def test_the_loader_reads_crops_checked_out_as_links_into_the_dvc_cache(tmp_path):
    """Mutant s1 (hsnet/tensors.py load_split: ``also=linked`` -> ``also=()``). Commit f981890: "A
    DVC checkout with cache.type symlink ... is read as the project's data: safe_join follows links
    into hsnet.io.dvc_cache_of(root) for validate, crop and the loader"; DVC's docs (cache.type
    symlink) make every checked-out file a link into the cache. The real-dvc test covers validate
    and crop only (the crops it writes are plain files), not the loader: train on crops pulled
    with cache.type symlink."""
    from hsnet.tensors import load_split

    project = tmp_path / "project"
    entry = project / ".dvc" / "cache" / "files" / "md5" / ENTRY[0] / ENTRY[1]
    entry.parent.mkdir(parents=True)
    entry.write_bytes(_png((10, 200, 10), size=8))
    crops = project / "data" / "crops" / "sample"
    (crops / "happy").mkdir(parents=True)
    (crops / "happy" / "a.png").symlink_to(entry)
    split = load_split([{"path": "happy/a.png", "label": "3"}], crops, 8, cache_dir=tmp_path / "tc", progress=False)
    assert len(split) == 1 and tuple(split.images[0, :, 0, 0]) == (10, 200, 10)
    # a link anywhere else is still refused
    (crops / "happy" / "b.png").symlink_to(tmp_path / "elsewhere.png")
    (tmp_path / "elsewhere.png").write_bytes(_png(size=8))
    with pytest.raises(HSNetError, match="leads outside"):
        load_split([{"path": "happy/b.png", "label": "3"}], crops, 8, cache_dir=tmp_path / "tc", progress=False)


# --- the tracking health check (tracking.check_reachable) and its TLS settings -----------------------


def test_a_tracking_server_answering_500_is_not_taken_for_up():
    """Mutant t2 (hsnet/tracking.py check_reachable: ``resp.status_code >= 500`` -> ``> 500``).
    500 Internal Server Error is the first 5xx, "the server encountered an unexpected condition
    that prevented it from fulfilling the request" (RFC 9110 15.6.1); MLflow's /health of a server
    whose backend store is down answers it. check_reachable's own comment: only codes below 500
    mean up (401/404 behind a proxy). The tests only used unreachable ports, never a 500."""
    from servers import answering, serve_http

    from hsnet import tracking

    server = serve_http(answering(500))
    try:
        with pytest.raises(tracking.TrackingUnavailable, match="answered HTTP 500"):
            tracking.check_reachable(f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()


def test_a_tracking_server_that_requires_a_client_certificate_gets_mlflows_one(tmp_path, monkeypatch):
    """Mutant t3 (hsnet/tracking.py check_reachable: ``cert=os.environ.get("MLFLOW_TRACKING_CLIENT_CERT_PATH")
    or None`` -> ``cert=None``). Commit e955dc8: "the tracking health check uses MLflow's TLS
    variables (private CA, insecure, client cert)"; MLflow documents
    MLFLOW_TRACKING_CLIENT_CERT_PATH as "Path to ssl client cert file (.pem). Sets the cert param
    of the requests.request function" (mlflow docs, Tracking > environment variables). A server
    that requires a client certificate (mutual TLS) refuses the handshake without one, and the
    health check then calls a reachable server unreachable, stopping every step."""
    import ssl

    from servers import answering, self_signed, serve_http

    from hsnet import tracking

    cert, key = self_signed(tmp_path)
    both = tmp_path / "client.pem"  # requests' cert=: one file with the certificate and its key
    both.write_bytes(cert.read_bytes() + key.read_bytes())

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS: the client's certificate, signed by this CA
    ctx.load_verify_locations(cert)
    server = serve_http(answering(200, body=b"OK"), ctx)
    try:
        url = f"https://127.0.0.1:{server.server_address[1]}"
        monkeypatch.setenv("MLFLOW_TRACKING_SERVER_CERT_PATH", str(cert))
        monkeypatch.delenv("MLFLOW_TRACKING_CLIENT_CERT_PATH", raising=False)
        with pytest.raises(tracking.TrackingUnavailable):  # without it, the server refuses: the setup is real
            tracking.check_reachable(url)
        monkeypatch.setenv("MLFLOW_TRACKING_CLIENT_CERT_PATH", str(both))
        tracking.check_reachable(url)
    finally:
        server.shutdown()
        server.server_close()


def test_system_tags_name_the_gpu_the_run_computed_on(monkeypatch):
    """Mutant t8 (hsnet/tracking.py system_tags: ``get_device_name(torch.device(device))`` ->
    ``get_device_name(0)``). system_tags' docstring: "the device it computed on (``device``, a GPU
    by its name ...)"; commit e955dc8: "system.device is the run's device". On a box with an A100
    (cuda:0) and a V100 (cuda:1), a run on cuda:1 computed on the V100."""
    import torch

    from hsnet import tracking

    names = {0: "NVIDIA A100-SXM4-40GB", 1: "Tesla V100-SXM2-16GB"}

    def name_of(d=None):
        index = d.index if isinstance(d, torch.device) else (0 if d is None else int(d))
        return names[0 if index is None else index]

    monkeypatch.setattr(torch.cuda, "get_device_name", name_of)
    assert tracking.system_tags("cuda:1")["system.device"] == names[1]
    assert tracking.system_tags("cuda:0")["system.device"] == names[0]
    assert tracking.system_tags("cpu")["system.device"] == "cpu"


# --- deploy: the serving image a rollout replaced, and its rollback (deploy.plan_rollout/plan_rollback) --


def _older_image() -> str:
    from hsnet.deploy import SERVE_IMAGE

    return SERVE_IMAGE.rsplit(":", 1)[0] + ":0.0.9"


def test_a_rollback_from_a_later_version_keeps_the_image_the_versions_since_the_upgrade_ran_on():
    """Mutant d2 (hsnet/deploy.py plan_rollback: drop ``replaced[1] == serving``). README (17e):
    "a rollback of that rollout brings the old image back with the old version": only a rollback
    of the rollout that replaced the image. Here version 8's rollout replaced 0.0.9's image, then
    version 9 was rolled out on this release's image; rolling back from 9 to 8 must leave 8 on
    the image it was served with (this release's), not put it on 0.0.9's, which never served it
    (and may not read its checkpoint format: checkpoint.OtherFormat)."""
    from isvc import image_of, live_isvc

    from hsnet.deploy import SERVE_IMAGE, plan_rollback, plan_rollout

    live = live_isvc(_older_image(), "models:/hsnet-rafdb/7")
    v8 = plan_rollout(live, "models:/hsnet-rafdb/8", name="hsnet-rafdb", namespace="models", canary_percent=100)
    assert image_of(v8["object"]) == SERVE_IMAGE
    v9 = plan_rollout(v8["object"], "models:/hsnet-rafdb/9", name="hsnet-rafdb", namespace="models",
                      canary_percent=100)
    assert image_of(v9["object"]) == SERVE_IMAGE
    back = plan_rollback(v9["object"], "models:/hsnet-rafdb/8", name="hsnet-rafdb", namespace="models")
    assert image_of(back["object"]) == SERVE_IMAGE, back.get("note")


def test_a_rollback_to_the_version_already_served_keeps_its_image():
    """Mutant d3 (hsnet/deploy.py plan_rollback: drop ``serving != model_uri``). The registry's
    rollback target is the version the InferenceService already serves with all traffic (version
    8 rolled out with --deploy, which replaced 0.0.9's image; version 9 then promoted without
    --deploy; --rollback --deploy targets 8). Nothing is rolled back on the cluster: version 8
    stays on the image it has served since its rollout, not moved onto 0.0.9's image, which never
    served it."""
    from isvc import image_of, live_isvc

    from hsnet.deploy import SERVE_IMAGE, plan_rollback, plan_rollout

    live = live_isvc(_older_image(), "models:/hsnet-rafdb/7")
    v8 = plan_rollout(live, "models:/hsnet-rafdb/8", name="hsnet-rafdb", namespace="models", canary_percent=100)
    back = plan_rollback(v8["object"], "models:/hsnet-rafdb/8", name="hsnet-rafdb", namespace="models")
    assert image_of(back["object"]) == SERVE_IMAGE, back.get("note")


def test_deploying_production_again_after_an_upgrade_brings_this_releases_serving_image():
    """Mutant d6 (hsnet/deploy.py plan_rollout: drop ``and image is None`` from the 'unchanged'
    shortcut). Commit 4f74357: "a rollout brings this release's serving image over an older tag of
    it"; _release_image's docstring: an earlier release's image "may not read the checkpoints this
    release trains, and its fixes would never arrive". After upgrading hsnet, `hsnet promote
    --deploy` of the version already served must roll this release's image out, not answer
    'already serves' and keep the old server for ever."""
    from isvc import image_of, live_isvc

    from hsnet.deploy import SERVE_IMAGE, plan_rollout

    live = live_isvc(_older_image(), "models:/hsnet-rafdb/7")
    plan = plan_rollout(live, "models:/hsnet-rafdb/7", name="hsnet-rafdb", namespace="models", canary_percent=10)
    assert plan["action"] == "updated" and image_of(plan["object"]) == SERVE_IMAGE, plan.get("note")


# --- the promotion gate on the candidate's test data (registry._promote_locked) ------------------------


def test_the_promotions_figures_are_productions_on_the_data_it_was_compared_on(
        quick_log_model, local_mlflow, evaluated, other_test_data, tmp_path):
    """Mutant r3 (hsnet/registry.py _promote_locked: drop ``decision.update(production_value=p_val,
    production_evaluation_run_id=...)`` after production's evaluation on the candidate's data is
    found). Commit 14e5d41: "promote's reason gives both figures"; README: production moves only if
    the candidate beats production "on the same test data". When the gate compares on the
    candidate's data (9574265), the production figure the decision (and its reason, and
    registered.json/the Kubeflow step's record) reports must be production's on that data, here
    computed by hand: production's checkpoint answers class 1 whatever the image, so its accuracy
    is the share of class-1 images in the candidate's test split. The mutant reports production's
    figure on its old data, which was not compared."""
    from hsnet.data.manifest import read_manifest
    from hsnet.registry import promote, register

    prod_ckpt, prod_metrics, prod_old = evaluated(1)  # always class 1, on the old crops
    register(prod_ckpt, prod_metrics, "sample")
    assert promote("hsnet-sample")["production"] == 1
    cand_ckpt, cand_metrics, cand = evaluated(0, data=other_test_data)  # always class 0, the crops cut again
    register(cand_ckpt, cand_metrics, "sample")
    evaluated_again = tmp_path / "prod-on-new-data"
    from hsnet.evaluate import evaluate

    evaluate(prod_ckpt, other_test_data, evaluated_again, progress=False)
    test = [r for r in read_manifest(other_test_data / "manifest.csv") if r["split"] == "test"]
    by_hand = sum(int(r["label"]) == 1 for r in test) / len(test)
    assert abs(by_hand - prod_old["accuracy"]) > 1e-9  # the two data versions give production other figures
    decision = promote("hsnet-sample")
    assert decision["promoted"] and decision["production"] == 2, decision
    assert decision["production_value"] == pytest.approx(by_hand), decision
    assert f"production's {by_hand:.4f}" in decision["reason"], decision["reason"]


def test_a_rollback_whose_target_moved_meanwhile_changes_nothing(quick_log_model, local_mlflow, evaluated):
    """Mutant r4 (hsnet/registry.py rollback: ``if expect is not None and str(prev.version) !=
    str(expect)`` -> ``if False``). rollback's docstring: "``expect``: the version
    :func:`rollback_target` named; if ``previous`` moved since, nothing changes and the error says
    so"; deploy.rollback_production sends the traffic to that version first. Here another
    promotion runs between the two: the registry must not put a version in production that the
    traffic was not sent to (16e/16c's tests stub this function, so the real check was never run)."""
    from mlflow import MlflowClient

    from hsnet.registry import promote, register, rollback, rollback_target

    for _ in range(2):
        ckpt, metrics, _ = evaluated(0)
        version = register(ckpt, metrics, "sample")["version"]
        promote("hsnet-sample", version=version, force=True)
    target = rollback_target("hsnet-sample")
    assert target == 1
    ckpt, metrics, _ = evaluated(0)
    promote("hsnet-sample", version=register(ckpt, metrics, "sample")["version"], force=True)  # meanwhile
    with pytest.raises(HSNetError, match="moved to version 2 while version 1"):
        rollback("hsnet-sample", expect=target)
    client = MlflowClient(local_mlflow)
    assert str(client.get_model_version_by_alias("hsnet-sample", "production").version) == "3"
    assert str(client.get_model_version_by_alias("hsnet-sample", "previous").version) == "2"


# --- device numerics and the fp16 GradScaler (device.pick_device/native_bf16, step.Step) ----------------


@pytest.fixture
def _fake_gpus_kept(monkeypatch):
    """17b's fake GPU box (tests/test_attack_session17b.py _fake_gpus), with the cudnn/TF32 switches
    that pick_device turns on restored afterwards."""
    import torch
    from test_attack_session17b import _fake_gpus
    from tf32 import restore, saved

    before, bench = saved(), torch.backends.cudnn.benchmark
    yield lambda majors: _fake_gpus(monkeypatch, majors)
    restore(before)
    torch.backends.cudnn.benchmark = bench


def test_an_a100_gets_bf16_autocast(_fake_gpus_kept):
    """Mutant dv1 (hsnet/device.py native_bf16: ``get_device_capability(device) >= (8, 0)`` -> ``> (8, 0)``).
    native_bf16's docstring: "natively (Ampere, compute capability 8.0, and later)"; the A100 is
    compute capability 8.0 (NVIDIA's CUDA GPUs table) and has bf16 tensor cores; device.py's
    module docstring: "bf16 autocast ... on a GPU". The tests only faked 7.x and 9.x GPUs."""
    import torch

    from hsnet.device import pick_device

    _fake_gpus_kept([8])
    assert pick_device("cuda").amp_dtype == torch.bfloat16


def test_cuda_1_is_made_the_current_device(_fake_gpus_kept):
    """Mutant dv3 (hsnet/device.py pick_device: drop ``torch.cuda.set_device(device)``). Commit
    e955dc8: "cuda:N validated and made current"; the comment: "its RNG, streams and graphs are
    this one's" (torch.cuda.Stream() and CUDA graph capture use the current device, PyTorch's CUDA
    semantics notes)."""
    import torch

    from hsnet.device import pick_device

    _fake_gpus_kept([8, 8])
    pick_device("cuda:1")
    assert torch.cuda.current_device() == 1


def test_float16_autocast_training_keeps_stepping_after_the_first_batch():
    """Mutant st1 (hsnet/step.py Step.__call__: drop ``self.scaler.update()``). PyTorch's AMP recipe
    (https://pytorch.org/docs/stable/amp.html, "Typical Mixed Precision Training"): every iteration
    is ``scaler.scale(loss).backward(); scaler.step(optimizer); scaler.update()``; GradScaler.step
    refuses a second call before update() (torch/amp/grad_scaler.py: "step() has already been
    called since the last update()"). 17b's test ran one batch only; an epoch has many."""
    import torch

    from hsnet.device import Setup
    from hsnet.step import Step

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    step = Step(model, Setup(torch.device("cpu"), torch.float16, False), opt)
    step.begin()
    before = model[1].weight.detach().clone()
    for _ in range(3):
        step(torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8), torch.tensor([0, 1, 0, 1]))
    assert not torch.equal(before, model[1].weight.detach())


# --- import's duplicates (datasets._without_duplicates) ---------------------------------------------------


def test_of_copies_with_one_label_import_keeps_the_first(tmp_path):
    """Mutant dup1 (hsnet/data/datasets.py _without_duplicates: ``for r in group[1:]`` -> ``group[:-1]``).
    README "Data steps": "Byte-identical images are left out and listed (`duplicates`): of copies
    with one label the first is kept"; the docstring: records sorted by path, "the first is kept".
    Three copies of one photo under one expression: the manifest keeps the first by path
    (aia_anger_1.png), and the others are listed as identical to it. The existing tests copy one
    photo under other labels only (all left out) or count the copies, never which one stays."""
    import shutil

    from crafted import ferg_tree

    from hsnet.data.datasets import import_dataset
    from hsnet.data.manifest import read_manifest

    root = ferg_tree(tmp_path / "ferg", per_class=3)
    folder = root / "aia" / "aia_anger"
    for n in (2, 3):
        shutil.copyfile(folder / "aia_anger_1.png", folder / f"aia_anger_{n}.png")
    summary = import_dataset("ferg", root, tmp_path / "manifest.csv")
    paths = {r["path"] for r in read_manifest(tmp_path / "manifest.csv")}
    assert "aia/aia_anger/aia_anger_1.png" in paths
    assert not paths & {"aia/aia_anger/aia_anger_2.png", "aia/aia_anger/aia_anger_3.png"}
    assert summary["duplicates"] == 2
    assert all("identical to aia/aia_anger/aia_anger_1.png" in d for d in summary["duplicate_examples"]), summary


# --- train --resume over a checkpoint of another format (train.resume_from) ------------------------------


def test_resume_yes_over_a_last_pt_of_another_format_is_refused_not_restarted(tmp_path):
    """Mutant tr1 (hsnet/train.py resume_from: drop ``if not auto: raise`` after OtherFormat, so
    every --resume trains from the start). `hsnet train --help`: "--resume: continue from
    OUT/last.pt if it exists; 'auto': only if it is of the same data and settings, from the start
    otherwise"; resume_from's docstring: "``auto``: None (nothing loaded) when ``last.pt`` is from
    other data, settings or code". Only 'auto' may set last.pt aside; a plain --resume that can't
    continue must say so (checkpoint.OtherFormat names the format and what to do), not throw the
    run's epochs away under a log line. 17a tests the 'auto' half only."""
    import torch

    from hsnet import checkpoint
    from hsnet.train import resume_from

    last = tmp_path / "last.pt"
    torch.save({"format": checkpoint.FORMAT - 1, "meta": {}, "model": {}, "state": {}}, last)
    with pytest.raises(checkpoint.OtherFormat, match="an older hsnet"):
        resume_from(last, {}, None, None, auto=False)
    assert resume_from(last, {}, None, None, auto=True) is None  # 'auto': from the start


def test_the_configobj_free_reader_of_dvc_config_strips_an_inline_comment_as_configobj_does():
    """Mutant ini1 (hsnet/io.py _ini_value: ``value.split("#", 1)[0].strip()`` -> ``value.strip()``).
    _ini_value's docstring: "configobj's INI dialect, which DVC's config is: ... a value in quotes
    taken whole, else cut at an inline ``#``" (commit a4dd145: "the configobj-free fallback reads
    ... as configobj does"). The oracle is configobj itself (DVC's reader, installed with dvc);
    the tests only ran the configobj path, since the venv has it."""
    from configobj import ConfigObj

    from hsnet.io import _ini_value

    for text in ("[cache]\ndir = /srv/dvc-cache  # shared\n", "[ cache ]\n    dir = ../shared # moved\n",
                 "[cache]\ndir = '/a # b'  # quoted\n", "[Cache]\nDir = /x\n"):
        parsed = ConfigObj(text.splitlines())
        expected = next(v for s, sec in parsed.items() if s.lower() == "cache"
                        for k, v in sec.items() if k.lower() == "dir")
        assert _ini_value(text, "cache", "dir") == expected, text
