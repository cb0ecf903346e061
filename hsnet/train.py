"""Training HSNet with the paper's recipe (Sect. 4.2): Adam 0.01, batch 32, 500 epochs,
ReduceLROnPlateau on the validation loss (patience 20), random flip and ±5° rotation,
cross-entropy on HSNet's summed output.

Laid out like torchvision's reference script: :func:`train_one_epoch`, :func:`validate_epoch`,
checkpointing (:func:`save_epoch`, :func:`resume_from`) and :func:`train`, which strings them
together. Fast on a GPU (bf16 autocast, channels-last, uint8 tensor cache, augmentation on the
device, CUDA graphs) and resumable after a kill: every epoch writes ``last.pt`` atomically
with everything needed to continue; ``resume=True`` continues from it and, on the CPU with a
fixed seed, ends with the same weights as an uninterrupted run (each epoch's shuffling and
augmentation come from (seed, epoch)).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import checkpoint, guards, interrupt, sources, tracking
from .data.datasets import check_classes, get_spec
from .data.manifest import MANIFEST, crop_settings, read_manifest
from .device import NORMALIZATION, Setup, pick_device, place
from .errors import HSNetError
from .files import CROP_REPORT, CURVES, HISTORY
from .files import TRAIN_SUMMARY as SUMMARY
from .io import check_writable, clean_stale_tmp, only_writer, write_json
from .model import MIN_INPUT_SIZE
from .params import COMPILE_MODES, MIN_BATCH, STEP_KEYS, WHOLE_STEP, Params, TrainParams, flatten
from .plots import plot_training_curves
from .step import Step
from .tensors import (BatchAugment, Batches, DeviceBatches, DeviceSplit, EpochAugment, Split, check_nonempty,
                      data_on_device, load_split, to_device)

log = logging.getLogger(__name__)

# train's output folder, beside checkpoint.BEST and checkpoint.LAST
MODEL_FILES = (checkpoint.BEST, HISTORY, SUMMARY)  # the trained model without its resume state (last.pt)


@dataclass
class TrainingState:
    """Where a run stands; saved in every checkpoint (plain types, for ``weights_only`` loads)."""

    epoch: int = 0
    best_acc: float = -1.0
    best_epoch: int = 0
    stale: int = 0  # epochs since the last val-accuracy gain
    history: list[dict] = field(default_factory=list)

    def record(self, row: dict) -> bool:
        """Append an epoch's figures; True if its val accuracy is the best so far."""
        self.history.append(row)
        self.epoch = row["epoch"]
        improved = row["val_accuracy"] > self.best_acc
        if improved:
            self.best_acc, self.best_epoch, self.stale = row["val_accuracy"], row["epoch"], 0
        else:
            self.stale += 1
        return improved


def compile_model(model: torch.nn.Module, setting, device: torch.device | None = None) -> torch.nn.Module:
    """``train.compile``: ``auto`` (the default: CUDA graphs on a GPU, eager on a CPU), false (eager),
    true (torch.compile's default mode) or one of torch.compile's modes.

    ``whole-step`` compiles without torch.compile's own graphs: :class:`hsnet.step.Step` captures the
    whole step instead (see :func:`whole_step`).

    ``reduce-overhead`` captures each training step as CUDA graphs: the host issues a few launches
    per step instead of ~340. Eager training at the paper's batch of 32 is bound by that host work
    (an H100 measured 1,454 images/s eager, 27% busy, against 5,362 with CUDA graphs:
    docs/performance.md). On a CPU compiling gains little (+9%) for a minute of compilation."""
    mode = {None: None, False: None, True: "default"}.get(setting, setting) if not isinstance(setting, str) \
        else setting.strip().lower()
    if whole_step(setting):  # inductor's fused kernels, captured whole by hsnet.step; nothing to gain on a CPU
        mode = "default" if device is not None and device.type == "cuda" else None
    if mode == "auto":
        if device is None or device.type != "cuda":
            return model
        import torch._dynamo as dynamo

        # auto may fall back: a step that can't be compiled (no C compiler for Triton, say) runs eager
        dynamo.config.suppress_errors = True
        mode = "reduce-overhead"
    if mode is None:
        return model
    if mode not in COMPILE_MODES:
        raise HSNetError(f"train.compile {setting!r}: use auto, false, true, {WHOLE_STEP} or one of "
                         f"{', '.join(COMPILE_MODES)}")
    # static shapes: the few batch sizes (train, its remainder, validation) get a graph each
    return torch.compile(model, mode=None if mode == "default" else mode, dynamic=False)


def make_optimizer(trainable: list, tp: TrainParams, setup: Setup) -> torch.optim.Optimizer:
    """The paper's Adam; on a GPU the fused kernel (a handful of launches per step instead of
    several per parameter tensor; the same update)."""
    if tp.optimizer != "adam":
        raise HSNetError(f"train.optimizer {tp.optimizer!r}: only 'adam' (the paper's) is implemented")
    return torch.optim.Adam(trainable, lr=tp.lr, betas=tp.betas, weight_decay=tp.weight_decay,
                            fused=True if setup.device.type == "cuda" else None)


def whole_step(setting) -> bool:
    """``train.compile: whole-step``: the step from batch to gradients as one CUDA graph (:mod:`hsnet.step`)."""
    return isinstance(setting, str) and setting.strip().lower() == WHOLE_STEP


