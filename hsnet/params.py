"""params.yaml, typed: the paper's settings as defaults, per-dataset entries on top.

    defaults:            # applies to every dataset
      train: {seed: 0}
    datasets:
      sample: {input_size: 80, train: {epochs: 12}}

One dataclass per section below holds each setting's type, allowed values and default (the
paper's choice, Sect. 4.2). :meth:`Params.resolve` reads the file once, checks every layer
against the schema (an unknown key, a wrong type or a value out of range is refused with its
dotted name and what is allowed) and returns the merged settings as objects that the steps
take as arguments: the paper's defaults <- ``defaults`` <- ``datasets.<name>`` <- overrides
(``--set``, command-line flags).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import math
import os
import re
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Union

import yaml

from .errors import HSNetError
from .io import MAX_IMAGE_PIXELS
from .sizes import MIN_INPUT_SIZE

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
WHOLE_STEP = "whole-step"  # train.compile: the whole training step as one CUDA graph (hsnet.step)


class ParamsError(HSNetError):
    """A setting is unknown, of the wrong type or out of range; the message names it."""


class _OutOfRange(ParamsError):
    """Of the right type, out of range: said as such, also for an optional (``int | None``) setting."""


def _range(lo=None, hi=None, *, lo_open=False, hi_open=False, why: str = "") -> dict:
    return {"range": (lo, hi, lo_open, hi_open), "why": why}


SIDE_MAX = math.isqrt(MAX_IMAGE_PIXELS)  # 8000: larger square crops would be refused by every reader (hsnet.io)
MTCNN_MIN_FACE_SIZE = 20  # facenet-pytorch MTCNN's own smallest face, px: crop's default (hsnet predict's is larger)
SEED_MAX = 2 ** 32 - 1  # numpy's generators take no negative seed; torch's overflow at train's seed * 1e6


@dataclass(frozen=True)
class ImportParams:
    split_by: Literal["class", "subject"] = "class"
    seed: int = field(default=0, metadata=_range(0, SEED_MAX))
    rafdb_images: Literal["aligned", "original"] = "aligned"


@dataclass(frozen=True)
class ValidateParams:
    min_size: int = field(default=32, metadata=_range(1))  # smallest acceptable image side, px
    # the share of images that may fail to decode and still pass, each named in the report and left
    # out by crop (as unreadable): a real archive's one broken file (FERG-DB has one in 55,767) must
    # not stop the dataset; a copy with more is refused. Images under min_size always fail.
    max_bad_fraction: float = field(default=0.001, metadata=_range(0, 1, hi_open=True))


@dataclass(frozen=True)
class CropParams:
    detector: Literal["mtcnn", "none"] = "mtcnn"  # the paper crops RaFD and KDEF with MTCNN
    size: int | None = field(default=None, metadata=_range(1, SIDE_MAX))  # None: the dataset's input_size
    margin: int = field(default=0, metadata=_range(0))  # around the face, in output pixels
    no_face: Literal["drop", "center"] = "drop"
    min_face_size: int = field(default=MTCNN_MIN_FACE_SIZE, metadata=_range(1))
    min_prob: float = field(default=0.0, metadata=_range(0, 1))  # detections below are ignored

    def key(self) -> str:
        """A short hash of the settings: crops made with other settings are redone."""
        return hashlib.sha256(json.dumps(dataclasses.asdict(self), sort_keys=True).encode()).hexdigest()[:16]


PARAMS_FILE = "params.yaml"  # the settings file: dvc.yaml's stages and hsnet's commands read it
VGGFACE2 = "vggface2"  # stem_weights: facenet-pytorch's own download of its VGGFace2 weights
# hsnet's own stem_weights value, never a user's: a frozen stem whose weights come from the checkpoint
# about to be loaded (read as a file name by mistake it would train a random frozen stem)
SKIP_STEM_WEIGHTS = "skip"


@dataclass(frozen=True)
class ModelParams:
    dib: bool = True  # kernel scale: SDIB/RDIB
    fgal: bool = True  # network scale
    ktl: bool = True  # knowledge scale: the frozen VGGFace2 stem
    stem_weights: str = field(default=VGGFACE2, metadata={  # facenet-pytorch's download, a file or s3:// URI
        "keywords": (VGGFACE2,), "reserved": (SKIP_STEM_WEIGHTS,),
        "nonempty": f"give {VGGFACE2} (facenet-pytorch's download), a file or an s3:// URI (model.ktl false: no stem "
                    "weights)"})


@dataclass(frozen=True)
class SchedulerParams:
    name: Literal["plateau"] = "plateau"  # ReduceLROnPlateau
    monitor: Literal["val_loss"] = "val_loss"
    patience: int = field(default=20, metadata=_range(0))
    factor: float = field(default=0.1, metadata=_range(0, 1, lo_open=True, hi_open=True))


@dataclass(frozen=True)
class AugmentParams:
    hflip: bool = True
    rotate_degrees: float = field(default=5.0, metadata=_range(0, 180))


MIN_BATCH = 2  # BatchNorm normalises over the batch: a training batch needs 2 images


@dataclass(frozen=True)
class TrainParams:
    optimizer: Literal["adam"] = "adam"
    lr: float = field(default=0.01, metadata=_range(0, lo_open=True))
    betas: tuple[float, float] = field(default=(0.9, 0.999), metadata=_range(0, 1, hi_open=True))  # each
    weight_decay: float = field(default=0.0, metadata=_range(0))
    epochs: int = field(default=500, metadata=_range(1))
    batch_size: int = field(default=32, metadata=_range(MIN_BATCH))
    scheduler: SchedulerParams = SchedulerParams()
    augment: AugmentParams = AugmentParams()
    max_epochs: int | None = field(default=None, metadata=_range(1))  # cap for quick runs
    early_stopping: int | None = field(default=None, metadata=_range(1))  # epochs without val gain
    seed: int = field(default=0, metadata=_range(0, SEED_MAX))
    num_threads: int | None = field(default=None, metadata=_range(1))  # CPU threads; None: torch's
    # auto: CUDA graphs on a GPU, eager on a CPU; false; true (torch.compile's default); a mode; or
    # whole-step: the step from batch to gradients captured as one CUDA graph (hsnet.step; not yet the default)
    compile: Union[bool, None, Literal[("auto",) + COMPILE_MODES + (WHOLE_STEP,)]] = "auto"
    # hold the uint8 splits in GPU memory (gather, flip, rotate there): auto = when they take at most
    # data_memory_share of it and leave room to train (tensors.TRAINING_HEADROOM of the free memory);
    # true = always (on a CPU: in RAM, the same code path); false = host pipeline
    data_on_device: Union[bool, Literal["auto"]] = "auto"
    data_memory_share: float = field(default=0.5, metadata=_range(0, 1, lo_open=True))

    @property
    def epochs_to_run(self) -> int:
        return min(self.epochs, self.max_epochs) if self.max_epochs else self.epochs


@dataclass(frozen=True)
class EvaluateParams:
    tta_hflip: bool = False  # average with the flipped image (not in the paper; serving never flips)


@dataclass(frozen=True)
class Params:
    """Everything one dataset's pipeline run is configured by."""

    dataset: str = ""
    input_size: int = field(default=224, metadata=_range(
        MIN_INPUT_SIZE, SIDE_MAX, why="HSNet's smallest input: SDIB-A needs 3x3 features; the largest crop every reader takes"))
    import_: ImportParams = field(default=ImportParams(), metadata={"key": "import"})
    validate: ValidateParams = ValidateParams()
    crop: CropParams = CropParams()
    model: ModelParams = ModelParams()
    train: TrainParams = TrainParams()
    evaluate: EvaluateParams = EvaluateParams()

    def __post_init__(self):
        if self.crop.size is None:  # crops are stored at the size the model trains on
            object.__setattr__(self, "crop", dataclasses.replace(self.crop, size=self.input_size))

    @classmethod
    def resolve(cls, path: str | os.PathLike | None, dataset: str, overrides: dict | None = None,
                *, overrides_name: str = "--set") -> "Params":
        """``dataset``'s settings from the params file at ``path`` (the paper's defaults alone when
        ``path`` is None), with ``overrides`` (a nested mapping, e.g. from ``--set``) on top."""
        return cls.from_mapping(load(path) if path else None, dataset, overrides, source=str(path),
                                overrides_name=overrides_name)

    @classmethod
    def from_mapping(cls, data: dict | None, dataset: str, overrides: dict | None = None, *,
                     source: str = "params", overrides_name: str = "--set") -> "Params":
        """The same from a params.yaml already read into a mapping (Kubeflow's pipeline parameter)."""
        layers = [{}]
        if data is not None:
            check_file(data, source)
            datasets = data.get("datasets") or {}
            if dataset not in datasets:
                raise ParamsError(f"dataset {dataset!r} has no entry under 'datasets' in {source} "
                                  f"(entries: {', '.join(datasets) or 'none'}); add one")
            layers += [data.get("defaults") or {}, datasets[dataset] or {}]
        if overrides:
            _convert(cls, overrides, f"{overrides_name}:")
            layers.append(overrides)
        merged: dict = {}
        for layer in layers:
            merged = deep_merge(merged, layer)
        merged["dataset"] = dataset
        return _build(cls, merged, source)

    def to_dict(self) -> dict:
        """Plain types, with the file's key names (``import``), for MLflow, checkpoints and YAML."""
        return _plain(self)

    def to_file(self) -> dict:
        """A params.yaml mapping whose ``datasets.<dataset>`` entry resolves to exactly these settings
        (every key written out): how one process hands its resolved settings to another (``hsnet
        train --params FILE``)."""
        entry = self.to_dict()
        entry.pop("dataset")
        return {"datasets_to_run": [self.dataset], "datasets": {self.dataset: entry}}


