"""Parameter counts and forward FLOPs of HSNet and its Table 6 ablations (for docs and benchmarks)."""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode

from ..paper import CONFIGS, TABLE6_DATASET, switches
from .hsnet import SKIP_STEM_WEIGHTS, HSNet


def count(model: torch.nn.Module, size: int) -> tuple[int, float]:
    """(parameters, forward GFLOPs per image at ``size``x``size``), FLOPs counted by PyTorch."""
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, 3, size, size))
    return sum(p.numel() for p in model.parameters()), counter.get_total_flops() / 1e9


def describe(num_classes: int | None = None, sizes=(100, 224), progress: bool = True) -> str:
    """A Markdown table of the eight Table 6 configurations (about a minute on 2 CPU cores), for
    ``num_classes`` expressions (default: those of Table 6's dataset)."""
    from ..data.datasets import get_spec

    num_classes = len(get_spec(TABLE6_DATASET).classes) if num_classes is None else num_classes
    from tqdm import tqdm

    header = "| DIB | FGAL | KTL | parameters | trainable | " + " | ".join(
        f"GFLOPs @{s}" for s in sizes) + " |"
    rows = [header, "|" + "---|" * (5 + len(sizes))]
    for config in tqdm(CONFIGS, desc="counting FLOPs", unit="model", disable=None if progress else True):
        dib, fgal, ktl = config
        model = HSNet(num_classes, **switches(config), stem_weights=SKIP_STEM_WEIGHTS if ktl else None)
        trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
        flops = [count(model, s)[1] for s in sizes]
        params = sum(p.numel() for p in model.parameters())
        mark = lambda b: "✓" if b else "✗"  # noqa: E731
        rows.append(f"| {mark(dib)} | {mark(fgal)} | {mark(ktl)} | {params:,} | {trainable:,} | "
                    + " | ".join(f"{f:.3f}" for f in flops) + " |")
    return "\n".join(rows)