def _epoch_generator(seed: int, epoch: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 101 + salt)


def run_epoch(model, batches, setup: Setup, *, optimizer=None, generator=None, aug=None, on_batch=None,
              transform=None, step: Step | None = None):
    """One pass over ``batches``; trains when ``optimizer`` is given. Returns (mean loss, accuracy, images/s).
    ``transform`` (an :class:`EpochAugment`) replaces ``generator``/``aug``'s batch-by-batch draws;
    ``step`` (a :class:`Step` kept from epoch to epoch, as whole-step graphs need) a new eager one."""
    if step is not None and optimizer is not None and step.optimizer is not optimizer:
        raise HSNetError("run_epoch: the step given trains with another optimizer (or validates); pass the "
                         "step alone, or the optimizer alone")
    step = step or Step(model, setup, optimizer)
    if transform is None and step.training and aug:
        transform = BatchAugment(generator, setup.device, **aug)
    step.begin()
    start = time.perf_counter()
    for x, y in batches:
        interrupt.check()  # a Ctrl-C whose KeyboardInterrupt was swallowed on its way (hsnet.interrupt)
        step(x, y, *(transform.take(len(y)) if step.training and transform is not None else (None, None)))
        if on_batch:
            on_batch(len(y))
    loss, acc, seen = step.sums()  # waits for the device
    return loss, acc, seen / max(time.perf_counter() - start, 1e-9)


def train_one_epoch(model, split: Split | DeviceSplit, tp: TrainParams, setup: Setup, optimizer, epoch: int, *,
                    progress: bool, desc: str, step: Step | None = None) -> tuple[float, float, float]:
    """One shuffled, augmented pass over the training split; (loss, accuracy, images/s). A split held
    on the device (:class:`DeviceSplit`) gives the same batches and augmentations, gathered there.
    ``step``: the run's :class:`Step` (whole-step graphs), else a new eager one."""
    from tqdm import tqdm

    order = torch.randperm(len(split), generator=_epoch_generator(tp.seed, epoch, 0))
    aug = dataclasses.asdict(tp.augment)
    generator = _epoch_generator(tp.seed, epoch, 1)
    transform = None
    if isinstance(split, DeviceSplit):
        batches = DeviceBatches(split, order, tp.batch_size, setup.device)
        transform = EpochAugment([len(c) for c in batches.chunks], generator, setup.device, **aug)
    else:
        batches = Batches(split, order, tp.batch_size, setup.device)
    with tqdm(total=len(split), desc=desc, unit="img", leave=False, disable=None if progress else True) as bar:
        return run_epoch(model, batches, setup, optimizer=optimizer, generator=generator, aug=aug,
                         on_batch=bar.update, transform=transform, step=step)


@torch.no_grad()
def validate_epoch(model, split: Split, tp: TrainParams, setup: Setup, step: Step | None = None) -> tuple[float, float]:
    """(loss, accuracy) on the validation split, in order, without augmentation."""
    kind = DeviceBatches if isinstance(split, DeviceSplit) else Batches
    batches = kind(split, torch.arange(len(split)), 2 * tp.batch_size, setup.device, drop_singleton=False)
    loss, acc, _ = run_epoch(model, batches, setup, step=step)
    return loss, acc


def save_epoch(out_dir: Path, meta: dict, engine: Engine, state: TrainingState, setup: Setup,
               improved: bool) -> None:
    """``last.pt`` (resume state) every epoch; then ``best.pt`` (weights for inference) when improved.
    Stopped between the two, ``last.pt`` names as best its own epoch, whose weights it holds:
    :func:`resume_from` writes ``best.pt`` from it (:func:`_best_as_recorded`). The other order would
    leave a ``best.pt`` of an epoch no record of the run has, the earlier best already overwritten."""
    scaler = engine.train_step.scaler  # fp16's loss scale (GPUs without bf16), else None
    ckpt = {"format": checkpoint.FORMAT, "meta": meta, "model": engine.model.state_dict(),
            "optimizer": engine.optimizer.state_dict(), "scheduler": engine.scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None,
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state() if setup.device.type == "cuda" else None},
            "state": dataclasses.asdict(state)}
    checkpoint.save(out_dir / checkpoint.LAST, ckpt)
    if improved:
        checkpoint.save(out_dir / checkpoint.BEST, checkpoint.for_inference(ckpt))


