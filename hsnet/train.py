"""Training HSNet with the paper's recipe (Sect. 4.2): Adam 0.01, batch 32, 500 epochs,
ReduceLROnPlateau on the validation loss (patience 20), random flip and ±5° rotation,
cross-entropy on HSNet's summed output.

Fast on a GPU (bf16 autocast, channels-last, cuDNN autotuning, uint8 tensor cache,
augmentation on the device, pinned non-blocking copies) and resumable after a kill: every
epoch writes ``last.pt`` atomically with everything needed to continue; ``resume=True``
continues from it and, on the CPU with a fixed seed, ends with the same weights as an
uninterrupted run (each epoch's shuffling and augmentation come from (seed, epoch)).
"""

from __future__ import annotations

import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from . import params as params_mod
from . import tracking
from .data.datasets import get_spec
from .data.manifest import read_manifest
from .errors import HSNetError
from .io import atomic_path, write_json
from .model import MIN_INPUT_SIZE, HSNet
from .plots import plot_training_curves
from .tensors import Batches, augment, check_nonempty, load_split, normalize

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 1


@dataclass
class Setup:
    device: torch.device
    amp_dtype: torch.dtype | None
    channels_last: bool


def pick_device(name: str | None = None) -> Setup:
    name = name or os.environ.get("HSNET_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise HSNetError(f"device {name!r} asked for, but no CUDA GPU is visible; use --device cpu")
    device = torch.device(name)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        amp = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return Setup(device, amp, True)
    return Setup(device, None, False)


def build_model(num_classes: int, model_params: dict, *, for_checkpoint: bool = False) -> HSNet:
    ktl = bool(model_params.get("ktl", True))
    weights = model_params.get("stem_weights") or "vggface2"
    return HSNet(num_classes, dib=bool(model_params.get("dib", True)), fgal=bool(model_params.get("fgal", True)),
                 ktl=ktl, stem_weights=("skip" if for_checkpoint else weights) if ktl else None)


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_model(model: torch.nn.Module, setting, device: torch.device | None = None) -> torch.nn.Module:
    """``train.compile``: ``auto`` (the default: CUDA graphs on a GPU, eager on a CPU), false (eager),
    true (torch.compile's default mode) or one of torch.compile's modes.

    ``reduce-overhead`` captures each training step as CUDA graphs: the host issues a few launches
    per step instead of ~340. Eager training at the paper's batch of 32 is bound by that host work
    (an H100 measured 1,454 images/s eager, 27% busy, against 5,362 with CUDA graphs:
    docs/performance.md). On a CPU compiling gains little (+9%) for a minute of compilation."""
    key = str(setting).strip().lower()  # YAML/CLI give bools, None or strings
    mode = {"none": None, "false": None, "no": None, "": None, "true": "default"}.get(key, key)
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
        raise HSNetError(f"train.compile {setting!r}: use auto, false, true or one of {', '.join(COMPILE_MODES)}")
    # static shapes: the few batch sizes (train, its remainder, validation) get a graph each
    return torch.compile(model, mode=None if mode == "default" else mode, dynamic=False)


def make_optimizer(trainable: list, tp: dict, setup: Setup) -> torch.optim.Optimizer:
    """The paper's Adam; on a GPU the fused kernel (a handful of launches per step instead of
    several per parameter tensor; the same update)."""
    if str(tp["optimizer"]).lower() != "adam":
        raise HSNetError(f"train.optimizer {tp['optimizer']!r}: only 'adam' (the paper's) is implemented")
    return torch.optim.Adam(trainable, lr=float(tp["lr"]), betas=tuple(tp["betas"]),
                            weight_decay=float(tp.get("weight_decay") or 0),
                            fused=True if setup.device.type == "cuda" else None)


def _epoch_generator(seed: int, epoch: int, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed * 1_000_003 + epoch * 101 + salt)


def _save(path: Path, obj: dict) -> None:
    try:
        with atomic_path(path) as tmp:
            torch.save(obj, tmp)
    except (OSError, RuntimeError) as exc:  # a full disk (torch's zip writer raises RuntimeError): the
        # previous checkpoint at ``path`` is still whole
        reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0][:200]
        raise HSNetError(f"can't write checkpoint {path} ({reason}); is the disk full? Free space there or train "
                         f"with another --out; {path.name} from the last finished epoch is intact, and "
                         "--resume continues from last.pt") from exc


def for_inference(ckpt: dict) -> dict:
    """A checkpoint without what only resuming needs (optimizer, scheduler, RNG: 2/3 of last.pt):
    weights, metadata and history, for evaluate, register and predict."""
    return {k: ckpt[k] for k in ("format", "meta", "model", "state")}


