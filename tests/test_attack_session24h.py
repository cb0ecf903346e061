"""Attack 24h: same inputs, same numbers? What a run records as the cause of other figures.

README ("Training and evaluation"): "Another processor or thread count sums in another order and
gives other figures (a few 1e-4 of loss after one epoch); every MLflow run records both (tags
`system.cpu_kernels`, `system.cpu_threads`)." hsnet.tracking.system_tags: "What a run's numbers
depend on besides its settings and data: ... on the CPU the kernels PyTorch picked for this
processor (AVX512, AVX2, DEFAULT) and the thread count, which change the floating-point sums".
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]

# HSNet's eval forward (hsnet.device.forward: what training, evaluation, prediction and serving all
# run) of a seeded model on a seeded batch, and the system tags tracking.run records beside it.
_FORWARD_AND_TAGS = textwrap.dedent("""
    import json, sys
    import torch
    torch.set_num_threads(1)
    from hsnet import checkpoint, tracking
    from hsnet.device import forward, pick_device, place
    from hsnet.params import Params
    setup = pick_device("cpu")
    torch.manual_seed(0)
    model = place(checkpoint.build_model(7, Params.from_mapping(None, "sample", {"model": {"ktl": False}}).model),
                  setup).eval()
    x = torch.randint(0, 256, (4, 3, 80, 80), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = forward(model, x, setup)
    json.dump({"logits": logits.tolist(), "tags": tracking.system_tags()}, open(sys.argv[1], "w"))
""")


def _forward_and_tags(tmp_path: Path, name: str, **env) -> dict:
    out = tmp_path / f"{name}.json"
    full = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "DNNL_MAX_CPU_ISA")}
    full.update(env, PYTHONPATH=str(REPO) + os.pathsep + full.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    subprocess.run([sys.executable, "-c", _FORWARD_AND_TAGS, str(out)], env=full, check=True, timeout=120,
                   capture_output=True)
    return json.loads(out.read_text())


def test_convolution_kernels_that_change_the_figures_change_the_recorded_kernels(tmp_path):
    """Promise (README, hsnet.tracking.system_tags): the runs' tags record what, besides settings
    and data, makes another process's figures differ: the processor's kernels
    (``system.cpu_kernels``) and the thread count. Independent expectation: two processes on the
    same machine, same code, seed, input and thread count, whose figures differ, differ in a
    recorded ``system.*`` tag; otherwise two runs whose tags say "same kernels, same threads"
    disagree and nothing recorded says why (a retried Kubeflow pod on a node with another
    processor of the same ATen capability: the same case).

    ``system.cpu_kernels`` is ATen's capability (torch.backends.cpu.get_cpu_capability) only; the
    convolutions, which are most of HSNet's arithmetic, run in oneDNN, which picks its own
    instruction set (by processor; capped by ``ONEDNN_MAX_CPU_ISA``). Capped at AVX2 on an
    AVX-512 machine the logits change (≈1e-6) while every system tag stays the same. Where oneDNN
    has no AVX-512 to cap the two processes compute the same and the test passes."""
    plain = _forward_and_tags(tmp_path, "plain")
    capped = _forward_and_tags(tmp_path, "avx2", ONEDNN_MAX_CPU_ISA="AVX2")
    if plain["logits"] == capped["logits"]:
        return  # the same figures: nothing to record
    diff = max(abs(a - b) for ra, rb in zip(plain["logits"], capped["logits"]) for a, b in zip(ra, rb))
    assert plain["tags"] != capped["tags"], (
        f"other convolution kernels (oneDNN capped at AVX2) gave other logits (max difference {diff:.2e}) "
        f"with the same recorded system tags {plain['tags']}: system.cpu_kernels "
        f"({plain['tags'].get('system.cpu_kernels')}) names ATen's kernels, not the convolutions'")
