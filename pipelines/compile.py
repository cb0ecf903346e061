"""Compile the pipelines to the YAML files committed beside them: ``python -m pipelines.compile``."""

from __future__ import annotations

import sys
from pathlib import Path

from kfp import compiler

HERE = Path(__file__).resolve().parent


def compile_all(out_dir: Path = HERE) -> list[Path]:
    from .ablation_pipeline import ablation_pipeline
    from .hsnet_pipeline import hsnet_pipeline

    written = []
    for func, name in ((hsnet_pipeline, "hsnet_pipeline.yaml"), (ablation_pipeline, "ablation_pipeline.yaml")):
        path = Path(out_dir) / name
        tmp = path.with_name(f".{path.stem}.tmp.yaml")
        compiler.Compiler().compile(func, str(tmp))
        tmp.replace(path)
        written.append(path)
    return written


if __name__ == "__main__":
    for p in compile_all(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(p)
