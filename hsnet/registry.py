"""The MLflow model registry: register evaluated models, promote the better one, roll back.

One registered model per dataset (``hsnet-<dataset>``). Aliases, not the deprecated stages:

* ``candidate``: the newest registered version;
* ``production``: what users load (``models:/hsnet-rafdb@production``);
* ``previous``: the production version before the last promotion (``--rollback`` target).

Promotion is gated: the candidate's test metric must beat production's by ``min_delta``
on the same test data (the evaluation's data version); ``force`` overrides and is recorded.
Aliases are moved, never deleted, so concurrent promotions can't leave the model
without ``production``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from importlib import metadata
from pathlib import Path

from . import tracking
from .errors import HSNetError
from .io import sha256_file

log = logging.getLogger(__name__)

CANDIDATE, PRODUCTION, PREVIOUS = "candidate", "production", "previous"
METRICS = {"accuracy": "test_accuracy", "mean_accuracy": "test_mean_accuracy"}
REQUIREMENTS = ("torch", "torchvision", "facenet-pytorch", "numpy", "pandas", "pillow", "pyyaml", "tqdm", "mlflow")


class PromotionRefused(HSNetError):
    """The candidate is not promoted; the message says why and what to do."""


def default_name(dataset: str) -> str:
    return f"hsnet-{dataset}"


def _client():
    import mlflow

    tracking.connect()
    return mlflow.MlflowClient()


def _requirements() -> list[str]:
    out = []
    for dist in REQUIREMENTS:
        try:
            out.append(f"{dist}=={metadata.version(dist).split('+')[0]}")
        except metadata.PackageNotFoundError:
            out.append(dist)
    return out


def _input_example(size: int):
    """One drawn face, PNG-encoded: what a client sends."""
    import io

    import numpy as np
    import pandas as pd

    from .data.sample import draw_face

    buf = io.BytesIO()
    draw_face("aia", "joy", np.random.default_rng(0), size=size).save(buf, format="PNG")
    return pd.DataFrame({"image": [buf.getvalue()]})


def _alias_version(client, name: str, alias: str):
    from mlflow.exceptions import MlflowException

    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def register(checkpoint: str | os.PathLike, metrics: str | os.PathLike, dataset: str, *,
             name: str | None = None) -> dict:
    """Log ``checkpoint`` as a pyfunc and register it as a new version of ``name``, alias ``candidate``.

    Registering the same checkpoint again returns the existing version.
    """
    import mlflow
    import torch

    from .pyfunc import signature
    from .train import for_inference, load_checkpoint

    checkpoint, metrics_path = Path(checkpoint), Path(metrics)
    ckpt = load_checkpoint(checkpoint)
    meta = ckpt["meta"]
    if not metrics_path.is_file():
        raise HSNetError(f"--metrics {metrics_path} does not exist; run hsnet evaluate first")
    try:
        m = json.loads(metrics_path.read_text())
        test_acc, test_macc = float(m["accuracy"]), float(m["mean_accuracy"])
    except (ValueError, KeyError, TypeError) as exc:
        raise HSNetError(f"--metrics {metrics_path} is not an hsnet evaluate metrics.json ({exc})") from exc
    if meta["dataset"] != dataset or m.get("dataset") != dataset:
        raise HSNetError(f"--dataset {dataset}: the checkpoint is for {meta['dataset']!r} and the metrics "
                         f"for {m.get('dataset')!r}")
    if m.get("train_data_version") not in (None, meta["data_version"]):
        raise HSNetError(f"{metrics_path} evaluated a checkpoint trained on {m.get('train_data_version')}, "
                         f"but {checkpoint} was trained on {meta['data_version']}: evaluate this checkpoint")
    name = name or default_name(dataset)
    sha = sha256_file(checkpoint)
    client = _client()
    from mlflow.exceptions import MlflowException

    try:
        existing = client.search_model_versions(f"name='{name}'")
    except MlflowException:
        existing = []
    for mv in existing:
        if mv.tags.get("checkpoint_sha256") == sha:
            log.info("%s is already registered as %s version %s; not registering it again", checkpoint,
                     name, mv.version)
            return {"name": name, "version": int(mv.version), "model_uri": f"models:/{name}/{mv.version}",
                    "run_id": mv.run_id, "already_registered": True, "test_accuracy": test_acc,
                    "test_mean_accuracy": test_macc}

    tags = {
        "dataset": dataset, "test_accuracy": f"{test_acc:.6f}", "test_mean_accuracy": f"{test_macc:.6f}",
        "test_split": str(m.get("split", "test")), "test_data_version": str(m.get("data_version")),
        "data_version": meta["data_version"], "git_commit": tracking.git_commit(),
        "train_run_id": str(meta.get("mlflow_run_id")), "checkpoint_sha256": sha,
        **{f"model.{k}": str(v) for k, v in meta["model"].items()},
    }
    with tempfile.TemporaryDirectory(prefix="hsnet-register-") as tmp:
        slim = Path(tmp) / "model.pt"  # last.pt may be registered too: drop its optimizer state
        torch.save(for_inference(ckpt), slim)
        code = Path(tmp) / "hsnet"  # the package's source travels with the model (no caches)
        shutil.copytree(Path(__file__).parent, code, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        run_tags = {"step": "register", **{k: v for k, v in tags.items() if k != "checkpoint_sha256"}}
        with tracking.run(f"register-{dataset}", params={"checkpoint": str(checkpoint), "name": name},
                          tags=run_tags) as active:
            mlflow.log_metrics({"test_accuracy": test_acc, "test_mean_accuracy": test_macc})
            with warnings.catch_warnings():  # "add type hints": the signature below is explicit
                warnings.filterwarnings("ignore", message=".*type hint", category=UserWarning)
                info = mlflow.pyfunc.log_model(
                    name="model", python_model=str(Path(__file__).with_name("mlflow_model.py")),
                    artifacts={"checkpoint": str(slim)}, code_paths=[str(code)],
                    signature=signature(meta["classes"]), input_example=_input_example(int(meta["input_size"])),
                    pip_requirements=_requirements())
            run_id = active.info.run_id
    mv = mlflow.register_model(info.model_uri, name, tags=tags)
    client.update_model_version(name, mv.version, description=(
        f"HSNet on {dataset}: test accuracy {test_acc:.4f}, mean accuracy {test_macc:.4f} "
        f"(test data {tags['test_data_version']}); trained in run {tags['train_run_id']}"))
    client.set_registered_model_alias(name, CANDIDATE, mv.version)
    log.info("registered %s version %s (alias %s): test accuracy %.4f", name, mv.version, CANDIDATE, test_acc)
    return {"name": name, "version": int(mv.version), "model_uri": f"models:/{name}/{mv.version}",
            "run_id": run_id, "already_registered": False, "test_accuracy": test_acc,
            "test_mean_accuracy": test_macc}


def promote(name: str, *, version: int | str | None = None, metric: str = "accuracy", min_delta: float = 0.0,
            force: bool = False) -> dict:
    """Point ``production`` at ``version`` (default: the ``candidate`` alias) if it is better.

    Raises :class:`PromotionRefused` (production unchanged) when it is not, or when the two
    were tested on different data, unless ``force``.
    """
    if metric not in METRICS:
        raise HSNetError(f"--metric must be one of {', '.join(METRICS)}, got {metric!r}")
    client = _client()
    from mlflow.exceptions import MlflowException

    try:
        if version is None:
            cand = _alias_version(client, name, CANDIDATE)
            if cand is None:
                raise HSNetError(f"{name} has no '{CANDIDATE}' version: register one (hsnet register) "
                                 "or give --version")
        else:
            cand = client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise HSNetError(f"{name} version {version}: not found in the registry at "
                         f"{tracking.tracking_uri()} ({exc.message})") from exc
    prod = _alias_version(client, name, PRODUCTION)
    tag = METRICS[metric]
    decision = {"name": name, "candidate": int(cand.version), "metric": metric, "forced": False,
                "previous": int(prod.version) if prod else None}
    if prod is not None and str(prod.version) == str(cand.version):
        decision.update(promoted=False, reason=f"version {cand.version} is already production")
        return decision
    if prod is not None:
        c_val, p_val = float(cand.tags.get(tag, "nan")), float(prod.tags.get(tag, "nan"))
        decision.update(candidate_value=c_val, production_value=p_val)
        reasons = []
        if cand.tags.get("test_data_version") != prod.tags.get("test_data_version"):
            reasons.append(f"version {cand.version} was tested on {cand.tags.get('test_data_version')} and "
                           f"production (version {prod.version}) on {prod.tags.get('test_data_version')}: "
                           "the metrics are not comparable")
        elif not c_val >= p_val + min_delta:
            reasons.append(f"version {cand.version} {metric} {c_val:.4f} does not beat production "
                           f"(version {prod.version}) {p_val:.4f} by at least {min_delta}")
        if reasons and not force:
            raise PromotionRefused("; ".join(reasons) + ". Production is unchanged; use --force to promote anyway")
        if reasons:
            decision.update(forced=True, reason="; ".join(reasons))
    _move(client, name, cand.version, prod)
    client.set_model_version_tag(name, cand.version, "promoted_at", time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                                   time.gmtime()))
    if decision["forced"]:
        client.set_model_version_tag(name, cand.version, "promotion_forced", decision["reason"][:5000])
    decision.update(promoted=True, production=int(cand.version))
    decision.setdefault("reason", "no production version yet" if prod is None else
                        f"{metric} beats production by at least {min_delta}")
    log.info("%s: production -> version %s (%s)", name, cand.version, decision["reason"])
    return decision


def _move(client, name: str, new_version, old) -> None:
    """``previous`` -> the old production, then ``production`` -> ``new_version``.

    Each alias update is one atomic write in the registry; production is overwritten, never
    removed, so a reader always finds one. A concurrent promotion that wins is reported.
    """
    if old is not None:
        client.set_registered_model_alias(name, PREVIOUS, old.version)
    client.set_registered_model_alias(name, PRODUCTION, new_version)
    now = _alias_version(client, name, PRODUCTION)
    if now is None or str(now.version) != str(new_version):
        raise HSNetError(f"{name}: another promotion moved production to version "
                         f"{now.version if now else None} at the same time; check and retry")


def rollback(name: str) -> dict:
    """Put the ``previous`` version back in production (and the rolled-back one becomes ``previous``)."""
    client = _client()
    prev, prod = _alias_version(client, name, PREVIOUS), _alias_version(client, name, PRODUCTION)
    if prev is None:
        raise HSNetError(f"{name} has no '{PREVIOUS}' version to roll back to")
    if prod is not None and str(prod.version) == str(prev.version):
        raise HSNetError(f"{name}: '{PREVIOUS}' is already production (version {prev.version})")
    _move(client, name, prev.version, prod)
    if prod is not None:
        client.set_model_version_tag(name, prod.version, "rolled_back_at",
                                     time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    log.info("%s: rolled back production to version %s", name, prev.version)
    return {"name": name, "production": int(prev.version), "previous": int(prod.version) if prod else None,
            "promoted": True, "rollback": True}
