"""Attack session 14a: fidelity to the paper (Fan et al. 2022, /work/shared/paper/hsnet-paper.md).

Each test compares the code (or docs/paper-notes.md, where a deviation must be declared with the
measurement that forced it) with what the paper literally says, quoted in the test. Each fails on
the code as it is and passes once the code or the docs agree with the paper.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import torch
from torch import nn

from hsnet import guards
from hsnet.data.datasets import get_spec
from hsnet.errors import HSNetError
from hsnet.model import HSNet

ROOT = Path(__file__).resolve().parents[1]
NOTES = (ROOT / "docs" / "paper-notes.md").read_text(encoding="utf-8")


def _paragraphs_with(needle: str) -> list[str]:
    """The blank-line-separated paragraphs (list items split too) of paper-notes that contain ``needle``."""
    parts = re.split(r"\n\s*\n|\n(?=- )", NOTES)
    return [p for p in parts if needle in p]


# --- 1. RAF-DB's test split: the paper says 3,065, the code's "paper" size is 3,068 -----------------

def test_rafdb_paper_split_size_is_the_papers_3065_or_the_difference_is_declared():
    """Sect. 4.3, "Experiment on RAF-DB": "The RAF-DB database provides aligned images and has
    pre-defined training and testing sets of 12,271 and 3065 images, respectively."

    hsnet/data/datasets.py:122 gives ``paper_split_sizes={"train+val": 12271, "test": 3068}``: the
    validation step warns "split sizes differ from the paper's" against 3,068, a number the paper
    does not state (it is RAF-DB basic's real test count). docs/paper-notes.md declares RaFD's
    split-size discrepancy ("RaFD split sizes") but says nothing of RAF-DB's 3,065 vs 3,068, and the
    README (validate) says the sizes are checked "where the paper fixes them (RaFD, RAF-DB)".
    Passes when the spec carries the paper's 3,065, or paper-notes declares the 3,068 with why.
    """
    paper_test = 3065
    sizes = get_spec("rafdb").paper_split_sizes
    assert sizes["train+val"] == 12271  # the paper's 12,271: agrees
    declared = any(s in NOTES for s in ("3065", "3,065"))
    assert sizes["test"] == paper_test or declared, (
        f"RAF-DB's paper_split_sizes test = {sizes['test']}, the paper says {paper_test} (Sect. 4.3), and "
        "docs/paper-notes.md does not declare the difference")


# --- 2. Eq. 18: everything after the stem is He-initialised; the FC layers are N(0, 0.01) ------------

def test_classifier_fc_layers_are_he_initialised_as_eq18_says_or_the_deviation_is_measured():
    """Sect. 3.3, eq. 18: "the KTL starts by initializing the stem parameters from the face
    recognition knowledge and then randomly initializing the rest as
    f(θ) = f(θ_s, θ_h)|θ_s ← θ_recog; θ_h ← HeInit(θ_h) ... where HeInit stands for the He
    initialization (He et al. 2015)"; "θ_h for all the rest parts".

    hsnet/model/ktl.py:357-359 (he_init) starts every nn.Linear (FGAL's W_1 and W_C, eqs. 14-15, and
    the no-FGAL head) at N(0, 0.01) instead: std 0.01 where He gives sqrt(2/fan_in) = 0.088 / 0.047 /
    0.033 for 256 / 896 / 1792 inputs. docs/paper-notes.md ("KTL") declares it only "as classifier
    heads usually do", with no measurement; the reason in he_init's docstring ("He-scaled heads on
    HSNet's un-normalised pooled features give logits with a standard deviation around 5 ... FGAL's
    sigmoid weights collapse to 0") no longer holds: since "Learning rate 0.01" the FC layers see Ψ
    standardised and divided by sqrt(channels) (fgal.PooledFeatures), and with He-initialised heads
    the output's std at step 0 is about 0.05, λ̃ = 0.50/0.50/0.50 and the loss ln 7 (measured in
    this session, 16 random 80x80 images, KTL off).

    Passes when the FC layers are He-initialised (std within 20% of sqrt(2 / fan_in)), or
    paper-notes gives the measurement that forced N(0, 0.01) (a paragraph naming N(0, 0.01) that
    says what was measured).
    """
    torch.manual_seed(0)
    model = HSNet(7, ktl=False)
    off = {}
    for name, m in model.head.named_modules():
        if isinstance(m, nn.Linear):
            he = math.sqrt(2 / m.in_features)
            std = float(m.weight.detach().std())
            if abs(std / he - 1) > 0.2:
                off[name] = (round(std, 4), round(he, 4))
    measured = any("measured" in p for p in _paragraphs_with("N(0, 0.01)"))
    assert not off or measured, (
        f"FC layers not He-initialised (eq. 18), (std, He std): {off}; docs/paper-notes.md gives no "
        "measurement for the N(0, 0.01) deviation")


# --- 3. 500 epochs with ReduceLROnPlateau(patience 20): the chance guard stops a run at epoch 10 -----

def test_chance_guard_does_not_end_a_run_before_the_papers_scheduler_has_acted():
    """Sect. 4.2: "The model was trained for 500 epochs with a minibatch size of 32. The
    ReduceLROnPlateau scheduler dynamically reduced the learning rate if the validation loss does
    not change for 20 epochs."

    hsnet/guards.py:24 (CHANCE_EPOCHS = 10), called by hsnet/train.py:369 on every run with no
    setting to switch it off, stops training when the validation accuracy stays at chance for 10
    epochs: at the paper's lr 0.01, before the paper's scheduler could first lower it (after 20
    epochs without a val-loss change). A run the paper's recipe would carry on at 0.001 from epoch
    ~21 is ended at epoch 10 with "Try a lower train.lr". docs/paper-notes.md mentions the guard
    ("stops a run ... whose validation accuracy stays at chance for 10 epochs") but, unlike the loss
    guard (828 after epoch 1), with no measurement that forced the 10.

    Here: 19 epochs at chance (still at the initial lr 0.01, val loss falling slowly so the
    scheduler has not acted) must not end the run. Passes when the guard waits at least the paper's
    patience (or only counts epochs after the lr was lowered), or paper-notes gives the measurement.
    """
    paper_patience, paper_lr = 20, 0.01
    labels = [0, 1, 2, 3, 4, 5, 6] * 18  # chance 1/7 on 126 balanced validation images
    history = []
    try:
        for epoch in range(1, paper_patience):
            row = {"epoch": epoch, "loss": 1.95, "val_loss": 1.95 - 0.001 * epoch, "val_accuracy": 0.15,
                   "lr": paper_lr}
            guards.check_epoch(row, history, 7, val_labels=labels)
            history.append(row)
        stopped = None
    except HSNetError as exc:
        stopped = (len(history) + 1, str(exc)[:120])
    measured = any("measured" in p for p in _paragraphs_with("hsnet.guards"))
    assert stopped is None or measured, (
        f"the chance guard ended a run at epoch {stopped[0]} at the paper's lr {paper_lr}, before "
        f"ReduceLROnPlateau's patience of {paper_patience} epochs could act: {stopped[1]!r}")


# --- 4. (minor) the guard's advice names a sample lr that is no longer the committed one ------------

def test_guard_advice_names_the_samples_lr_the_papers_0_01():
    """Sect. 4.2: "An adaptive moment (Adam) optimizer ... was used with an initial learning rate of
    0.01". params.yaml's sample trains at it ("lr: 0.01  # the paper's"); docs/paper-notes.md: "
    `params.yaml`'s sample now trains at the paper's 0.01."

    hsnet/guards.py:27 (TRY, printed by every guard stop) still says "the sample trains at 0.001",
    the sample's lr before the fix: a stale second copy of the setting, advising a user to go down
    to a rate the project itself no longer uses."""
    text = guards.TRY.format(lr=0.01)
    named = re.findall(r"sample trains at ([0-9.e-]+)", text)
    assert all(float(v) == 0.01 for v in named), f"guards.TRY says the sample trains at {named}: {text!r}"