def _best_as_recorded(path: Path, ckpt: dict) -> None:
    """``best.pt`` beside ``last.pt`` (``ckpt``, at ``path``) made to hold the epoch ``last.pt`` names
    as the best, before a resumed training goes on. Stopped between :func:`save_epoch`'s two writes,
    ``last.pt`` names its own epoch, whose weights it holds: ``best.pt`` is written from it. Otherwise
    (checkpoints restored from S3 whose best.pt upload was cut off, an older hsnet's order) the best
    epoch's weights are gone: the best becomes ``best.pt``'s epoch when the history has it, else
    ``last.pt``'s own, written to ``best.pt``; either way what the run reports is what it holds."""
    state, best_path = ckpt["state"], path.with_name(checkpoint.BEST)
    if state["epoch"] == 0:
        return
    try:
        best = checkpoint.load(best_path)["state"]
        held = best["epoch"]
        if best["history"] != state["history"][:held]:  # another training's (other settings, same --out)
            held = None
    except (HSNetError, KeyError, TypeError):  # missing, unreadable, not a checkpoint: made again
        held = None
    if held == state["best_epoch"]:
        return
    rows = {row["epoch"]: row for row in state["history"]}
    if state["best_epoch"] != state["epoch"] and held in rows and held <= state["epoch"]:
        log.warning("%s holds epoch %s of this training, not the best epoch %d %s names, whose weights are gone "
                    "(stopped between two uploads): epoch %s is the best from here on", best_path, held,
                    state["best_epoch"], path.name, held)
    else:
        if state["best_epoch"] != state["epoch"]:
            log.warning("%s holds epoch %s, not the best epoch %d %s names, whose weights are gone: the last epoch "
                        "%d is the best from here on", best_path, held, state["best_epoch"], path.name, state["epoch"])
        else:  # stopped between the two writes: exact
            log.info("%s holds epoch %s; writing the best epoch %d from %s", best_path, held, state["epoch"], path.name)
        held = state["epoch"]
    moved = held != state["best_epoch"]
    if moved:  # the state first: best.pt written from last.pt carries it (evaluate records its best epoch)
        state.update(best_epoch=held, best_acc=rows.get(held, {}).get("val_accuracy", state["best_acc"]),
                     stale=state["epoch"] - held)
    if held == state["epoch"]:
        checkpoint.save(best_path, checkpoint.for_inference(ckpt))
    if moved:
        checkpoint.save(path, ckpt)  # last.pt made to say so too: what a later resume reads


# Of the settings training reads (STEP_KEYS["train"]), those an explicit --resume may change: how
# long, and how fast, not what is trained. Any other difference is refused: the optimizer and
# scheduler state loaded from last.pt would bring back the old lr, betas, patience..., while the
# checkpoints and MLflow record the new ones; another model or input size can't load the weights.
# --resume auto (dvc repro) carries on through a change of how fast only (the out-of-memory advice:
# train.data_on_device or train.compile off, then dvc repro); a change of how long trains again from
# the start, as a fresh run of those settings would (its early stopping and guards from epoch 1).
SPEED_SETTINGS = ("train.num_threads", "train.compile", "train.data_on_device", "train.data_memory_share")
RESUMABLE_CHANGES = ("train.epochs", "train.max_epochs", "train.early_stopping") + SPEED_SETTINGS


def _changed_settings(recorded: dict, now: dict) -> list[str]:
    """The dotted settings training reads that differ between a checkpoint's params and these,
    other than :data:`RESUMABLE_CHANGES`, each as 'key old -> new'."""
    old, new = _read_by_train(recorded), _read_by_train(now)
    return [f"{k} {old.get(k, 'unset')} -> {new.get(k, 'unset')}" for k in sorted(set(old) | set(new))
            if k not in RESUMABLE_CHANGES and old.get(k) != new.get(k)]


def _read_by_train(params: dict | None) -> dict:
    """The settings training reads (:data:`STEP_KEYS` ``["train"]``) of a params mapping, flattened:
    what a resumed training compares (an edit to evaluate's or import's settings is not one to it)."""
    return flatten({k: v for k, v in (params or {}).items() if k in STEP_KEYS["train"]})


def _what_is_trained(params: dict | None) -> dict:
    """:func:`_read_by_train` but for :data:`SPEED_SETTINGS`: what --resume auto compares."""
    return {k: v for k, v in _read_by_train(params).items() if k not in SPEED_SETTINGS}


def resume_from(path: Path, meta: dict, engine: Engine, setup: Setup, *,
                auto: bool = False) -> tuple[TrainingState, dict] | None:
    """Load ``last.pt`` into the model, optimizer, scheduler, loss scaler and RNGs; the state to carry on from
    and the checkpoint's metadata (its MLflow run, continued; the code its epochs ran). ``auto``: None
    (nothing loaded) when ``last.pt`` is from other data, settings (but :data:`SPEED_SETTINGS`) or code."""
    try:
        ckpt = checkpoint.load(path)
    except checkpoint.OtherFormat:
        if not auto:
            raise
        # an older hsnet's last.pt after an upgrade (dvc repro keeps it): other code, not resumable
        log.warning("%s is of another checkpoint format (written by another hsnet): training from the start", path)
        return None
    same = ("data_version", "code_version")
    if auto and (any(ckpt["meta"].get(k) != meta[k] for k in same)
                 or _what_is_trained(ckpt["meta"].get("params")) != _what_is_trained(meta["params"])):
        # dvc repro re-runs the stage after a change to its data, settings or code: what an older run
        # left (even finished) is not this stage's result; a killed run of the same is resumed
        log.info("%s is from other data, settings or code: training from the start", path)
        return None
    if ckpt["meta"]["data_version"] != meta["data_version"]:
        raise HSNetError(f"--resume: {path} was trained on other data "
                         f"({ckpt['meta']['data_version']} vs {meta['data_version']}); "
                         "use another --out or drop --resume")
    changed = _changed_settings(ckpt["meta"].get("params"), meta["params"])
    if changed:
        raise HSNetError(f"--resume: {path} was trained with other settings ({'; '.join(changed)}); a resumed "
                         "run keeps its settings (only " + ", ".join(RESUMABLE_CHANGES) + " may change). Resume "
                         "with the same settings, or train from the start: drop --resume or use another --out")
    if ckpt["meta"].get("code_version") != meta["code_version"]:
        log.warning("--resume: %s was written by other hsnet code (%s, now %s); continuing as asked", path,
                    ckpt["meta"].get("code_version", "unrecorded"), meta["code_version"])
    try:
        engine.model.load_state_dict(ckpt["model"])
        engine.optimizer.load_state_dict(ckpt["optimizer"])
        engine.scheduler.load_state_dict(ckpt["scheduler"])
    except (RuntimeError, ValueError, KeyError, TypeError) as exc:  # a hand-edited or damaged file
        raise HSNetError(f"{path}: its weights or optimizer state don't fit the model its settings describe "
                         f"({str(exc).splitlines()[0][:300]}); it was changed after training wrote it. Remove it "
                         "to train from the start, or train into another --out") from exc
    _best_as_recorded(path, ckpt)
    scaler = engine.train_step.scaler
    if scaler is not None and ckpt.get("scaler"):
        scaler.load_state_dict(ckpt["scaler"])  # resumed on another GPU without bf16: its scale carries on
    torch.set_rng_state(ckpt["rng"]["torch"])
    if setup.device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
        torch.cuda.set_rng_state(ckpt["rng"]["cuda"])
    state = TrainingState(**ckpt["state"])
    log.info("resuming %s from epoch %d (best val acc %.4f)", path, state.epoch, state.best_acc)
    return state, ckpt["meta"]