def load_checkpoint(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise HSNetError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise HSNetError(f"checkpoint {path} can't be loaded safely ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:200]})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise HSNetError(f"{path} is not an hsnet training checkpoint")
    return ckpt


def model_from_checkpoint(ckpt: dict) -> HSNet:
    meta = ckpt["meta"]
    model = build_model(len(meta["classes"]), meta["model"], for_checkpoint=True)
    model.load_state_dict(ckpt["model"])
    return model


def run_epoch(model, batches, setup: Setup, *, optimizer=None, generator=None, aug=None):
    """One pass; trains when ``optimizer`` is given. Returns (mean loss, accuracy, images/s)."""
    training = optimizer is not None
    model.train(training)
    total_loss = torch.zeros((), device=setup.device)
    correct = torch.zeros((), device=setup.device, dtype=torch.long)
    seen = 0
    compiled = hasattr(model, "_orig_mod")  # torch.compile'd
    start = time.perf_counter()
    with torch.set_grad_enabled(training):
        for x, y in batches:
            if compiled:  # a new step for CUDA graphs (reduce-overhead): earlier outputs may be reused
                torch.compiler.cudagraph_mark_step_begin()
            x = normalize(x)
            if training and aug:
                x = augment(x, generator, **aug)
            if setup.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(setup.device.type, dtype=setup.amp_dtype, enabled=setup.amp_dtype is not None):
                logits = model(x)
                loss = F.cross_entropy(logits.float(), y)
            if training:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            total_loss += loss.detach() * len(y)
            correct += (logits.argmax(1) == y).sum()
            seen += len(y)
            if hasattr(batches, "bar"):
                batches.bar.update(len(y))
    if setup.device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return (total_loss / max(seen, 1)).item(), correct.item() / max(seen, 1), seen / max(elapsed, 1e-9)


class _Progress:
    """Wraps Batches with a tqdm bar (images) for one epoch."""

    def __init__(self, batches, total, desc, enabled):
        from tqdm import tqdm

        self.batches = batches
        self.bar = tqdm(total=total, desc=desc, unit="img", leave=False, disable=not enabled)

    def __iter__(self):
        try:
            yield from self.batches
        finally:
            self.bar.close()


def train(data_dir: str | os.PathLike, params_path: str | os.PathLike | None, dataset: str,
          out_dir: str | os.PathLike, *, resume: bool = False, device: str | None = None,
          track: bool = True, overrides: dict | None = None, progress: bool = True,
          stop_after_epochs: int | None = None) -> dict:
    """Train on the cropped dataset at ``data_dir`` (its ``manifest.csv``); write checkpoints to ``out_dir``.

    ``stop_after_epochs`` ends this invocation early, as a kill would, leaving ``last.pt`` to
    resume from (used by tests and for time-sliced jobs).
    """
    spec = get_spec(dataset)  # unknown dataset: fails here
    cfg = params_mod.deep_merge(params_mod.resolve(params_path, dataset), overrides or {})
    tp, size = cfg["train"], int(cfg["input_size"])
    if size < MIN_INPUT_SIZE:
        raise HSNetError(f"input_size {size} for {dataset} is smaller than HSNet's minimum {MIN_INPUT_SIZE}; "
                         "raise input_size in params.yaml")
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    manifest = data_dir / "manifest.csv"
    rows = read_manifest(manifest)
    splits = {s: [r for r in rows if r["split"] == s] for s in ("train", "val")}
    for name, split_rows in splits.items():
        check_nonempty(name, split_rows, manifest)
    bad = sorted({r["label"] for r in rows if not 0 <= r["label"] < len(spec.classes)})
    if bad:
        raise HSNetError(f"{manifest} has labels {bad} outside {dataset}'s {len(spec.classes)} classes")
    setup = pick_device(device or cfg.get("device"))
    if tp.get("num_threads"):
        torch.set_num_threads(int(tp["num_threads"]))
    seed = int(tp["seed"])
    torch.manual_seed(seed)
    model = build_model(len(spec.classes), cfg["model"]).to(setup.device)  # KTL weights: fails here
    if setup.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = make_optimizer([p for p in model.parameters() if p.requires_grad], tp, setup)
    sch = tp["scheduler"]
    scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", patience=int(sch["patience"]),
                                                           factor=float(sch["factor"]))
    epochs = int(tp["epochs"]) if not tp.get("max_epochs") else min(int(tp["epochs"]), int(tp["max_epochs"]))
    step_model = compile_model(model, tp.get("compile"), setup.device)

    meta = {"dataset": dataset, "classes": list(spec.classes), "input_size": size, "model": cfg["model"],
            "normalization": "fixed_image_standardization: (x - 127.5) / 128",
            "data_version": tracking.data_version(manifest), "params": cfg}
    state = {"epoch": 0, "best_acc": -1.0, "best_epoch": 0, "history": [], "stale": 0}
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"
    if resume and last_path.is_file():
        ckpt = load_checkpoint(last_path)
        if ckpt["meta"]["data_version"] != meta["data_version"]:
            raise HSNetError(f"--resume: {last_path} was trained on other data "
                             f"({ckpt['meta']['data_version']} vs {meta['data_version']}); "
                             "use another --out or drop --resume")
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        torch.set_rng_state(ckpt["rng"]["torch"])
        if setup.device.type == "cuda" and ckpt["rng"].get("cuda") is not None:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"])
        state = ckpt["state"]
        log.info("resuming %s from epoch %d (best val acc %.4f)", last_path, state["epoch"], state["best_acc"])
    elif resume:
        log.info("--resume: no %s yet, starting from scratch", last_path)

    train_split = load_split(splits["train"], data_dir, size, progress=progress)
    val_split = load_split(splits["val"], data_dir, size, progress=progress)
    aug = {"hflip": bool(tp["augment"]["hflip"]), "rotate_degrees": float(tp["augment"]["rotate_degrees"])}
    out_dir.mkdir(parents=True, exist_ok=True)
    run_params = params_mod.flatten({k: v for k, v in cfg.items() if k != "crop"})
    tags = {"dataset": dataset, "git_commit": tracking.git_commit(), "data_version": meta["data_version"],
            "step": "train", **{f"model.{k}": str(v) for k, v in cfg["model"].items()}}
    summary = {}
    with tracking.run(f"train-{dataset}", params=run_params, tags=tags, enabled=track) as active:
        meta["mlflow_run_id"] = active.info.run_id if active else None
        stop_at = state["epoch"] + stop_after_epochs if stop_after_epochs else None
        log.info("training %s on %s: %d train / %d val images at %dx%d, %d epochs, batch %d, %s%s",
                 dataset, setup.device, len(train_split), len(val_split), size, size, epochs,
                 tp["batch_size"], setup.device, f" ({setup.amp_dtype})" if setup.amp_dtype else "")
        while state["epoch"] < epochs:
            epoch = state["epoch"] + 1
            order = torch.randperm(len(train_split), generator=_epoch_generator(seed, epoch, 0))
            batches = _Progress(Batches(train_split, order, int(tp["batch_size"]), setup.device),
                                len(train_split), f"epoch {epoch}/{epochs}", progress)
            loss, acc, ips = run_epoch(step_model, batches, setup, optimizer=optimizer,
                                       generator=_epoch_generator(seed, epoch, 1), aug=aug)
            weights = model.level_weights
            val_batches = Batches(val_split, torch.arange(len(val_split)), 2 * int(tp["batch_size"]),
                                  setup.device, drop_singleton=False)
            with torch.no_grad():
                val_loss, val_acc, _ = run_epoch(step_model, val_batches, setup)
            if not math.isfinite(loss):
                raise HSNetError(f"training diverged at epoch {epoch} (loss {loss}); lower train.lr")
            scheduler.step(val_loss)
            lr = optimizer.param_groups[0]["lr"]
            record = {"epoch": epoch, "loss": loss, "accuracy": acc, "val_loss": val_loss, "val_accuracy": val_acc,
                      "lr": lr, "images_per_s": ips, **{f"lambda_{k}": v for k, v in weights.items()}}
            state["history"].append(record)
            improved = val_acc > state["best_acc"]
            if improved:
                state.update(best_acc=val_acc, best_epoch=epoch, stale=0)
            else:
                state["stale"] += 1
            state["epoch"] = epoch
            ckpt = {"format": CHECKPOINT_FORMAT, "meta": meta, "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "scaler": None,  # bf16 autocast needs no loss scaling
                    "rng": {"torch": torch.get_rng_state(),
                            "cuda": torch.cuda.get_rng_state() if setup.device.type == "cuda" else None},
                    "state": state}
            _save(last_path, ckpt)
            if improved:
                _save(best_path, for_inference(ckpt))
            lam = "/".join(f"{weights[k]:.2f}" for k in "ABC") if weights else "-"
            log.info("epoch %d/%d loss %.4f acc %.4f val_loss %.4f val_acc %.4f lr %.2g λ(A/B/C) %s %.1f img/s%s",
                     epoch, epochs, loss, acc, val_loss, val_acc, lr, lam, ips, " *" if improved else "")
            if active:
                import mlflow

                mlflow.log_metrics({k: v for k, v in record.items() if k != "epoch"}, step=epoch)
            patience = tp.get("early_stopping")
            if patience and state["stale"] >= int(patience):
                log.info("early stopping: no val accuracy gain for %d epochs", patience)
                break
            if stop_at and epoch >= stop_at:
                log.info("stopping after %d epoch(s) as asked; continue with --resume", stop_after_epochs)
                break
        summary = {"dataset": dataset, "epochs_run": state["epoch"], "best_epoch": state["best_epoch"],
                   "best_val_accuracy": state["best_acc"], "final": state["history"][-1] if state["history"] else {},
                   "device": str(setup.device), "data_version": meta["data_version"],
                   "mlflow_run_id": meta["mlflow_run_id"], "checkpoint": str(best_path)}
        write_json(out_dir / "history.json", state["history"])
        write_json(out_dir / "train_summary.json", summary)
        plot_training_curves(state["history"], out_dir / "training_curves.png", f"training on {dataset}",
                             best_epoch=state["best_epoch"])
        if active:
            import mlflow

            mlflow.log_artifact(str(out_dir / "history.json"))
            mlflow.log_artifact(str(out_dir / "training_curves.png"))
            mlflow.log_artifact(str(out_dir / "train_summary.json"))
            if best_path.is_file():
                mlflow.log_artifact(str(best_path), artifact_path="checkpoint")
            mlflow.set_tag("best_val_accuracy", f"{state['best_acc']:.4f}")
    return summary
