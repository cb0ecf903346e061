"""One training or validation step, and ``train.compile: whole-step``: that step as one CUDA graph.

A step is: the batch's uint8 images -> :func:`hsnet.device.forward` (normalise, the paper's
flip and rotation, the model) -> cross-entropy -> backward -> Adam, and the epoch's running
loss and accuracy sums, kept on the device (no host sync per batch). :class:`Step` is that
step, the one home of it that ``hsnet train``'s loop (:func:`hsnet.train.run_epoch`) runs.

With CUDA graphs from ``torch.compile`` (``reduce-overhead``) the model's forward and backward
are graphs, but the rest of a step still runs operation by operation from Python between them;
an H200 measured the GPU 67% busy at the paper's batch of 32 (docs/performance.md, section 8).
``whole_graph=True`` (``train.compile: whole-step``) captures everything from the batch to its
gradients, the sums included, as one graph per batch size and replays it:

1. the host copies the batch and its flip mask and rotation matrices into the graph's input
   tensors (four copies on the device);
2. one replay runs normalisation, augmentation, forward, loss, backward and the sums; the
   gradients are zeroed and accumulated inside the graph, into the same tensors every time;
3. fused Adam runs after it, outside the graph (a few launches), so that the learning rate stays
   the number ReduceLROnPlateau changes and the optimizer's state is the usual one in checkpoints.

Each batch size runs :data:`WARMUP_STEPS` times as written (cuDNN's autotuning, inductor's
compilation, the allocator settling) before its capture; every batch is trained on exactly once
either way. On a CPU nothing is captured: the same step runs as written, gradients zeroed and
accumulated the same way, which is what the tests compare with the eager loop.
"""

from __future__ import annotations

import logging
import sys
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .device import Setup, forward
from .errors import HSNetError
from .model.fgal import FGAL
from .tensors import apply_augment

WARMUP_STEPS = 3  # steps per batch size run as written before that size's graph is captured

log = logging.getLogger(__name__)


def is_compiled(model) -> bool:
    """A torch.compile'd module (its dynamo is imported by then; importing it just to ask costs seconds)."""
    dynamo = sys.modules.get("torch._dynamo")
    return dynamo is not None and isinstance(model, dynamo.eval_frame.OptimizedModule)


@dataclass
class _Captured:
    graph: torch.cuda.CUDAGraph
    x: torch.Tensor
    y: torch.Tensor
    flip: torch.Tensor | None
    theta: torch.Tensor | None


def _copy(dst: torch.Tensor | None, src: torch.Tensor | None, what: str) -> None:
    if (dst is None) != (src is None):
        raise HSNetError(f"whole-step graph: this batch {'has' if src is not None else 'lacks'} {what}, the "
                         "captured step did not; augmentation settings can't change within a run")
    if dst is not None:
        dst.copy_(src, non_blocking=True)