def lineage(before: dict | None, epoch: int, now: dict) -> list[dict]:
    """Which code trained which epochs of a checkpoint: ``before``'s record (the resumed checkpoint's
    metadata; None for a fresh start) up to ``epoch``, then ``now``'s git commit, code version and
    MLflow run from ``epoch + 1`` on (one entry while they stay the same). A checkpoint resumed at
    another commit or code, or into another MLflow run, keeps the first epochs' (``meta["lineage"]``;
    the registry tags it)."""
    keys = ("git_commit", "code_version", "mlflow_run_id")
    past = [] if before is None else [
        dict(p) for p in before.get("lineage") or [{"from_epoch": 1, **{k: before.get(k, "unrecorded") for k in keys}}]
        if p["from_epoch"] <= epoch]
    entry = {"from_epoch": epoch + 1, **{k: now.get(k) for k in keys}}
    if past and all(past[-1][k] == entry[k] for k in keys):
        return past
    return past + [entry]


def _splits(data_dir: Path, dataset: str, classes) -> tuple[Path, dict[str, list[dict]]]:
    manifest = data_dir / MANIFEST
    if not manifest.is_file():
        raise HSNetError(f"{manifest} does not exist: --data must be the output folder of 'hsnet crop' "
                         "(run hsnet crop first)")
    rows = read_manifest(manifest)
    splits = {s: [r for r in rows if r["split"] == s] for s in ("train", "val")}
    for name, split_rows in splits.items():
        check_nonempty(name, split_rows, manifest, minimum=MIN_BATCH if name == "train" else 1)
    bad = sorted({r["label"] for r in rows if not 0 <= r["label"] < len(classes)})
    if bad:
        raise HSNetError(f"{manifest} has labels {bad} outside {dataset}'s {len(classes)} classes")
    # the checkpoint names its outputs with the dataset's classes: crops of another dataset would be
    # served under other names (FERG's label 0 'anger' as RAF-DB's 'surprise')
    check_classes(rows, classes, manifest, f"{dataset} has", f"Train with the --dataset these crops are of, or "
                  f"give crops of {dataset}", every_class=False)
    # validate checked every class is in train, but crop may have dropped them all since (no face found)
    missing = [name for i, name in enumerate(classes) if not any(r["label"] == i for r in splits["train"])]
    if missing:
        raise HSNetError(f"the train split of {manifest} has no image of {', '.join(missing)}: a model trained on it "
                         f"could never answer {'it' if len(missing) == 1 else 'them'}. Check {CROP_REPORT} beside it "
                         "(crop drops a photo where it finds no face; crop.no_face: center keeps it), or re-import "
                         "with other split settings")
    # evaluate follows training everywhere (dvc repro, the pipelines): an empty test split is known now
    check_nonempty("test", [r for r in rows if r["split"] == "test"], manifest)
    return manifest, splits


def _crops_made_with(data_dir: Path, from_params: dict) -> dict:
    """The crop settings of the crops in ``data_dir`` as ``hsnet crop`` recorded them (a flag such as
    --margin may have overridden params.yaml), else ``from_params``: the checkpoint carries them to
    hsnet predict and the server, which must cut faces as the model saw them."""
    made = crop_settings(data_dir)
    if made is None:
        return from_params
    if made != from_params:
        log.warning("the crops in %s were cut with %s, params say %s: the checkpoint records the crops' settings",
                    data_dir, made, from_params)
    return made


def _finish(out_dir: Path, state: TrainingState, meta: dict, setup: Setup, active) -> dict:
    """history.json, train_summary.json, the curves; logged to MLflow when tracking."""
    best_path = out_dir / checkpoint.BEST
    summary = {"dataset": meta["dataset"], "epochs_run": state.epoch, "best_epoch": state.best_epoch,
               "best_val_accuracy": state.best_acc, "final": state.history[-1] if state.history else {},
               "device": str(setup.device), "data_version": meta["data_version"],
               "mlflow_run_id": meta["mlflow_run_id"], "checkpoint": checkpoint.BEST}
    write_json(out_dir / HISTORY, state.history)
    write_json(out_dir / SUMMARY, summary)
    plot_training_curves(state.history, out_dir / CURVES, f"training on {meta['dataset']}",
                         best_epoch=state.best_epoch)
    if active:
        import mlflow

        for name in (HISTORY, CURVES, SUMMARY):
            mlflow.log_artifact(str(out_dir / name))
        if best_path.is_file():
            mlflow.log_artifact(str(best_path), artifact_path="checkpoint")
        mlflow.set_tag("best_val_accuracy", f"{state.best_acc:.4f}")
    return summary


