"""params.yaml: the paper's settings as defaults, per-dataset overrides on top.

    defaults:            # Sect. 4.2 of the paper
      train: {optimizer: adam, lr: 0.01, ...}
    datasets:
      sample: {input_size: 100, train: {epochs: 6}, ...}

``resolve(path, dataset)`` returns ``defaults`` deep-merged with ``datasets[dataset]``.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import tempfile
from pathlib import Path

import yaml

from .errors import HSNetError

PAPER_DEFAULTS = {
    "import": {"split_by": "class", "seed": 0, "rafdb_images": "aligned"},
    "validate": {"min_size": 32},
    "input_size": 224,
    "crop": {"detector": "mtcnn", "size": 224, "margin": 0, "no_face": "drop", "min_prob": 0.0},
    "model": {"dib": True, "fgal": True, "ktl": True, "stem_weights": "vggface2"},
    "train": {
        "optimizer": "adam", "lr": 0.01, "betas": [0.9, 0.999], "weight_decay": 0.0,
        "epochs": 500, "batch_size": 32,
        "scheduler": {"name": "plateau", "monitor": "val_loss", "patience": 20, "factor": 0.1},
        "augment": {"hflip": True, "rotate_degrees": 5.0},
        "max_epochs": None,  # cap for quick runs
        "early_stopping": None,  # epochs without val-accuracy gain before stopping; None = off
        "seed": 0,
        "num_threads": None,  # CPU threads; None = torch's default
        "compile": "auto",  # auto (CUDA graphs on a GPU, eager on a CPU), false, true or a torch.compile mode
    },
    "evaluate": {"tta_hflip": False},
}


def deep_merge(base: dict, override: dict) -> dict:
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def load(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise HSNetError(f"params file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise HSNetError(f"params file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise HSNetError(f"params file {path} must hold a mapping")
    return data


def resolve(path: str | os.PathLike | None, dataset: str) -> dict:
    """The settings for ``dataset``: paper defaults <- params' ``defaults`` <- ``datasets[dataset]``."""
    data = load(path) if path else {}
    datasets = data.get("datasets") or {}
    if path and dataset not in datasets:
        raise HSNetError(f"dataset {dataset!r} has no entry under 'datasets' in {path} "
                         f"(entries: {', '.join(datasets) or 'none'}); add one")
    merged = deep_merge(deep_merge(PAPER_DEFAULTS, data.get("defaults") or {}), datasets.get(dataset) or {})
    merged["dataset"] = dataset
    return merged


def settings(path: str | os.PathLike | None, dataset: str, section: str, given: dict) -> dict:
    """One section's settings for a verb: explicit values in ``given`` (not None) win over
    ``params.yaml`` (when ``path`` is given), which wins over the paper's defaults."""
    base = resolve(path, dataset).get(section, {}) if path else PAPER_DEFAULTS.get(section, {})
    out = dict(base)
    out.update({k: v for k, v in given.items() if v is not None})
    return out


_EXPONENT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")


def parse_set(items: list[str]) -> dict:
    """["model.dib=false", "train.lr=0.002"] -> {"model": {"dib": False}, "train": {"lr": 0.002}}."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise HSNetError(f"--set {item!r}: expected KEY=VALUE, e.g. model.dib=false")
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        parsed = yaml.safe_load(value)
        if isinstance(parsed, str) and _EXPONENT.fullmatch(parsed.strip()):
            parsed = float(parsed)  # YAML 1.1 reads 2e-3 (no dot) as a string
        node[parts[-1]] = parsed
    return out


def flatten(d: dict, prefix: str = "") -> dict:
    """{'train': {'lr': 0.01}} -> {'train.lr': 0.01} (for MLflow params)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


@contextlib.contextmanager
def params_file(params: dict):
    """``params`` (a whole params.yaml as a mapping) as a temporary file for the verbs to read,
    deleted afterwards. Kubeflow passes params.yaml as a pipeline parameter; the verbs read files.
    """
    if not isinstance(params, dict) or not isinstance(params.get("datasets"), dict):
        raise HSNetError("params must be a params.yaml mapping with a 'datasets' section")

    def restore_ints(value):  # protobuf (Kubeflow's parameter transport) turns every int into a float
        if isinstance(value, dict):
            return {k: restore_ints(v) for k, v in value.items()}
        if isinstance(value, list):
            return [restore_ints(v) for v in value]
        return int(value) if isinstance(value, float) and value.is_integer() else value

    fd, path = tempfile.mkstemp(prefix="hsnet-params-", suffix=".yaml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            yaml.safe_dump(restore_ints(params), f, sort_keys=False)
        yield path
    finally:
        os.unlink(path)
