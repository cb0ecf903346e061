"""What only Kubeflow needs between its parameters and the hsnet steps.

Component bodies run in the project's image, where ``components`` is installed beside ``hsnet``
(pyproject's package list), so they import these helpers at run time.
"""

from __future__ import annotations

import logging
import os


def restore_ints(value):
    """Kubeflow's parameter transport (protobuf Struct) turns every int into a float: 500 -> 500.0."""
    if isinstance(value, dict):
        return {k: restore_ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [restore_ints(v) for v in value]
    return int(value) if isinstance(value, float) and value.is_integer() else value


def params_for(params: dict, dataset: str, overrides: dict | None = None):
    """The typed, checked settings of ``dataset`` from the pipeline's ``params`` parameter (a whole
    params.yaml as a mapping)."""
    from hsnet.params import Params

    return Params.from_mapping(restore_ints(params), dataset, restore_ints(overrides or {}),
                               source="the pipeline's params", overrides_name="model_overrides")


def start_step(mlflow_tracking_uri: str = "") -> None:
    """Logging as the hsnet CLI has it, and the MLflow server the step records to."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("great_expectations", "botocore", "urllib3", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if mlflow_tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = mlflow_tracking_uri
