"""Attack 20a: session 20's changes (mask_uri, library-version keys, promotion history, kept verdicts)."""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow import MlflowClient

from hsnet.errors import HSNetError
from hsnet.registry import (LOCK_SUFFIX, PromotionLost, PromotionRefused, promote, promotion_history, register,
                            rollback)


# --- 1. mask_uri / mask_text ---------------------------------------------------------------------

@pytest.mark.parametrize("text", [
    "https://oauth2:pa'ss0rd@gitlab.example.com/g/data.git",
    "dvc get failed for https://oauth2:it's-s3cret@gitlab.example.com/g/data.git (exit 128)",
])
def test_mask_text_hides_a_password_holding_an_apostrophe(text):
    """RFC 3986 3.2.1: userinfo = *( unreserved / pct-encoded / sub-delims / ":" ), and "'" is a
    sub-delim: the password of these URIs is what urllib reads (pa'ss0rd, it's-s3cret), and mask_uri
    masks it. mask_text (fetch's errors and summary, the Kubeflow fetch step's artifact metadata)
    cuts the URI at the "'" (_URI_IN_TEXT stops at quotes), so neither half is masked."""
    import urllib.parse

    from hsnet.tracking import mask_text, mask_uri

    uri = text[text.index("https://"):].split(" ")[0]
    password = urllib.parse.urlsplit(uri).password
    assert password and "'" in password and password not in mask_uri(uri)  # the URI alone: masked
    shown = mask_text(text)
    assert "***" in shown and not any(part in shown for part in ("pa'", "ss0rd", "it's", "s3cret")), shown


def test_a_store_error_quoting_a_uri_mid_text_is_masked(local_mlflow, monkeypatch):
    """Follow-up (minor finding): errors were passed whole to mask_uri, which masks a user part only
    at the start of its input; an error text quoting a URI with a password mid-sentence showed it."""
    import mlflow

    from hsnet import tracking

    def refuse(self, name):
        raise RuntimeError("could not connect: postgresql://mlflow:hunter2@db.example:5432/mlflow refused")
    monkeypatch.setattr(mlflow.MlflowClient, "get_experiment_by_name", refuse)
    with pytest.raises(tracking.TrackingUnavailable) as caught:
        with tracking.run("x", params={}, tags={}):
            pass
    assert "hunter2" not in str(caught.value) and "db.example" in str(caught.value), caught.value


# --- 3. the promotion history ---------------------------------------------------------------------

def test_history_a_promotion_that_lost_the_race_is_recorded(local_mlflow, evaluated):
    """README/security.md: "Each promotion and rollback, made or refused, leaves a record"; of two
    concurrent promotes "the other is refused ("lost the race and changed nothing")". The loser is a
    refused promotion (PromotionLost is a PromotionRefused; the Kubeflow step reports it as "not
    promoted"), yet the lock is taken before the record starts, so it leaves none."""
    name = "hsnet-race"
    a, ma, _ = evaluated(1)
    register(a, ma, "sample", name=name)
    # the other promotion holds the lock, as _promotion_lock takes it
    MlflowClient(local_mlflow).create_registered_model(name + LOCK_SUFFIX, tags={"holder": "other pid 1"})
    with pytest.raises(PromotionLost):
        promote(name)
    rows = promotion_history(name)
    assert [(r["action"], r["outcome"]) for r in rows] == [("promote", "refused")], rows


