"""Evaluation with the paper's metrics (Sect. 4.3): overall accuracy (eq. 22) and mean
per-class accuracy (eq. 23), the confusion matrix (Fig. 6), per-image predictions, the
training curves, and a comparison with the paper's number for the dataset (Tables 2-5).
"""

from __future__ import annotations

import csv
import logging
import os
from pathlib import Path

import numpy as np
import torch

from . import tracking
from .data.manifest import read_manifest
from .io import atomic_path, write_json, write_text
from .plots import plot_confusion
from .tensors import Batches, check_nonempty, load_split, normalize
from .train import load_checkpoint, model_from_checkpoint, pick_device

log = logging.getLogger(__name__)

PAPER_RESULTS = {  # Tables 2-5: (accuracy, mean accuracy) in %
    "rafd": (99.88, None),
    "kdef": (93.35, None),
    "ferg": (99.35, None),
    "rafdb": (86.67, 76.89),
}


def confusion_matrix(actual, predicted, num_classes: int) -> np.ndarray:
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(actual, dtype=np.int64), np.asarray(predicted, dtype=np.int64)), 1)
    return cm


def metrics_from_confusion(cm: np.ndarray, classes: list[str]) -> dict:
    """Eq. 22: sum TP_j / N; eq. 23: mean over classes of TP_j / N_j (classes with N_j > 0)."""
    tp = np.diag(cm).astype(np.float64)
    n_j = cm.sum(axis=1).astype(np.float64)
    present = n_j > 0
    per_class = np.divide(tp, n_j, out=np.zeros_like(tp), where=present)
    return {
        "accuracy": float(tp.sum() / max(cm.sum(), 1)),
        "mean_accuracy": float(per_class[present].mean()) if present.any() else 0.0,
        "classes": list(classes),  # the confusion matrix's row/column order
        "per_class_accuracy": {c: float(a) for c, a in zip(classes, per_class)},
        "support": {c: int(n) for c, n in zip(classes, n_j)},
        "confusion_matrix": cm.tolist(),
        "confusion_matrix_normalized": np.divide(cm, n_j[:, None], out=np.zeros(cm.shape),
                                                 where=present[:, None]).round(4).tolist(),
    }


def comparison_markdown(dataset: str, metrics: dict) -> str:
    acc, macc = metrics["accuracy"] * 100, metrics["mean_accuracy"] * 100
    paper = PAPER_RESULTS.get(dataset)
    lines = [f"## HSNet on {dataset}", "", "| | Acc. (%) | mAcc. (%) |", "|---|---|---|",
             f"| this run | {acc:.2f} | {macc:.2f} |"]
    if paper:
        p_acc, p_macc = paper
        lines.append(f"| paper (Fan et al. 2022) | {p_acc:.2f} | {p_macc if p_macc is not None else '–'} |")
        lines.append(f"| difference | {acc - p_acc:+.2f} | "
                     f"{f'{macc - p_macc:+.2f}' if p_macc is not None else '–'} |")
    else:
        lines.append(f"| paper | – (the paper does not report {dataset}) | – |")
    return "\n".join(lines) + "\n"


@torch.no_grad()
def predict_split(model, split, setup, batch_size: int, tta_hflip: bool = False) -> np.ndarray:
    """Class probabilities (N, C) for a Split, in order."""
    model.eval()
    probs = []
    for x, _ in Batches(split, torch.arange(len(split)), batch_size, setup.device, drop_singleton=False):
        x = normalize(x)
        if setup.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with torch.autocast(setup.device.type, dtype=setup.amp_dtype, enabled=setup.amp_dtype is not None):
            p = model(x).float().softmax(1)
            if tta_hflip:
                p = (p + model(x.flip(-1)).float().softmax(1)) / 2
        probs.append(p.cpu())
    return torch.cat(probs).numpy()


def evaluate(checkpoint: str | os.PathLike, data_dir: str | os.PathLike, out_dir: str | os.PathLike, *,
             split: str = "test", tta_hflip: bool | None = None, device: str | None = None,
             track: bool = True, batch_size: int = 64, progress: bool = True) -> dict:
    """Evaluate ``checkpoint`` on ``split`` of the cropped dataset at ``data_dir``; write the outputs."""
    ckpt = load_checkpoint(checkpoint)
    meta = ckpt["meta"]
    classes, dataset = meta["classes"], meta["dataset"]
    if tta_hflip is None:
        tta_hflip = bool(meta["params"].get("evaluate", {}).get("tta_hflip", False))
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    manifest = data_dir / "manifest.csv"
    rows = [r for r in read_manifest(manifest) if r["split"] == split]
    check_nonempty(split, rows, manifest)
    setup = pick_device(device)
    model = model_from_checkpoint(ckpt).to(setup.device)
    if setup.channels_last:
        model = model.to(memory_format=torch.channels_last)
    data = load_split(rows, data_dir, int(meta["input_size"]), progress=progress)
    probs = predict_split(model, data, setup, batch_size, tta_hflip)
    actual = data.labels.numpy()
    predicted = probs.argmax(1)
    metrics = metrics_from_confusion(confusion_matrix(actual, predicted, len(classes)), classes)
    metrics.update(dataset=dataset, split=split, images=len(rows), tta_hflip=tta_hflip,
                   checkpoint_epoch=ckpt["state"]["best_epoch"] or ckpt["state"]["epoch"],
                   data_version=tracking.data_version(manifest), train_data_version=meta["data_version"],
                   model=meta["model"])
    out_dir.mkdir(parents=True, exist_ok=True)
    write_json(out_dir / "metrics.json", metrics)
    with atomic_path(out_dir / "predictions.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["path", "actual", "predicted", "confidence"])
        for path, a, p, pr in zip(data.paths, actual, predicted, probs):
            w.writerow([path, classes[a], classes[p], f"{pr[p]:.4f}"])
    title = f"HSNet on {dataset} ({split}): acc {metrics['accuracy']:.2%}, mAcc {metrics['mean_accuracy']:.2%}"
    plot_confusion(np.array(metrics["confusion_matrix"]), classes, out_dir / "confusion_matrix.png", title)
    write_text(out_dir / "comparison.md", comparison_markdown(dataset, metrics))
    log.info("%s %s: accuracy %.4f, mean accuracy %.4f on %d images -> %s", dataset, split,
             metrics["accuracy"], metrics["mean_accuracy"], len(rows), out_dir)
    if track:
        import mlflow

        tags = {"dataset": dataset, "step": "evaluate", "git_commit": tracking.git_commit(),
                "data_version": metrics["data_version"], "train_run_id": str(meta.get("mlflow_run_id"))}
        params = {"checkpoint": str(checkpoint), "split": split, "tta_hflip": tta_hflip,
                  **{f"model.{k}": v for k, v in meta["model"].items()}}
        with tracking.run(f"evaluate-{dataset}", params=params, tags=tags):
            mlflow.log_metrics({"test_accuracy": metrics["accuracy"],
                                "test_mean_accuracy": metrics["mean_accuracy"],
                                **{f"test_accuracy_{c}": a for c, a in metrics["per_class_accuracy"].items()}})
            for name in ("metrics.json", "predictions.csv", "confusion_matrix.png", "comparison.md"):
                mlflow.log_artifact(str(out_dir / name))
            mlflow.log_artifact(str(checkpoint), artifact_path="checkpoint")
    return metrics

