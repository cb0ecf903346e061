"""Checks that stop a training run that can't end well, with what to try instead.

:func:`check_epoch` runs after every epoch (``hsnet.train``'s epoch loop). It stops a run that

* diverged: a non-finite training loss;
* blew up: a training loss far above ln C after an epoch. A model that guesses uniformly over
  C classes scores ln C (1.95 for 7); HSNet at the paper's lr 0.01 before the fix of
  docs/paper-notes.md ("Learning rate 0.01") scored 828 after its first epoch on the sample;
* is not learning: a validation accuracy at chance for :func:`chance_window` epochs in a row
  (the scheduler's patience, then :data:`CHANCE_EPOCHS` more).

Pure functions of the epoch records (the ``history.json`` rows), so they can be checked on
hand-made histories.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence

from .errors import HSNetError
from .params import SchedulerParams


class NotLearning(HSNetError):
    """A guard's verdict on the training, after epoch ``epoch``: the same data, settings and code
    reach it again (hsnet.train keeps it, and a retry of the same training ends with it)."""

    def __init__(self, message: str, epoch: int):
        super().__init__(message)
        self.epoch = epoch

LOSS_FACTOR = 10.0  # a training loss above LOSS_FACTOR * ln C after an epoch stops the run
CHANCE_EPOCHS = 10  # epochs at chance, after the scheduler's patience, that stop the run (chance_window)
CHANCE_Z = 2.0  # "at chance": at most chance + CHANCE_Z standard errors of a guesser's accuracy

TRY = ("Try a lower train.lr (it is {lr:g} now), check that the manifest's labels match the images "
       "(hsnet validate), and with KTL that model.stem_weights holds the VGGFace2 weights.")


def chance_window(patience: int) -> int:
    """How many epochs in a row at chance stop a run whose scheduler waits ``patience`` epochs
    (train.scheduler.patience) before lowering the lr: first the scheduler's own wait, so a run
    the paper's recipe would carry on at a lower lr is not ended before the lr could be lowered
    (the paper: 20 epochs of 500), then :data:`CHANCE_EPOCHS` more at the lowered lr.
    ReduceLROnPlateau lowers the lr once more than ``patience`` epochs in a row have not beaten
    the best, and the first epoch sets the best: with a flat loss, after epoch ``patience + 2``."""
    return patience + 2 + CHANCE_EPOCHS


def chance_level(num_classes: int, val_labels: Sequence[int] | None = None) -> tuple[float, float]:
    """(chance accuracy, the highest validation accuracy still counted as chance).

    Chance is what always answering the most frequent validation class scores (1/C on a balanced
    set); the threshold adds ``CHANCE_Z`` standard errors of that guesser's accuracy on as many
    images (``sqrt(p (1 - p) / n)``), or 0.02 when the labels are not given.
    """
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}")
    counts = Counter(int(v) for v in val_labels) if val_labels is not None else Counter()
    n = sum(counts.values())
    if not n:
        p = 1.0 / num_classes
        return p, p + 0.02
    p = max(max(counts.values()) / n, 1.0 / num_classes)
    return p, p + CHANCE_Z * math.sqrt(p * (1 - p) / n)


def check_epoch(row: dict, history: list[dict], num_classes: int, *, val_labels: Sequence[int] | None = None,
                loss_factor: float = LOSS_FACTOR, chance_epochs: int | None = None) -> None:
    """Raise :class:`NotLearning` saying what to try when the epoch ``row`` (with ``history``, the
    epochs before it) shows a run that diverged, blew up or is not learning.

    ``row`` and ``history`` hold ``epoch``, ``loss`` (training), ``val_accuracy`` and ``lr``;
    ``val_labels`` (the validation set's labels) set the chance level, else it is 1/C.
    ``chance_epochs``: epochs in a row at chance that stop the run (default: :func:`chance_window`
    of the paper's patience; 0: never). A validation split too small to tell chance from a perfect
    score (the threshold at 1 or above: about 3 images or fewer) gets no chance verdict.
    """
    if chance_epochs is None:
        chance_epochs = chance_window(SchedulerParams().patience)
    epoch, loss, lr = row["epoch"], float(row["loss"]), float(row.get("lr", float("nan")))
    if not math.isfinite(loss):
        raise NotLearning(f"training diverged at epoch {epoch} (loss {loss}); " + TRY.format(lr=lr), epoch)
    ceiling = loss_factor * math.log(num_classes)
    if loss > ceiling:
        raise NotLearning(
            f"training is not learning: the training loss after epoch {epoch} is {loss:.4g}, far above "
            f"ln {num_classes} = {math.log(num_classes):.2f} (what guessing scores; the limit is {ceiling:.3g}). "
            + TRY.format(lr=lr), epoch)
    if chance_epochs <= 0:
        return
    recent = (list(history) + [row])[-chance_epochs:]
    chance, at_most = chance_level(num_classes, val_labels)
    if at_most >= 1.0:  # a validation split so small that even a perfect score is within chance: no verdict
        return
    if len(recent) == chance_epochs and all(float(r["val_accuracy"]) <= at_most for r in recent):
        raise NotLearning(
            f"training is not learning: the validation accuracy stayed at chance ({chance:.3f}; every epoch "
            f"scored at most {at_most:.3f}) for {chance_epochs} epochs (epochs {recent[0]['epoch']}-{epoch}). "
            + TRY.format(lr=lr), epoch)