def test_history_a_refused_rollback_with_deploy_is_recorded_as_without(local_mlflow, evaluated, monkeypatch):
    """`hsnet promote --rollback` records a refused rollback (no 'previous'); `--rollback --deploy`
    (deploy.rollback_production) refuses the same rollback in registry.rollback_target before any
    record starts: "Each promotion and rollback, made or refused, leaves a record"."""
    from hsnet import deploy

    name = "hsnet-rb"
    a, ma, _ = evaluated(1)
    register(a, ma, "sample", name=name)
    promote(name)  # production 1, no previous
    with pytest.raises(HSNetError, match="no 'previous'"):
        rollback(name)
    assert [r["action"] for r in promotion_history(name)] == ["rollback", "promote"]  # recorded, as promised
    monkeypatch.setattr(deploy, "rollback", lambda *a, **k: pytest.fail("no traffic change expected"))
    with pytest.raises(HSNetError, match="no 'previous'"):
        deploy.rollback_production(name)
    assert [r["action"] for r in promotion_history(name)] == ["rollback", "rollback", "promote"]


def test_history_an_unchanged_or_refused_promotion_records_previous_as_it_stands(local_mlflow, evaluated):
    """promotion_history: "production and previous after it (versions, None where there was none)".
    After v1 -> v2, 'previous' is version 1; a promotion of v2 again ("already production") or a
    refused one leaves it there, yet their records say previous None (_recorded sets 'previous' only
    when the decision moved production), so --history reads as if there were no version to roll back to."""
    name = "hsnet-prev"
    a, ma, _ = evaluated(1)
    register(a, ma, "sample", name=name)
    promote(name)
    b, mb, _ = evaluated(0)
    register(b, mb, "sample", name=name)
    promote(name, min_delta=-1.0)  # v2 -> production, previous -> v1
    client = MlflowClient(local_mlflow)
    assert str(client.get_model_version_by_alias(name, "previous").version) == "1"
    assert promote(name)["promoted"] is False  # "version 2 is already production"
    c, mc, _ = evaluated(0)
    register(c, mc, "sample", name=name)
    with pytest.raises(PromotionRefused):
        promote(name, min_delta=1.0)
    assert str(client.get_model_version_by_alias(name, "previous").version) == "1"  # nothing moved
    rows = promotion_history(name)
    assert [r["outcome"] for r in rows[:2]] == ["refused", "unchanged"]
    assert [(r["production"], r["previous"]) for r in rows[:2]] == [(2, 1), (2, 1)], rows[:2]


# --- 2. caches keyed by library versions ----------------------------------------------------------

@pytest.mark.parametrize("library", ["torch", "torchvision", "facenet-pytorch"])
def test_crops_without_a_detector_are_not_cut_again_after_a_detector_library_upgrade(library, tmp_path,
                                                                                      monkeypatch):
    """crop.LIBRARIES: "the libraries a crop's pixels depend on: decoding and resizing (Pillow,
    numpy), the detector (torch, torchvision, facenet-pytorch)". With ``detector: none`` (params.yaml's
    rafdb, ferg and sample: 15k and 55k photos) there is no detector: the pixels can't depend on torch,
    yet a torch (or CUDA build) upgrade throws the whole crop record away and cuts everything again."""
    from importlib import metadata

    import hsnet.data.crop as crop_mod
    from hsnet.params import CropParams

    from tests.test_library_versions import two_photos

    manifest = two_photos(tmp_path)
    # independent of the record: no detector is ever built for these crops
    monkeypatch.setattr(crop_mod, "Detector", lambda *a, **k: pytest.fail("detector: none built a detector"))
    settings = CropParams(size=32, no_face="center", detector="none")
    assert crop_mod.crop(manifest, tmp_path / "photos", tmp_path / "out", settings=settings,
                         progress=False)["processed"] == 2
    real = metadata.version
    monkeypatch.setattr(metadata, "version", lambda n: "99.0.0" if n == library else real(n))
    again = crop_mod.crop(manifest, tmp_path / "photos", tmp_path / "out", settings=settings, progress=False)
    assert again["reused"] == 2 and again["processed"] == 0, again


# --- 4. a guard's verdict kept --------------------------------------------------------------------

def _verdict_params(tmp_path, train: str):
    from tests.train.test_learning import _params

    return _params(tmp_path, train)