# The keys of a dataset's entry (and of ``defaults``) each step reads: dvc.yaml's params lists for
# these stages (tests/pipeline/test_dvc.py compares). The Kubeflow steps take only these
# (:func:`for_step`), since a parameter's value is part of Kubeflow's cache key: an edit to this
# dataset's train.lr re-runs train and what follows, not import, validate and crop; one to its
# evaluate.tta_hflip re-runs evaluate, not train. What train reads is also what a resumed
# training must keep (hsnet.train).
STEP_KEYS = {"import": ("import",), "validate": ("validate",), "crop": ("input_size", "crop"),
             "train": ("input_size", "crop", "model", "train"), "evaluate": ("evaluate",)}


def for_step(data: dict, dataset: str, *steps: str) -> dict:
    """A params mapping cut to the keys ``steps`` (of :data:`STEP_KEYS`) read of ``dataset``'s
    entry and of ``defaults``: the same settings for those steps (:meth:`Params.from_mapping`), and
    nothing they don't read."""
    keys = tuple(key for step in steps for key in STEP_KEYS[step])
    entry = (data.get("datasets") or {}).get(dataset) or {}
    defaults = {k: v for k, v in (data.get("defaults") or {}).items() if k in keys}
    out = {"datasets_to_run": [dataset], "datasets": {dataset: {k: v for k, v in entry.items() if k in keys}}}
    return {**out, "defaults": defaults} if defaults else out


