"""Deterministic train/val/test splits: stratified by class, or disjoint by subject."""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from ..errors import HSNetError


def _counts(n: int, val: float, test: float) -> tuple[int, int]:
    """(n_val, n_test) for ``n`` items; at least one each when there are three or more."""
    n_test = int(round(n * test))
    n_val = int(round(n * val))
    if n >= 3:
        n_test = max(n_test, 1) if test > 0 else 0
        n_val = max(n_val, 1) if val > 0 else 0
    while n_val + n_test >= n and n_val + n_test > 0:  # keep at least one for training
        if n_val >= n_test and n_val > 0:
            n_val -= 1
        else:
            n_test -= 1
    return n_val, n_test


def _split_group(keys: list, val: float, test: float, rng: np.random.Generator) -> dict:
    order = list(keys)
    rng.shuffle(order)
    n_val, n_test = _counts(len(order), val, test)
    out = {k: "test" for k in order[:n_test]}
    out.update({k: "val" for k in order[n_test:n_test + n_val]})
    out.update({k: "train" for k in order[n_test + n_val:]})
    return out


def assign(records: list, spec, *, seed: int, by: str = "class") -> list[str]:
    """The split of each record (same order), deterministic for ``seed``.

    ``spec.fractions`` is (val, test). Datasets with an official test split keep it and
    draw val from their training part (``val`` is then the fraction of that part).
    """
    rng = np.random.default_rng(seed)
    val, test = spec.fractions
    result = [r.split if spec.official_test and r.split == "test" else None for r in records]
    pool = [i for i, s in enumerate(result) if s is None]
    if spec.official_test:
        test = 0.0
    if by == "subject":
        subjects = sorted({records[i].subject for i in pool})
        if len(subjects) < 3:
            raise HSNetError(f"--split-by subject needs at least 3 subjects, found {len(subjects)}")
        by_subject = _split_group(subjects, val, test, rng)
        for i in pool:
            result[i] = by_subject[records[i].subject]
        return result
    by_class = defaultdict(list)
    for i in pool:
        by_class[records[i].label_name].append(i)
    for label in sorted(by_class):
        for i, split in _split_group(by_class[label], val, test, rng).items():
            result[i] = split
    return result