def export_model(out_dir: str | os.PathLike, dest: str | os.PathLike) -> Path:
    """Copy the trained model out of train's ``out_dir`` into ``dest`` (:data:`MODEL_FILES`: the
    best epoch's weights, the history and the summary; not the resume state): a Kubeflow Model
    artifact, a group's models. Returns ``dest``."""
    import shutil

    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        shutil.copyfile(Path(out_dir) / name, dest / name)
    return dest


@tracking.as_found
def train(data_dir: str | os.PathLike, params: Params, out_dir: str | os.PathLike, *, resume: bool | str = False,
          device: str | None = None, track: bool = True, progress: bool = True,
          stop_after_epochs: int | None = None, on_checkpoint=None, on_start=None) -> dict:
    """Train on the cropped dataset at ``data_dir`` (its ``manifest.csv``); write checkpoints to ``out_dir``.

    ``stop_after_epochs`` ends this invocation early, as a kill would, leaving ``last.pt`` to
    resume from (used by tests and for time-sliced jobs). ``resume``: True continues from
    ``last.pt`` (of the same data); "auto" only when it is of the same data, settings (but
    :data:`SPEED_SETTINGS`) and code, from the start otherwise (``dvc repro`` after a kill or a
    settings change). ``on_checkpoint(out_dir,
    improved)`` runs after each epoch's checkpoints are written (:mod:`hsnet.durable` copies them);
    ``on_start(out_dir)`` once this training holds ``out_dir``, before it looks for ``last.pt``
    (:mod:`hsnet.durable` restores its checkpoints there).

    One training per ``out_dir``: a second one started while this one runs is refused (it would
    remove this one's checkpoint temporaries and overwrite its ``last.pt``).
    """
    with contextlib.ExitStack() as held:  # the output folder, held from its creation to the end
        return _train(Path(data_dir), params, Path(out_dir), held, resume=resume, device=device, track=track,
                      progress=progress, stop_after_epochs=stop_after_epochs, on_checkpoint=on_checkpoint,
                      on_start=on_start)


@dataclass
class Engine:
    """What a run steps with: the model (and its compiled or graphed form), optimizer, scheduler."""

    model: torch.nn.Module
    step_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.ReduceLROnPlateau
    # the run's steps, kept from epoch to epoch: whole-step's CUDA graphs (train.compile whole-step)
    # and fp16's loss scale (train_step.scaler, in last.pt) live as long as the run
    train_step: Step
    val_step: Step


def build_engine(num_classes: int, params: Params, setup: Setup) -> Engine:
    """The model of ``params.model`` (KTL's stem weights loaded: a missing file fails here), the
    paper's Adam and ReduceLROnPlateau, compiled as ``train.compile`` says."""
    tp = params.train
    torch.manual_seed(tp.seed)
    model = place(checkpoint.build_model(num_classes, params.model), setup)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], tp, setup)
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", patience=tp.scheduler.patience,
                                                           factor=tp.scheduler.factor)
    step_model = compile_model(model, tp.compile, setup.device)
    graphed = whole_step(tp.compile)
    return Engine(model, step_model, optimizer, scheduler, Step(step_model, setup, optimizer, whole_graph=graphed),
                  Step(step_model, setup, whole_graph=graphed))


