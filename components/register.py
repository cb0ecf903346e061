from kfp import dsl
from kfp.dsl import Artifact, Input, Model

from . import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def register_model(dataset: str, mlflow_tracking_uri: str, model: Input[Model], report: Input[Artifact]) -> str:
    """hsnet register: a new version of hsnet-DATASET (alias candidate); returns its models:/ URI."""
    import json
    import os
    import tempfile
    from pathlib import Path

    from hsnet.cli import run

    if mlflow_tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = mlflow_tracking_uri
    with tempfile.TemporaryDirectory(prefix="register-") as tmp:
        out = Path(tmp) / "registered.json"
        run(["register", "--checkpoint", str(Path(model.path) / "best.pt"),
             "--metrics", str(Path(report.path) / "metrics.json"), "--dataset", dataset, "--out", str(out)])
        return json.loads(out.read_text())["model_uri"]
