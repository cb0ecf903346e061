"""Evaluation with the paper's metrics (Sect. 4.3): overall accuracy (eq. 22) and mean
per-class accuracy (eq. 23), the confusion matrix (Fig. 6), per-image predictions, the
training curves, and a comparison with the paper's number for the dataset (Tables 2-5).
"""

from __future__ import annotations

import csv
import logging
import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from . import paper as paper_mod
from . import tracking
from .data.datasets import check_classes
from .data.manifest import MANIFEST, TEST, crop_settings, read_manifest
from .files import COMPARISON, CONFUSION, METRICS_FILE, PREDICTIONS
from .io import atomic_path, check_creatable, clean_stale_tmp, only_writer, write_json, write_text
from .plots import plot_confusion
from . import checkpoint as checkpoint_mod
from .device import forward, pick_device, place
from .params import EvaluateParams, section
from .tensors import Batches, check_nonempty, load_split

log = logging.getLogger(__name__)

# evaluate's output folder
OUTPUTS = (METRICS_FILE, PREDICTIONS, CONFUSION, COMPARISON)


def confusion_matrix(actual, predicted, num_classes: int) -> np.ndarray:
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(actual, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return cm


def metrics_from_confusion(cm: np.ndarray, classes: list[str]) -> dict:
    """Eq. 22: sum TP_j / N; eq. 23: mean over classes of TP_j / N_j (classes with N_j > 0; see
    docs/paper-notes.md, "Mean accuracy"). A class with no test image has no accuracy: None, so the
    per-class figures average to the mean accuracy reported."""
    tp = np.diag(cm).astype(np.float64)
    n_j = cm.sum(axis=1).astype(np.float64)
    present = n_j > 0
    per_class = np.divide(tp, n_j, out=np.zeros_like(tp), where=present)
    return {
        "accuracy": float(tp.sum() / max(cm.sum(), 1)),
        "mean_accuracy": float(per_class[present].mean()) if present.any() else 0.0,
        "classes": list(classes),  # the confusion matrix's row/column order
        "per_class_accuracy": {c: float(a) if tested else None for c, a, tested in zip(classes, per_class, present)},
        "support": {c: int(n) for c, n in zip(classes, n_j)},
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_normalized": np.divide(cm, n_j[:, None], out=np.zeros(cm.shape),
                                                 where=present[:, None]).round(4).tolist(),
    }


def comparison_markdown(dataset: str, metrics: dict) -> str:
    acc, macc = metrics["accuracy"] * 100, metrics["mean_accuracy"] * 100
    paper = paper_mod.RESULTS.get(dataset)
    split, flips = metrics.get("split", TEST), bool(metrics.get("tta_hflip"))
    how = (f"Measured on the {split} split" + (" (the paper's figures are of the test split)" if split != TEST else "")
           + ("; each image scored with its mirror image averaged in (evaluate.tta_hflip; the paper scores each "
              "image once)" if flips else "") + ".")
    lines = [f"## HSNet on {dataset}", "", how, "",
             "| | Acc. (%) | mAcc. (%) |", "|---|---|---|",
             f"| this run | {acc:.2f} | {macc:.2f} |"]
    if paper:
        table, p_acc, p_macc = paper
        lines.append(f"| paper ({paper_mod.REFERENCE}, {table}) | {p_acc:.2f} | {p_macc if p_macc is not None else '–'} |")
        lines.append(f"| difference | {paper_mod.difference(acc, p_acc)} | "
                     f"{paper_mod.difference(macc, p_macc) if p_macc is not None else '–'} |")
    else:
        lines.append(f"| paper | – (the paper does not report {dataset}) | – |")
    return "\n".join(lines) + "\n"


@torch.no_grad()
def predict_split(model, split, setup, batch_size: int, tta_hflip: bool = False) -> np.ndarray:
    """Class probabilities (N, C) for a Split, in order."""
    model.eval()
    probs = []
    for x, _ in Batches(split, torch.arange(len(split)), batch_size, setup.device, drop_singleton=False):
        p = forward(model, x, setup).softmax(1)
        if tta_hflip:
            p = (p + forward(model, x.flip(-1), setup).softmax(1)) / 2
        probs.append(p.cpu())
    return torch.cat(probs).numpy()


