from kfp import dsl
from kfp.dsl import Artifact, Input, Model

from . import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register_model(dataset: str, mlflow_tracking_uri: str, model: Input[Model], report: Input[Artifact]) -> str:
    """hsnet register: a new version of hsnet-DATASET (alias candidate); returns its models:/ URI."""
    from pathlib import Path

    from components.convert import start_step
    from hsnet.checkpoint import BEST
    from hsnet.evaluate import METRICS_FILE
    from hsnet.registry import register

    start_step(mlflow_tracking_uri)
    return register(Path(model.path) / BEST, Path(report.path) / METRICS_FILE, dataset)["model_uri"]