def _train(data_dir: Path, params: Params, out_dir: Path, held: contextlib.ExitStack, *, resume, device, track,
           progress, stop_after_epochs, on_checkpoint, on_start) -> dict:
    spec = get_spec(params.dataset)  # unknown dataset: fails here
    tp, size = params.train, params.input_size
    if size < MIN_INPUT_SIZE:
        raise HSNetError(f"input_size {size} for {params.dataset} is smaller than HSNet's minimum "
                         f"{MIN_INPUT_SIZE}; raise input_size in params.yaml")
    manifest, splits = _splits(data_dir, params.dataset, spec.classes)
    setup = pick_device(device)
    if tp.num_threads:
        held.callback(torch.set_num_threads, torch.get_num_threads())  # the caller's (a notebook's) count, back
        torch.set_num_threads(tp.num_threads)
    engine = build_engine(len(spec.classes), params, setup)
    cfg = params.to_dict()
    cfg["crop"] = _crops_made_with(data_dir, cfg["crop"])  # what predict cuts faces with
    meta = {"dataset": params.dataset, "classes": list(spec.classes), "input_size": size, "model": cfg["model"],
            "normalization": NORMALIZATION, "data_version": tracking.data_version(manifest), "params": cfg,
            "code_version": sources.code_version(__name__), "git_commit": tracking.git_commit(),
            "stem_weights_sha256": getattr(engine.model, "stem_weights_sha256", None)}  # KTL's stem file
    check_writable(out_dir, "--out")  # before any work: not an epoch trained, then "is the disk full?"
    held.enter_context(only_writer(out_dir, "hsnet train", "wait for it to end, or train into another --out"))
    clean_stale_tmp(out_dir, older_than=0)  # what a killed write (checkpoint, history) left: no other trainer is here
    if on_start:
        on_start(out_dir)
    _earlier_verdict(out_dir, meta, setup, resume)  # before the data is loaded: a retry to the same end ends now
    last_path = out_dir / checkpoint.LAST
    if resume and (last_path.exists() or last_path.is_symlink()) and not last_path.is_file():
        raise HSNetError(f"{last_path} is not a file (a folder, or a link to nothing), where training keeps its "
                         "resume state: remove it, or train into another --out")
    state, before = TrainingState(), None
    if resume and last_path.is_file():
        resumed = resume_from(last_path, meta, engine, setup, auto=resume == "auto")
        replace = getattr(on_checkpoint, "replace_local", None)  # hsnet.durable: the prefix's copy instead
        if resumed is None and replace is not None and replace(out_dir):
            _earlier_verdict(out_dir, meta, setup, resume)
            resumed = resume_from(last_path, meta, engine, setup, auto=resume == "auto")
        state, before = resumed or (state, None)
    elif resume:
        log.info("--resume: no %s yet, starting from scratch", last_path)
    train_split = load_split(splits["train"], data_dir, size, progress=progress)
    val_split = load_split(splits["val"], data_dir, size, progress=progress)
    train_data, val_data = train_split, val_split
    if data_on_device([train_split, val_split], setup.device, tp.data_on_device, tp.data_memory_share):
        train_data, val_data = to_device(train_split, setup.device), to_device(val_split, setup.device)
    previous_run = before.get("mlflow_run_id") if before else None
    if before and "stem_weights_sha256" in before:  # the frozen stem is the checkpoint's, loaded over the file's
        meta["stem_weights_sha256"] = before["stem_weights_sha256"]
    tags = {"dataset": params.dataset, "git_commit": meta["git_commit"], "code_version": meta["code_version"],
            "data_version": meta["data_version"], "step": "train",
            **({"stem_weights_sha256": meta["stem_weights_sha256"]} if meta["stem_weights_sha256"] else {}),
            **{f"model.{k}": str(v) for k, v in cfg["model"].items()}}
    # the settings training reads (and the dataset's name): a resumed run continues its MLflow run after
    # an edit to evaluate's settings, as it continues its checkpoints (tracking._continuable compares them)
    run_params = flatten({k: v for k, v in cfg.items() if k != "crop" and (k in STEP_KEYS["train"] or k == "dataset")})
    # _tracking_lost outside the run: a store that stopped answering fails its end too (end_run FAILED)
    with _tracking_lost(out_dir), tracking.run(f"train-{params.dataset}", params=run_params, tags=tags,
                                               enabled=track, continue_run=previous_run, device=setup.device) as active:
        meta["mlflow_run_id"] = active.info.run_id if active else None
        meta["lineage"] = lineage(before, state.epoch, meta)
        if active and previous_run and previous_run != active.info.run_id:  # a new run (other settings, or lost)
            import mlflow

            mlflow.set_tags({"resumed_from_run": previous_run, "resumed_at_epoch": str(state.epoch)})
        # the checkpoint's epochs the run lacks (a new run: all, so that its curves are whole even when
        # nothing is left to train); logged with the next upload when the durable prefix may lack them
        # (a retry from the prefix trains those epochs again, and logs them then)
        logged = _logged_through(active) if active and previous_run else 0
        missing = [row for row in state.history if row["epoch"] > logged]
        if active and logged > state.epoch:
            _earlier_attempts_epochs(state.epoch + 1, min(logged, tp.epochs_to_run))
        if not getattr(on_checkpoint, "behind", False):
            missing = _log_rows(missing, active)
        log.info("training %s on %s: %d train / %d val images at %dx%d, %d epochs, batch %d%s", params.dataset,
                 setup.device, len(train_split), len(val_split), size, size, tp.epochs_to_run, tp.batch_size,
                 f" ({setup.amp_dtype})" if setup.amp_dtype else "")
        log.info("training data %s", "held on the device" if train_data is not train_split else "read from the host")
        _fit(engine, state, train_data, val_data, tp, setup, out_dir, meta, active, num_classes=len(spec.classes),
             val_labels=val_split.labels, progress=progress, stop_after_epochs=stop_after_epochs,
             on_checkpoint=on_checkpoint, pending=missing, logged=logged)
        return _finish(out_dir, state, meta, setup, active)


@contextlib.contextmanager
def _tracking_lost(out_dir: Path):
    """A tracking store that stops answering mid-training (an epoch's metrics, the final uploads):
    an error that says what is kept and how to go on, not MLflow's traceback."""
    try:
        yield
    except Exception as exc:
        if not tracking.is_tracking_error(exc) or tracking.schema_message(exc):
            raise  # a store of another schema is refused as such (hsnet.cli), not as "stopped answering"
        raise tracking.TrackingUnavailable(
            f"the MLflow tracking store stopped answering during training ({tracking.mask_text(str(exc))[:300]}); "
            f"{out_dir / checkpoint.LAST} holds every epoch it recorded: once it answers, run the same command "
            "with --resume (dvc repro and make pipeline resume by themselves)") from exc