@tracking.as_found
def evaluate(checkpoint: str | os.PathLike, data_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
             split: str = TEST, settings: EvaluateParams | None = None, device: str | None = None,
             track: bool = True, batch_size: int = 64, progress: bool = True) -> dict:
    """Evaluate ``checkpoint`` on ``split`` of the cropped dataset at ``data_dir``; write the outputs."""
    out_dir = check_creatable(out_dir, "--out")  # before any work, creating nothing
    clean_stale_tmp(out_dir)
    # read once: the weights, the hash (it binds the figures to this file: hsnet register checks it) and
    # the upload are of one file
    ckpt, ckpt_bytes, sha = checkpoint_mod.read(checkpoint)
    meta = ckpt["meta"]
    classes, dataset = meta["classes"], meta["dataset"]
    # the settings given, else those the model was trained with
    tta_hflip = (settings or section(EvaluateParams, meta["params"].get("evaluate"))).tta_hflip
    data_dir = Path(data_dir)
    manifest = data_dir / MANIFEST
    all_rows = read_manifest(manifest)
    check_classes(all_rows, classes, manifest, f"checkpoint {checkpoint} was trained on",
                  "Evaluate a checkpoint trained on this dataset, or give the crops of the checkpoint's dataset")
    rows = [r for r in all_rows if r["split"] == split]
    check_nonempty(split, rows, manifest)
    setup = pick_device(device)
    model = place(checkpoint_mod.model_from(ckpt), setup)
    cut_with, trained_on = crop_settings(data_dir), meta["params"].get("crop")
    if cut_with is not None and trained_on is not None and cut_with != trained_on:
        log.warning("the crops in %s were cut with %s, the model's training crops with %s (as predict and the "
                    "server cut faces): these figures are not the served model's; evaluate on crops cut as the "
                    "model's (hsnet crop with those settings)", data_dir, cut_with, trained_on)
    if tta_hflip:
        log.warning("evaluate.tta_hflip: each image is scored with its mirror image averaged in, which hsnet "
                    "predict, the registered model and the server never do: these figures are not the served "
                    "model's (the promotion gate compares them only with figures measured the same way)")
    data = load_split(rows, data_dir, int(meta["input_size"]), progress=progress)
    probs = predict_split(model, data, setup, batch_size, tta_hflip)
    actual = data.labels.numpy()
    predicted = probs.argmax(1)
    metrics = metrics_from_confusion(confusion_matrix(actual, predicted, len(classes)), classes)
    metrics.update(dataset=dataset, split=split, images=len(rows), tta_hflip=tta_hflip,
                   checkpoint_epoch=ckpt["state"]["best_epoch"] or ckpt["state"]["epoch"],
                   data_version=tracking.data_version(manifest), train_data_version=meta["data_version"],
                   model=meta["model"], checkpoint_sha256=sha, mlflow_run_id=None)
    out_dir.mkdir(parents=True, exist_ok=True)
    # one evaluation writes and records this folder at a time: another's files would be logged as its own
    with only_writer(out_dir, "hsnet evaluate", "wait for it to end, or evaluate into another --out"):
        if not track:
            _write_outputs(out_dir, metrics, data, actual, predicted, probs, classes, dataset, split)
            return metrics
        import mlflow

        # the run records the checkpoint's hash and the test data version as params (immutable):
        # hsnet register and promote take the figures from here, not from an editable metrics.json
        tags = {"dataset": dataset, "step": "evaluate", "git_commit": tracking.git_commit(),
                "data_version": metrics["data_version"], "test_data_version": metrics["data_version"],
                "checkpoint_sha256": sha, **tracking.trained_by(meta)}
        params = {"checkpoint": str(checkpoint), "checkpoint_sha256": sha, "split": split,
                  "test_data_version": metrics["data_version"], "tta_hflip": tta_hflip,
                  **{f"model.{k}": v for k, v in meta["model"].items()}}
        with tracking.run(f"evaluate-{dataset}", params=params, tags=tags, device=setup.device) as active:
            metrics["mlflow_run_id"] = active.info.run_id
            _write_outputs(out_dir, metrics, data, actual, predicted, probs, classes, dataset, split)
            mlflow.log_metrics({"test_accuracy": metrics["accuracy"],
                                "test_mean_accuracy": metrics["mean_accuracy"],
                                **{f"test_accuracy_{c}": a for c, a in metrics["per_class_accuracy"].items()
                                   if a is not None}})
            for name in OUTPUTS:
                mlflow.log_artifact(str(out_dir / name))
            with tempfile.TemporaryDirectory() as tmp:  # the bytes evaluated, not the file as it is now
                copy = Path(tmp) / Path(checkpoint).name
                copy.write_bytes(ckpt_bytes)
                mlflow.log_artifact(str(copy), artifact_path="checkpoint")
        return metrics


def _write_outputs(out_dir: Path, metrics: dict, data, actual, predicted, probs, classes, dataset, split) -> None:
    write_json(out_dir / METRICS_FILE, metrics)
    with atomic_path(out_dir / PREDICTIONS) as tmp, open(tmp, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["path", "actual", "predicted", "confidence"])
        for path, a, p, pr in zip(data.paths, actual, predicted, probs):
            w.writerow([path, classes[a], classes[p], f"{pr[p]:.4f}"])
    title = f"HSNet on {dataset} ({split}): acc {metrics['accuracy']:.2%}, mAcc {metrics['mean_accuracy']:.2%}"
    plot_confusion(np.array(metrics["confusion_matrix"]), classes, out_dir / CONFUSION, title)
    write_text(out_dir / COMPARISON, comparison_markdown(dataset, metrics))
    log.info("%s %s: accuracy %.4f, mean accuracy %.4f on %d images -> %s", dataset, split,
             metrics["accuracy"], metrics["mean_accuracy"], metrics["images"], out_dir)

