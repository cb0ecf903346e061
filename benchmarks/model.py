"""Model speed: training and inference images/s of HSNet and of the Inception-ResNet-V1 baseline,
forward FLOPs per image, and the achieved GFLOP/s against this machine's fp32 matmul GFLOP/s.

    python -m benchmarks.model            # 100x100 and 224x224, batch 32
    python -m benchmarks.model --smoke

Compared in one run:
* ``facenet IRV1 eager``: facenet-pytorch's InceptionResnetV1 (the paper's baseline), a plain
  eager PyTorch loop (float input, Adam, cross-entropy), everything trainable;
* ``HSNet module eager``: the same plain loop over HSNet with every layer trainable;
* ``hsnet train path``: ``hsnet.train.run_epoch`` as ``hsnet train`` runs it: uint8 tensor
  cache, augmentation and normalisation in the loop, the paper's KTL (frozen stem), the
  device setup of ``pick_device`` (channels-last etc.).
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np
import torch
import torch.nn.functional as F

from hsnet.params import TrainParams

from .common import parser, rate, save


def matmul_gflops(n: int = 2048, repeat: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    r = rate(lambda: torch.mm(a, b), 1, warmup=2, repeat=repeat)
    return r * 2 * n ** 3 / 1e9


def forward_flops(model, size: int) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(torch.randn(1, 3, size, size))
    return counter.get_total_flops()


def eager_train(model, size, batch, steps):
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=1e-3)
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 7, (batch,))
    model.train()

    def step():
        for _ in range(steps):
            opt.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            opt.step()
    return step


def eager_infer(model, size, batch, steps):
    x = torch.randn(batch, 3, size, size)
    model.eval()

    def step():
        with torch.inference_mode():
            for _ in range(steps):
                model(x)
    return step


def synthetic_split(n: int, size: int):
    from hsnet.tensors import Split

    rng = np.random.default_rng(0)
    return Split(rng.integers(0, 256, (n, 3, size, size), dtype=np.uint8), torch.randint(0, 7, (n,)),
                 [f"{i}.png" for i in range(n)])


BENCH_TRAIN = TrainParams(lr=1e-3)  # train settings of the speed runs: the paper's Adam at 1e-3
AUG = dataclasses.asdict(BENCH_TRAIN.augment)  # the paper's flip and rotation (hsnet.params.AugmentParams)


def train_path(size, batch, steps, device: str = "cpu"):
    """hsnet train's loop on a synthetic uint8 split: returns a callable and the model."""
    from hsnet.tensors import Batches
    from hsnet.checkpoint import build_model
    from hsnet.device import pick_device
    from hsnet.params import ModelParams
    from hsnet.train import make_optimizer, run_epoch

    setup = pick_device(device)
    model = build_model(7, ModelParams(), for_checkpoint=True)  # frozen stem
    model = model.to(setup.device)
    if setup.channels_last:
        model = model.to(memory_format=torch.channels_last)
    opt = make_optimizer([p for p in model.parameters() if p.requires_grad], BENCH_TRAIN, setup)
    split = synthetic_split(batch * steps, size)
    gen = torch.Generator().manual_seed(0)

    def step():
        batches = Batches(split, torch.randperm(len(split), generator=gen), batch, setup.device)
        run_epoch(model, batches, setup, optimizer=opt, generator=gen, aug=AUG)
    return step, model


def main(argv=None) -> dict:
    args = parser(__doc__).parse_args(argv)
    from facenet_pytorch import InceptionResnetV1

    from hsnet.model import HSNet

    sizes, batch, steps, repeat = ([80], 4, 1, 1) if args.smoke else ([100, 224], 32, 2, 3)
    t0 = time.time()
    gflops_peak = matmul_gflops(512 if args.smoke else 2048, 2 if args.smoke else 5)
    rows = []
    for size in sizes:
        torch.manual_seed(0)
        models = {
            "facenet IRV1 eager": InceptionResnetV1(classify=True, num_classes=7),
            "HSNet module eager": HSNet(7, ktl=False),
        }
        for name, model in models.items():
            flops = forward_flops(model, size)
            tr = rate(eager_train(model, size, batch, steps), batch * steps, warmup=1, repeat=repeat)
            inf = rate(eager_infer(model, size, batch, steps), batch * steps, warmup=1, repeat=repeat)
            rows.append({"model": name, "size": size, "train_img_s": tr, "infer_img_s": inf,
                         "gflops_per_img": flops / 1e9, "train_gflop_s": tr * 3 * flops / 1e9,
                         "infer_gflop_s": inf * flops / 1e9})
            print(rows[-1], flush=True)
        step, model = train_path(size, batch, steps)
        flops = forward_flops(model, size)
        tr = rate(step, batch * steps, warmup=1, repeat=repeat)
        rows.append({"model": "hsnet train path", "size": size, "train_img_s": tr, "gflops_per_img": flops / 1e9})
        print(rows[-1], flush=True)
    by = {(r["model"], r["size"]): r for r in rows}
    ratios = {}
    for size in sizes:
        base = by[("facenet IRV1 eager", size)]["train_img_s"]
        ratios[f"train_path_vs_baseline_{size}"] = by[("hsnet train path", size)]["train_img_s"] / base
        ratios[f"hsnet_module_vs_baseline_{size}"] = by[("HSNet module eager", size)]["train_img_s"] / base
    result = {"batch": batch, "matmul_gflop_s": gflops_peak, "rows": rows, "ratios": ratios,
              "seconds": time.time() - t0}
    save("model" + ("-smoke" if args.smoke else ""), result, args.out)
    print(ratios)
    return result


if __name__ == "__main__":
    main()