def _fit(engine: Engine, state: TrainingState, train_data, val_data, tp: TrainParams, setup: Setup, out_dir: Path,
         meta: dict, active, *, num_classes: int, val_labels, progress: bool, stop_after_epochs: int | None,
         on_checkpoint, pending: list[dict], logged: int = 0) -> None:
    """The epoch loop from ``state`` on: train, validate, step the scheduler, check the run is
    learning (:mod:`hsnet.guards`), record and checkpoint each epoch; early stopping.

    An epoch's metrics go to the MLflow run once its checkpoint is where a resume starts from:
    the local ``last.pt``, or, with ``on_checkpoint`` (:class:`hsnet.durable.Uploader`), when that
    says it has the epoch's copy (True), and all of them when the training ends. A retried
    Kubeflow pod, which starts after the last *uploaded* epoch, then trains the lost epochs again
    without logging them twice; a resumed run logs what a kill between the two steps left out
    (``pending``: those epochs, when the prefix may lack them). ``logged``: the last epoch the
    MLflow run already has; none up to it is logged again (an earlier attempt whose end upload
    failed logged its last epochs, which a retry from the prefix trains again)."""
    epochs, stop_at = tp.epochs_to_run, (state.epoch + stop_after_epochs if stop_after_epochs else None)
    pending = list(pending)
    try:
        while state.epoch < epochs:
            # checked before an epoch, not after: a run resumed from the epoch it stopped at stops there too
            if tp.early_stopping and state.stale >= tp.early_stopping:
                log.info("early stopping: no val accuracy gain for %d epochs", tp.early_stopping)
                break
            epoch = state.epoch + 1
            loss, acc, ips = train_one_epoch(engine.step_model, train_data, tp, setup, engine.optimizer, epoch,
                                             progress=progress, desc=f"epoch {epoch}/{epochs}", step=engine.train_step)
            val_loss, val_acc = validate_epoch(engine.step_model, val_data, tp, setup, engine.val_step)
            lr = engine.optimizer.param_groups[0]["lr"]  # the rate this epoch trained with, before a cut
            engine.scheduler.step(val_loss)
            weights = engine.val_step.level_means()  # lambda~ over the validation split
            row = {"epoch": epoch, "loss": loss, "accuracy": acc, "val_loss": val_loss, "val_accuracy": val_acc,
                   "lr": lr, "images_per_s": ips,
                   **{f"lambda_{k}": v for k, v in weights.items()}}
            guards.check_epoch(row, state.history, num_classes, val_labels=val_labels,
                               chance_epochs=guards.chance_window(tp.scheduler.patience))
            improved = state.record(row)
            _say_epoch(row, epochs, weights, improved)
            save_epoch(out_dir, meta, engine, state, setup, improved)
            pending.append(row)
            if on_checkpoint is None or on_checkpoint(out_dir, improved):
                pending = _log_rows(pending, active, after=logged)
            if stop_at and epoch >= stop_at:
                log.info("stopping after %d epoch(s) as asked; continue with --resume", stop_after_epochs)
                break
    except Exception as exc:  # a guard's verdict, out of memory, the store lost: what trained so far is still shown
        # a verdict a retry finds ends the retry at once: it trains no epoch again, so none would be logged twice
        final = isinstance(exc, guards.NotLearning) and _keep_verdict(out_dir, meta, setup, exc, on_checkpoint, active)
        try:
            _settle(pending, on_checkpoint, out_dir, active, final=final, logged=logged)
        except Exception as err:  # noqa: BLE001 - the error that ended the training is the one to raise
            log.warning("the last epochs' figures could not be logged (%s: %s)", type(err).__name__,
                        tracking.mask_text(str(err))[:300])
        raise
    # the training ended: a failed end upload still logs its epochs (nothing may retry the step)
    _settle(pending, on_checkpoint, out_dir, active, final=True, logged=logged)


def _verdict_key(meta: dict, setup: Setup) -> str:
    """What makes a training reach the same verdict again: its data, settings, code, KTL's stem
    weights (the advice is to check that file), and the arithmetic it ran with (the device's kind,
    its autocast precision, torch's version: a float16 divergence may not recur in float32)."""
    same = {k: meta.get(k) for k in ("data_version", "code_version", "stem_weights_sha256")}
    same["params"] = _read_by_train(meta.get("params"))  # as a resume compares them: an evaluate edit is none
    same["arithmetic"] = [setup.device.type, str(setup.amp_dtype), torch.__version__]
    return hashlib.sha256(json.dumps(same, sort_keys=True, default=str).encode()).hexdigest()


def _keep_verdict(out_dir: Path, meta: dict, setup: Setup, exc: guards.NotLearning, on_checkpoint,
                  active) -> bool:
    """``checkpoint.VERDICT`` in ``out_dir``, where the checkpoints go (``on_checkpoint.keep``, the
    durable prefix) and as the MLflow run's tag ``verdict`` (why it FAILED): a Kubeflow retry of the step, or the next ``dvc repro``, ends with it at once
    (:func:`_earlier_verdict`) instead of training again to the same verdict. KFP retries a failed
    step whatever failed it. True when it is kept where a retry looks (the prefix too, with one)."""
    uri, kept = getattr(on_checkpoint, "uri", None), False
    try:
        write_json(out_dir / checkpoint.VERDICT, {
            "epoch": exc.epoch, "message": str(exc), "key": _verdict_key(meta, setup),
            "data_version": meta["data_version"], "code_version": meta["code_version"],
            "copy": f"{uri.rstrip('/')}/{checkpoint.VERDICT}" if uri else None})
        keep = getattr(on_checkpoint, "keep", None)
        if keep is not None:
            keep(out_dir, checkpoint.VERDICT)
        kept = True
    except Exception as err:  # noqa: BLE001 - the verdict is the error to raise; a retry then trains again
        log.warning("the guard's verdict could not be kept (%s: %s): a retry trains to it again",
                    type(err).__name__, tracking.mask_text(str(err))[:300])
    if active:
        try:
            import mlflow

            mlflow.set_tag("verdict", str(exc)[:5000])
        except Exception as err:  # noqa: BLE001 - as above: the store's failure is not the error to show
            log.warning("the MLflow run could not be tagged with the verdict (%s: %s)", type(err).__name__,
                        tracking.mask_text(str(err))[:300])
    return kept


