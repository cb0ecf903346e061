"""Figures people would rather look at than read: the confusion matrix (evaluate) and the
training curves (train). PNGs written atomically; matplotlib without a display."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .files import BEST
from .io import atomic_path


def plot_confusion(cm: np.ndarray, classes: list[str], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    norm = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(classes), 0.8 + 0.8 * len(classes)))
    ax.imshow(norm, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=45, ha="right")
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("actual")
    ax.set_title(title)
    for i in range(len(classes)):
        for j in range(len(classes)):
            if cm[i, j]:  # empty cells stay blank: only where predictions went is written
                ax.text(j, i, f"{norm[i, j]:.2f}\n({cm[i, j]})", ha="center", va="center", fontsize=7,
                        color="white" if norm[i, j] > 0.5 else "black")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)


def plot_training_curves(history: list[dict], path: Path, title: str, best_epoch: int | None = None) -> None:
    """Loss, accuracy, FGAL's level weights and the learning rate per epoch, the whole run, with
    the epoch ``best.pt`` was taken from marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [h["epoch"] for h in history]
    dot = {"marker": "o", "markersize": 4} if len(epochs) == 1 else {}  # a line through one point draws nothing
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(epochs, [h["loss"] for h in history], label="train", **dot)
    axes[0].plot(epochs, [h["val_loss"] for h in history], label="val", **dot)
    axes[0].set_title("loss")
    axes[0].set_ylabel("cross-entropy loss")
    axes[1].plot(epochs, [h["accuracy"] for h in history], label="train", **dot)
    axes[1].plot(epochs, [h["val_accuracy"] for h in history], label="val", **dot)
    axes[1].set_title("accuracy")
    axes[1].set_ylabel("accuracy")
    for level in "ABC":
        if f"lambda_{level}" in (history[0] if history else {}):
            axes[2].plot(epochs, [h[f"lambda_{level}"] for h in history], label=rf"$\tilde{{\lambda}}_{level}$",
                         **dot)
    ax_lr = axes[2].twinx()
    ax_lr.plot(epochs, [h["lr"] for h in history], "k:", label="lr", **dot)
    ax_lr.set_yscale("log")
    ax_lr.set_ylabel("learning rate (dotted)")
    axes[2].set_ylabel("FGAL level weight")
    axes[2].set_title("FGAL level weights and learning rate")
    if best_epoch:
        for ax in axes:
            ax.axvline(best_epoch, color="grey", linestyle="--", linewidth=0.8,
                       label=f"{BEST} (epoch {best_epoch})" if ax is axes[1] else None)
    for ax in axes:
        ax.set_xlabel("epoch")
        if ax.get_legend_handles_labels()[0]:  # without FGAL there are no level weights to name
            ax.legend(loc="best", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