def check_file(data, source: str) -> None:
    """Every layer of a params mapping against the schema: top-level keys, ``defaults`` and each
    ``datasets`` entry."""
    if not isinstance(data, dict):
        raise ParamsError(f"{source} must hold a mapping (datasets_to_run, defaults, datasets)")
    unknown = sorted(set(data) - {"datasets_to_run", "defaults", "datasets"})
    if unknown:
        raise ParamsError(f"{source}: unknown top-level key(s) {', '.join(map(str, unknown))}; "
                          "allowed: datasets_to_run, defaults, datasets")
    datasets = data.get("datasets") or {}
    if not isinstance(datasets, dict):
        raise ParamsError(f"{source}: 'datasets' must map dataset names to their settings")
    _convert(Params, data.get("defaults") or {}, f"{source}: defaults")
    for name, entry in datasets.items():
        _convert(Params, entry or {}, f"{source}: datasets.{name}")
    to_run = data.get("datasets_to_run") or []
    if not isinstance(to_run, list) or any(not isinstance(d, str) or d not in datasets for d in to_run):
        raise ParamsError(f"{source}: datasets_to_run must list names under 'datasets' "
                          f"({', '.join(map(str, datasets)) or 'none'}), got {_show(to_run)}")


# --- the schema's machinery -------------------------------------------------------------------

# a number written as text (YAML 1.1 reads 1e-3, without a dot, as a string; code and forms give text)
_INTEGER = re.compile(r"[-+]?\d+")
_DECIMAL = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_SHORT = reprlib.Repr()  # Python 3.11's takes no arguments
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 3, 6, 6, 6, 80, 80


def _show(value) -> str:
    """A value for a message, cut short: YAML aliases can make a few lines stand for 10^9 items."""
    return _SHORT.repr(value)


def _keys(cls) -> dict[str, dataclasses.Field]:
    return {f.metadata.get("key", f.name): f for f in dataclasses.fields(cls) if f.name != "dataset"}


def _describe(tp) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(map(str, args))
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if tp is type(None):
        return "null"
    if origin is tuple:
        return f"a list of {len(args)} numbers"
    return {bool: "true or false", int: "an integer", float: "a number", str: "a string"}.get(tp, str(tp))


