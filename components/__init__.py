"""Kubeflow Pipelines components: one per pipeline step, each a thin wrapper over one hsnet step function.

Every component runs in the project's image (``IMAGE``, or ``SLIM_IMAGE`` for the torch-free
steps) with hsnet, these components and kfp installed, so ``install_kfp_package=False`` and no
packages are installed at run time. A component turns its KFP parameters into typed settings
(``components.convert.params_for``), its artifacts into paths, calls the same function the DVC
stage's ``hsnet`` verb calls, and turns the files written into typed outputs (Metrics,
ClassificationMetrics, HTML, Markdown).
"""

import os

from hsnet import __version__

# The release tags the committed YAML names (``python -m pipelines.compile --image REF`` compiles
# against another build, e.g. the sha-<commit> tag tests/container/build.sh gives every build).
# IMAGE: the Dockerfile's default target, for the steps that need torch (crop, train, evaluate,
# register); SLIM_IMAGE: its ``slim`` target, no torch (fetch, import, validate; the MLflow server).
IMAGE = f"ghcr.io/hsnet-pipeline/hsnet:{__version__}"


def slim_image(image: str) -> str:
    """The torch-free image built with ``image``: its tag + ``-slim`` (a digest reference has no
    tag to extend: name the slim image explicitly then)."""
    name, _, tag = image.rpartition(":")
    if "@" in image or not name or "/" in tag:
        raise ValueError(f"{image!r} has no tag to derive the slim image's from: give the slim image too")
    return f"{image}-slim"


SLIM_IMAGE = slim_image(IMAGE)

# Inside a running step (KFP sets _KFP_RUNTIME=true) kfp.dsl has no ``component`` decorator: a
# step that imports components.convert must not define the components again.
if os.environ.get("_KFP_RUNTIME", "false") != "true":
    from .crop import crop_faces  # noqa: E402
    from .evaluate import evaluate_model  # noqa: E402
    from .fetch import fetch_raw, source_version  # noqa: E402
    from .import_data import import_data  # noqa: E402
    from .promote import promote_model  # noqa: E402
    from .register import register_model  # noqa: E402
    from .train import train_model  # noqa: E402
    from .validate import validate_data  # noqa: E402

__all__ = ["IMAGE", "SLIM_IMAGE", "source_version", "fetch_raw", "import_data", "validate_data", "crop_faces",
           "train_model", "evaluate_model", "register_model", "promote_model"]
