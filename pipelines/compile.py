"""Compile the pipelines to the YAML files committed beside them.

    python -m pipelines.compile                       # pipelines/*.yaml, naming the release images
    python -m pipelines.compile --image REF [OUT_DIR]  # against another build of the image

The committed YAML names the release tags of ``components.IMAGE`` / ``components.SLIM_IMAGE``.
``--image`` points every step at another build, e.g. the ``sha-<commit>`` tag
tests/container/build.sh gives every build, or a pushed digest (``REPO@sha256:...``, with
``--slim-image`` for the torch-free steps: a digest has no tag to derive it from); without
``--slim-image`` the slim image is REF's tag + ``-slim``.
"""

from __future__ import annotations

import argparse
import copy
import sys
from pathlib import Path

from kfp import compiler

HERE = Path(__file__).resolve().parent


def with_images(pipeline, image: str | None = None, slim_image: str | None = None):
    """A copy of the compiled ``pipeline`` (a ``@dsl.pipeline``) whose steps run in ``image`` (the
    steps built on ``components.IMAGE``) and ``slim_image`` (those on ``components.SLIM_IMAGE``;
    default: ``slim_image(image)``). Runs locally (kfp.local) and compiles like the original."""
    from components import IMAGE, SLIM_IMAGE, slim_image as derive_slim

    if image is None:
        return pipeline
    mapping = {IMAGE: image, SLIM_IMAGE: slim_image or derive_slim(image)}
    copied = copy.deepcopy(pipeline)
    executors = copied.pipeline_spec.deployment_spec["executors"]
    for name in executors:
        container = executors[name]["container"]
        if container["image"] not in mapping:
            raise ValueError(f"executor {name} runs in {container['image']}, not one of the project's images "
                             f"{sorted(mapping)}")
        container["image"] = mapping[container["image"]]
    return copied


def _sorted(value):
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def stable_header(text: str) -> str:
    """The compiler's header comment lists each parameter's default; a mapping's keys come out in
    another order from one run to the next (protobuf's map), which made every recompile a change
    to the committed files. Its mappings are written with sorted keys (the YAML itself is not
    touched)."""
    import ast

    lines = text.split("\n")
    for i, line in enumerate(lines):
        if not line.startswith("#"):
            break  # the header is the leading comment block
        head, sep, rest = line.partition(" [Default: ")
        if sep and rest.endswith("]") and rest[:1] in "{[":
            lines[i] = f"{head}{sep}{_sorted(ast.literal_eval(rest[:-1]))!r}]"
    return "\n".join(lines)


def compile_all(out_dir: Path = HERE, image: str | None = None, slim_image: str | None = None) -> list[Path]:
    from .ablation_pipeline import ablation_pipeline
    from .hsnet_pipeline import hsnet_pipeline

    written = []
    for func, name in ((hsnet_pipeline, "hsnet_pipeline.yaml"), (ablation_pipeline, "ablation_pipeline.yaml")):
        path = Path(out_dir) / name
        tmp = path.with_name(f".{path.stem}.tmp.yaml")
        compiler.Compiler().compile(with_images(func, image, slim_image), str(tmp))
        tmp.write_text(stable_header(tmp.read_text()))
        tmp.replace(path)
        written.append(path)
    return written


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.compile", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", nargs="?", type=Path, default=HERE, help="where the YAML files go (default: %(default)s)")
    parser.add_argument("--image", help="the image reference the torch steps run in (default: the release tag)")
    parser.add_argument("--slim-image", help="the torch-free steps' image (default: --image's tag + -slim)")
    args = parser.parse_args(argv)
    if args.slim_image and not args.image:
        parser.error("--slim-image needs --image")
    try:
        written = compile_all(args.out_dir, args.image, args.slim_image)
    except ValueError as exc:
        print(f"python -m pipelines.compile: {exc}", file=sys.stderr)
        return 2
    for p in written:
        print(p)
    return 0


if __name__ == "__main__":
    sys.exit(main())