def _earlier_verdict(out_dir: Path, meta: dict, setup: Setup, resume) -> None:
    """Raise the verdict an earlier attempt of this training reached (``checkpoint.VERDICT``, of the
    same data, settings, code and arithmetic) when resuming; another training's is removed, and a
    fresh start (no ``resume``) is judged afresh."""
    path = out_dir / checkpoint.VERDICT
    if path.is_dir() and not path.is_symlink():
        raise HSNetError(f"{path} is a folder, where training keeps a guard's verdict (a file): remove it")
    try:
        recorded = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return
    except (OSError, ValueError):
        recorded = None  # half-written or not ours: judged afresh
    if not (resume and isinstance(recorded, dict) and recorded.get("key") == _verdict_key(meta, setup)):
        path.unlink(missing_ok=True)
        return
    copy = recorded.get("copy")
    where = f"{path} and {copy}" if isinstance(copy, str) and copy.startswith("s3://") else str(path)
    raise guards.NotLearning(
        f"an earlier attempt of this training (a retried step, or the last run of this stage) stopped at epoch "
        f"{recorded.get('epoch')}: {recorded.get('message')} With the same data, settings, code and device it stops "
        f"there again: change the settings, or delete {where} to train it anyway", recorded.get("epoch"))


def _settle(pending: list[dict], on_checkpoint, out_dir: Path, active, *, final: bool, logged: int = 0) -> None:
    """The end of the epoch loop: the epochs not logged yet go up with the end's checkpoint
    (``on_checkpoint.flush``: a step that fails after it is retried from there), then to MLflow.
    If that upload failed: logged all the same when the training ended (``final``: its step may
    well succeed, and nothing would log them; a retry that trains them again finds them logged and
    doesn't log them twice), or when a guard's verdict a retry ends with is kept; otherwise (an
    error ended the training: the step fails and its retry trains them) not (history.json has
    them)."""
    behind = getattr(on_checkpoint, "behind", False)  # e.g. resumed locally at its last epoch: none pending
    if not (pending or behind):
        return
    flush = getattr(on_checkpoint, "flush", None)
    if flush is not None and not flush(out_dir) and pending:
        if not final:
            log.warning("epochs %d-%d are not in the MLflow run: their checkpoint did not go up (a retry trains "
                        "them again); %s in the output has them", pending[0]["epoch"], pending[-1]["epoch"], HISTORY)
            return
        log.warning("the end's checkpoint did not go up: epochs %d-%d are logged all the same (should this step "
                    "fail after the training, its retry trains them again and keeps these figures)",
                    pending[0]["epoch"], pending[-1]["epoch"])
    _log_rows(pending, active, after=logged)


def _say_epoch(row: dict, epochs: int, weights: dict, improved: bool) -> None:
    lam = "/".join(f"{weights[k]:.2f}" for k in "ABC") if weights else "-"
    log.info("epoch %d/%d loss %.4f acc %.4f val_loss %.4f val_acc %.4f lr %.2g λ(A/B/C) %s %.1f img/s%s",
             row["epoch"], epochs, row["loss"], row["accuracy"], row["val_loss"], row["val_accuracy"], row["lr"],
             lam, row["images_per_s"], " *" if improved else "")


def _log_rows(rows: list[dict], active, *, after: int = 0) -> list:
    """Log the epochs' figures to the MLflow run (when tracking), but none up to epoch ``after``,
    which the run already has (:func:`_earlier_attempts_epochs`); nothing is left pending."""
    if active:
        import mlflow

        for row in rows:
            if row["epoch"] > after:
                mlflow.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=row["epoch"])
    return []


def _earlier_attempts_epochs(first: int, last: int) -> None:
    """The continued MLflow run has epochs ``first``-``last``, which this training trains again: an
    earlier attempt logged them though its end's checkpoint did not go up (:func:`_settle`). They
    are not logged twice; the run keeps the earlier figures, says so in a tag, and history.json
    has this attempt's."""
    import mlflow

    span = f"{first}-{last}"
    log.warning("epochs %s are in the MLflow run from an earlier attempt of this training (its end's checkpoint did "
                "not go up): this attempt trains them again and does not log them twice; %s in the output has its "
                "figures", span, HISTORY)
    mlflow.set_tag("epochs_logged_by_earlier_attempt", span)


def _logged_through(active) -> int:
    """The last epoch the MLflow run has figures of (0: none): a continued run's; the resumed epochs
    after it are those a kill between a checkpoint and its log left out."""
    import mlflow

    logged = mlflow.MlflowClient().get_metric_history(active.info.run_id, "val_accuracy")
    return max((m.step for m in logged), default=0)