class Step:
    """Training steps (``optimizer`` given) or validation steps of ``model``; call once per batch,
    :meth:`begin` before an epoch, :meth:`sums` after it.

    ``whole_graph``: zero and accumulate the gradients in fixed tensors and, on a GPU, capture
    the step as a CUDA graph per batch size (module docstring). Otherwise each step sets the
    gradients to None first (autograd then hands its gradient tensors over without a copy) and,
    for torch.compile's CUDA graph trees (``reduce-overhead``), marks a new step."""

    def __init__(self, model: torch.nn.Module, setup: Setup, optimizer: torch.optim.Optimizer | None = None,
                 *, whole_graph: bool = False):
        self.model, self.setup, self.optimizer = model, setup, optimizer
        self.training = optimizer is not None
        self.whole_graph = whole_graph
        self.capture = whole_graph and setup.device.type == "cuda"
        self.mark_steps = is_compiled(model) and not whole_graph
        self.params = [p for g in optimizer.param_groups for p in g["params"]] if optimizer else []
        self.loss_sum = torch.zeros((), device=setup.device)
        self.correct = torch.zeros((), device=setup.device, dtype=torch.long)
        self.seen = 0
        # validation: FGAL's lambda~ summed over the epoch's images (weighted by batch size), in the graph too
        self.fgal = None if self.training else next((m for m in model.modules() if isinstance(m, FGAL)), None)
        self.level_sum = torch.zeros(len(FGAL.LEVELS), device=setup.device) if self.fgal is not None else None
        self.graphs: dict[int, _Captured] = {}
        self.steps_as_written: Counter = Counter()  # per batch size, before its capture
        self.grads: list[torch.Tensor] | None = None  # the fixed gradient tensors the graphs write
        self.grad_params: list[torch.nn.Parameter] = []
        self.stream = torch.cuda.Stream(setup.device) if self.capture else None
        # float16 autocast (a GPU without bf16): small gradients underflow to zero unless the loss
        # is scaled (PyTorch's AMP notes); bf16 has float32's range and needs none
        fp16 = self.training and setup.amp_dtype == torch.float16
        self.scaler = torch.amp.GradScaler(setup.device.type) if fp16 else None

    def begin(self) -> None:
        """Before an epoch: the sums to zero, the model in training or evaluation mode."""
        self.model.train(self.training)
        self.loss_sum.zero_()
        self.correct.zero_()
        if self.level_sum is not None:
            self.level_sum.zero_()
        self.seen = 0
        if self.grads is not None and any(p.grad is not g for p, g in zip(self.grad_params, self.grads)):
            raise HSNetError("whole-step graph: a parameter's gradient tensor was replaced outside the step "
                             "(zero_grad(set_to_none=True)?); the captured graphs would write where Adam "
                             "no longer reads")

    def sums(self) -> tuple[float, float, int]:
        """(mean loss, accuracy, images) since :meth:`begin` (one host sync)."""
        n = max(self.seen, 1)
        return (self.loss_sum / n).item(), self.correct.item() / n, self.seen  # the mean in float32, as ever

    def level_means(self) -> dict[str, float]:
        """A validation step's FGAL weights lambda~_A, lambda~_B, lambda~_C averaged over every image
        since :meth:`begin` (what an epoch logs: the whole split, not its last batch); {} without
        FGAL, for training steps, or before a step."""
        if self.level_sum is None or not self.seen:
            return {}
        return dict(zip(FGAL.LEVELS, (self.level_sum / self.seen).tolist()))

    def _body(self, x, y, flip, theta) -> None:
        """The step up to Adam; in a graph, what the graph holds."""
        augment = (lambda t: apply_augment(t, flip, theta)) if flip is not None or theta is not None else None
        with torch.set_grad_enabled(self.training):
            logits = forward(self.model, x, self.setup, augment, autocast_cache=not self.capture)
            loss = F.cross_entropy(logits, y)
            if self.training:
                if self.whole_graph and self.grads is not None:
                    torch._foreach_zero_(self.grads)  # backward then accumulates into them, in place
                elif not self.whole_graph:
                    self.optimizer.zero_grad(set_to_none=True)
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
        self.loss_sum += loss.detach() * len(y)
        self.correct += (logits.argmax(1) == y).sum()
        if self.level_sum is not None:  # the buffer the forward just wrote (hsnet.model.fgal)
            self.level_sum += self.fgal.lambdas * len(y)

    def _fix_grads(self) -> None:
        """After the first step as written: the gradient tensors every later step writes into."""
        if self.whole_graph and self.training and self.grads is None:
            self.grad_params = [p for p in self.params if p.grad is not None]  # Adam skips the others
            self.grads = [p.grad for p in self.grad_params]

    @contextmanager
    def _side_stream(self) -> Iterator[None]:
        """Run on the capture's stream (warm-up and capture alike), ordered with the current stream."""
        if self.stream is None:
            yield
            return
        current = torch.cuda.current_stream(self.setup.device)
        self.stream.wait_stream(current)
        try:
            with torch.cuda.stream(self.stream):
                yield
        finally:
            current.wait_stream(self.stream)

    def _capture(self, x, y, flip, theta) -> _Captured:
        what = f"the {'training' if self.training else 'validation'} step for batches of {len(y)}"
        try:
            cap = _Captured(torch.cuda.CUDAGraph(), x.clone(), y.clone(), None if flip is None else flip.clone(),
                            None if theta is None else theta.clone())
            # thread_local: the host pipeline's thread pins memory meanwhile, which a global capture
            # forbids (torch.compile's own graphs capture the same way)
            with self._side_stream(), torch.cuda.graph(cap.graph, stream=self.stream,
                                                       capture_error_mode="thread_local"):
                self._body(cap.x, cap.y, cap.flip, cap.theta)
        except Exception as exc:  # the device may be left unusable: stop, say what and what to do
            raise HSNetError(f"train.compile whole-step: capturing {what} as a CUDA graph failed ({type(exc).__name__}: "
                             f"{exc}); train with train.compile auto (torch.compile's CUDA graphs) and "
                             "--resume from the last checkpoint") from exc
        log.info("whole-step: %s is now one CUDA graph", what)
        return cap

    def __call__(self, x: torch.Tensor, y: torch.Tensor, flip: torch.Tensor | None = None,
                 theta: torch.Tensor | None = None) -> None:
        """One step on a batch already on the device: images ``x`` (N, 3, S, S) uint8, labels ``y``;
        ``flip`` (N,) and ``theta`` (N, 2, 3) its augmentation, None for none."""
        n = len(y)
        if self.mark_steps:  # a new step for CUDA graph trees: earlier outputs may be reused
            torch.compiler.cudagraph_mark_step_begin()
        cap = self.graphs.get(n)
        if cap is None and self.capture and self.steps_as_written[n] >= WARMUP_STEPS:
            cap = self.graphs[n] = self._capture(x, y, flip, theta)  # records; runs nothing
        if cap is None:
            self.steps_as_written[n] += 1
            with self._side_stream():
                self._body(x, y, flip, theta)
            self._fix_grads()
        else:
            cap.x.copy_(x, non_blocking=True)
            cap.y.copy_(y, non_blocking=True)
            _copy(cap.flip, flip, "a flip mask")
            _copy(cap.theta, theta, "rotations")
            cap.graph.replay()
        if self.scaler is not None:  # unscales, skips a step whose gradients overflowed, adapts the scale
            self.scaler.step(self.optimizer)
            self.scaler.update()
        elif self.training:
            self.optimizer.step()
        self.seen += n