def test_verdict_reached_in_half_precision_does_not_stop_a_float32_retry(tiny_data, tmp_path, monkeypatch):
    """The verdict's key is data, settings, code and stem file; not the device or its precision
    (pick_device: float16 autocast on a GPU without bf16, bfloat16 on Ampere+, float32 on the CPU), which
    tracking.system_tags itself names as what "change the floating-point sums". A divergence (loss inf
    or NaN) reached under reduced precision is exactly what a retry on another node (KFP places a retry
    anywhere) or `--device cpu` can get past; the verdict now ends that retry before it loads any data,
    saying "With the same data, settings and code it stops there again". Simulated: the first attempt runs
    with bfloat16 autocast on the CPU and its guard reports a divergence; the retry runs in float32."""
    import torch

    import hsnet.train as train_mod
    from hsnet import guards
    from hsnet.device import Setup

    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    out = tmp_path / "run"
    settings = _verdict_params(tmp_path, "lr: 0.001, epochs: 1")
    real_pick, real_check = train_mod.pick_device, guards.check_epoch

    def diverged_in_bf16(row, *a, **k):
        raise guards.NotLearning(f"training diverged at epoch {row['epoch']} (loss inf); "
                                 + guards.TRY.format(lr=row["lr"]), row["epoch"])
    with monkeypatch.context() as m:
        m.setattr(train_mod, "pick_device", lambda name=None: Setup(torch.device("cpu"), torch.bfloat16, False))
        m.setattr(guards, "check_epoch", diverged_in_bf16)
        with pytest.raises(HSNetError, match="diverged at epoch 1"):
            train_mod.train(tiny_data, settings, out, track=False, progress=False, resume="auto")
    assert train_mod.pick_device is real_pick and guards.check_epoch is real_check
    # the retry on a float32 device (the CPU): it trains
    summary = train_mod.train(tiny_data, settings, out, track=False, progress=False, resume="auto", device="cpu")
    assert summary["epochs_run"] == 1


def test_deleting_the_verdict_the_error_names_lets_a_durable_training_train_again(tiny_data, tmp_path, monkeypatch,
                                                                                  s3_server):
    """The verdict's error says "delete {path} to train it anyway". With --checkpoint-uri (hsnet train
    --checkpoint-uri, durable.train: always resume="auto") and a stop before any checkpoint (the blow-up
    after epoch 1, test_verdict's case), the named local file is deleted, and the next start downloads
    the prefix's copy again (restore: no last.pt here) and ends with the same verdict: the advice can't
    be followed, and the prefix's copy is named nowhere."""
    from servers import s3_env

    from hsnet import durable

    for key, value in s3_env(s3_server).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    prefix = "s3://hsnet/checkpoints/attack20a-verdict/sample"
    out = tmp_path / "run"
    settings = _verdict_params(tmp_path, "lr: 30, epochs: 3")  # tests/train/test_verdict.py's BLOWS_UP
    with pytest.raises(HSNetError, match="after epoch 1"):
        durable.train(tiny_data, settings, out, prefix, track=False, progress=False)
    with pytest.raises(HSNetError, match="earlier attempt") as again:
        durable.train(tiny_data, settings, out, prefix, track=False, progress=False)
    import re

    from hsnet.s3 import client, split_uri

    named = str(again.value).split("delete ", 1)[1].split(" to train it anyway")[0]
    files = re.findall(r"(?:s3://)?[^\s,()]*verdict\.json", named)
    assert str(out / "verdict.json") in files, named
    for f in files:  # as the error says: every copy it names
        if f.startswith("s3://"):
            bucket, key = split_uri(f)
            client().delete_object(Bucket=bucket, Key=key)
        else:
            Path(f).unlink(missing_ok=True)
    # trained anyway: the guard judges afresh (its own message, not the kept verdict)
    with pytest.raises(HSNetError, match=r"^training is not learning: the training loss after epoch 1"):
        durable.train(tiny_data, settings, out, prefix, track=False, progress=False)