def _value(tp, value, where: str, meta: dict):
    """``value`` checked (and, for numbers, converted) against the type ``tp``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
        # a numpy scalar (np.arange, np.linspace in a sweep): its Python value; a narrow float the
        # number it prints (np.float32(1e-4) is 1e-4, not its widening 9.999999747378752e-05)
        value = float(str(value)) if getattr(value.dtype, "kind", "") == "f" and value.dtype.itemsize < 8 else value.item()
    if dataclasses.is_dataclass(tp):
        return _convert(tp, value, where)
    if origin in (Union, types.UnionType):
        for option in args:
            try:
                return _value(option, value, where, meta)
            except _OutOfRange:
                raise  # the right type: its range is what to fix
            except ParamsError:
                continue
        raise ParamsError(f"{where}: {_show(value)} is not {_describe(tp)}")
    if origin is Literal:
        if isinstance(value, str) and value.lower() in [str(a).lower() for a in args]:
            return value.lower()
        raise ParamsError(f"{where}: {_show(value)} is not {_describe(tp)}")
    if tp is type(None):
        if value is None:
            return None
        raise ParamsError(f"{where}: {_show(value)} is not null")
    if origin is tuple:
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ParamsError(f"{where}: {_show(value)} is not {_describe(tp)}")
        return tuple(_value(a, v, f"{where}[{i}]", meta) for i, (a, v) in enumerate(zip(args, value)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ParamsError(f"{where}: {_show(value)} is not true or false (write it without quotes)")
    if tp is int:
        if isinstance(value, str) and _INTEGER.fullmatch(value.strip()) and len(value.strip()) <= 100:
            value = int(value)  # (Python refuses to read over 4,300 digits: no setting needs 100)
        if isinstance(value, int) and not isinstance(value, bool):
            return _in_range(value, where, meta)
        raise ParamsError(f"{where}: {_show(value)} is not an integer")
    if tp is float:
        if isinstance(value, str) and _DECIMAL.fullmatch(value.strip()):
            value = float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if math.isnan(value):  # it compares false with every bound: no range would stop it
                raise ParamsError(f"{where}: nan is not a number")
            if math.isinf(value):
                raise ParamsError(f"{where}: {value} is not a finite number")
            return _in_range(float(value), where, meta)
        raise ParamsError(f"{where}: {_show(value)} is not a number")
    if tp is str:
        if isinstance(value, str):
            if value.strip().lower() in meta.get("keywords", ()):  # "VGGFace2 " is the keyword vggface2
                return value.strip().lower()
            if value.strip().lower() in meta.get("reserved", ()):
                raise ParamsError(f"{where}: {value!r} is reserved for hsnet's own use; {meta['nonempty']}")
            if meta.get("nonempty") and not value.strip():
                raise ParamsError(f"{where} is empty: {meta['nonempty']}")
            return value
        raise ParamsError(f"{where}: {_show(value)} is not a string")
    raise TypeError(f"no rule for {tp}")  # a schema bug, not an input error


def _in_range(value, where: str, meta: dict):
    lo, hi, lo_open, hi_open = meta.get("range", (None, None, False, False))
    bounds = ([f"{'>' if lo_open else '>='} {lo}"] if lo is not None else []) + \
        ([f"{'<' if hi_open else '<='} {hi}"] if hi is not None else [])
    if (lo is not None and (value < lo or (lo_open and value == lo))) or \
            (hi is not None and (value > hi or (hi_open and value == hi))):
        why = f" ({meta['why']})" if meta.get("why") else ""
        raise _OutOfRange(f"{where}: {value} is out of range; it must be {' and '.join(bounds)}{why}")
    return value


def _convert(cls, data, where: str) -> dict:
    """A partial mapping for section ``cls`` checked key by key; returns it with converted values."""
    if not isinstance(data, dict):
        raise ParamsError(f"{where}: expected a mapping of {', '.join(_keys(cls))}, got {_show(data)}")
    keys, hints = _keys(cls), _hints(cls)
    out = {}
    for key, value in data.items():
        name = f"{where} {key}" if where.endswith(":") else f"{where}.{key}"
        if key not in keys:
            raise ParamsError(f"{name}: unknown key; allowed: {', '.join(keys)}")
        f = keys[key]
        out[key] = _value(hints[f.name], value, name, dict(f.metadata))
    return out


@functools.lru_cache(maxsize=None)
def _hints(cls) -> dict:
    return typing.get_type_hints(cls)


def allowed(cls, key: str) -> list[str]:
    """The values a ``Literal`` setting of section ``cls`` takes (e.g. ``allowed(CropParams,
    "detector")``): what a command-line flag for it offers."""
    values = typing.get_args(_hints(cls)[key])
    if typing.get_origin(_hints(cls)[key]) is not Literal:
        raise TypeError(f"{cls.__name__}.{key} is not a Literal setting")
    return list(values)


def _build(cls, merged: dict, where: str):
    converted = _convert(cls, {k: v for k, v in merged.items() if k != "dataset"}, where)
    hints, kwargs = _hints(cls), {}
    for key, f in _keys(cls).items():
        if key in converted:
            value = converted[key]
            nested = dataclasses.is_dataclass(hints[f.name])
            kwargs[f.name] = _build(hints[f.name], value, f"{where}.{key}") if nested else value
    if "dataset" in merged:
        kwargs["dataset"] = merged["dataset"]
    return cls(**kwargs)


def _plain(obj):
    if dataclasses.is_dataclass(obj):
        return {f.metadata.get("key", f.name): _plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [_plain(v) for v in obj]
    return obj


def section(cls, data: dict | None) -> object:
    """A section's object from a plain mapping that a checkpoint or an MLflow record carries."""
    return _build(cls, data or {}, cls.__name__)


