"""What the paper (Fan et al. 2022) reports, written once: the numbers our results are compared with.

The paper's *choices* (optimizer, schedule, augmentation, epochs, batch, input sizes) are the
defaults of the params schema (:mod:`hsnet.params`); the architecture is Table 1 in
:mod:`hsnet.model`; the datasets' split sizes are in :mod:`hsnet.data.datasets`.
"""

from __future__ import annotations

REFERENCE = "Fan et al. 2022"  # "Hierarchical scale convolutional neural network for facial expression recognition"

# Tables 2-5: HSNet on each dataset -> (table, accuracy %, mean accuracy % or None)
RESULTS = {
    "rafd": ("Table 2", 99.88, None),
    "kdef": ("Table 3", 93.35, None),
    "ferg": ("Table 4", 99.35, None),
    "rafdb": ("Table 5", 86.67, 76.89),
}
DATASETS = tuple(RESULTS)
METRICS = ("accuracy", "mean_accuracy")  # eq. 22: correct / all; eq. 23: the mean of per-class accuracies

TABLE6_DATASET = "rafdb"  # Table 6's ablation is on RAF-DB
# Table 6, in the paper's row order: the (DIB, FGAL, KTL) switches -> accuracy on TABLE6_DATASET (%).
# (False, False, False) is the baseline, Inception-ResNet-V1; (True, True, True) is HSNet.
TABLE6 = {
    (False, False, False): 84.54, (True, False, False): 85.10, (False, True, False): 85.73,
    (False, False, True): 85.26, (True, True, False): 86.21, (True, False, True): 86.05,
    (False, True, True): 86.46, (True, True, True): 86.67,
}
CONFIGS = tuple(TABLE6)  # the eight configurations of the ablation
SWITCHES = ("dib", "fgal", "ktl")  # the order of a configuration's three switches


def difference(ours: float, paper: float) -> str:
    """ours − paper (both in %) as a comparison shows it: the difference of the two figures shown
    (2 decimals), signed; figures shown equal differ by +0.00, never -0.00 (86.6688 is shown as the
    paper's 86.67)."""
    return signed(float(f"{ours:.2f}") - paper)


def signed(x: float) -> str:
    """``x`` to 2 decimals with its sign; one that rounds to zero is +0.00 (not -0.00, read as below)."""
    s = f"{x:+.2f}"
    return "+0.00" if s == "-0.00" else s


def switches(config: tuple[bool, bool, bool]) -> dict[str, bool]:
    """(True, False, True) -> {"dib": True, "fgal": False, "ktl": True}: the model params of a row."""
    return dict(zip(SWITCHES, config))