# --- files and command-line overrides ---------------------------------------------------------

def deep_merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in (override or {}).items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = value
    return out


class _DuplicateKey(yaml.YAMLError):
    pass


class _UniqueKeyLoader(yaml.SafeLoader):
    """safe_load that refuses a key written twice in one mapping (PyYAML keeps the last silently;
    dvc's loader refuses the file). A ``<<`` merge overridden by an explicit key is not a repeat."""

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            self._check_unique(node)
        return super().construct_mapping(node, deep)

    def _check_unique(self, node: yaml.MappingNode) -> None:
        """``node``'s own keys once each; the same for the mappings it merges (``<<``), which PyYAML
        copies in without constructing them on their own."""
        seen: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for source in sources:
                    if isinstance(source, yaml.MappingNode):
                        self._check_unique(source)
                continue
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: construct_mapping says so
                continue
            if first is not None:
                raise _DuplicateKey(f"key {_show(key)} is written twice in one mapping (lines {first} and "
                                    f"{line}); the later would silently replace the earlier: keep one")
            seen[key] = line


def load_text(text: str):
    """YAML text as Python objects, a key written twice refused (see :class:`_UniqueKeyLoader`)."""
    return yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader)


def load(path: str | os.PathLike) -> dict:
    """A params file as a mapping; the schema is checked by :meth:`Params.resolve`."""
    path = Path(path)
    if not path.is_file():
        raise ParamsError(f"params file {path} does not exist")
    try:
        data = load_text(path.read_text(encoding="utf-8")) or {}
    except _DuplicateKey as exc:
        raise ParamsError(f"params file {path}: {exc}") from exc
    except RecursionError as exc:  # PyYAML follows a merge (<<) of a mapping into itself for ever
        raise ParamsError(f"params file {path}: a merge key (<<) takes in a mapping that contains it; "
                          "merge another mapping") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ParamsError(f"params file {path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict):
        raise ParamsError(f"params file {path} must hold a mapping")
    return data


def parse_set(items: list[str]) -> dict:
    """["model.dib=false", "train.lr=0.002"] -> {"model": {"dib": False}, "train": {"lr": 0.002}}."""
    out: dict = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ParamsError(f"--set {item!r}: expected KEY=VALUE, e.g. model.dib=false")
        node = out
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ParamsError(f"--set {item!r}: {part} is set to a value and a section at once")
        try:
            node[parts[-1]] = yaml.safe_load(value)
        except yaml.YAMLError as exc:
            raise ParamsError(f"--set {item!r}: the value is not valid YAML ({exc})") from exc
    return out


def set_text(value) -> str:
    """The VALUE of ``--set KEY=VALUE`` that :func:`parse_set` reads back as ``value`` (YAML, one
    line): None -> ``null``, True -> ``true``, (0.9, 0.99) -> ``[0.9, 0.99]``, 1e-05 -> ``1.0e-05``."""
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy numbers and arrays
        value = value.tolist()
    text = yaml.safe_dump(list(value) if isinstance(value, tuple) else value, default_flow_style=True,
                          width=float("inf"))
    return text[:-len("\n...\n")] if text.endswith("\n...\n") else text.rstrip("\n")


def flags(section_name: str, given: dict) -> dict:
    """Command-line flags of one section as overrides: {"crop": {"size": 100}}; None = not given."""
    chosen = {k: v for k, v in given.items() if v is not None}
    return {section_name: chosen} if chosen else {}


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
