from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from . import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_model(dataset: str, params: dict, mlflow_tracking_uri: str, crops: Input[Dataset],
                model: Output[Model], metrics: Output[Metrics], curves: Output[HTML], model_overrides: dict = {}):
    """hsnet train: the paper's recipe on the crops; MLflow run at MLFLOW_TRACKING_URI.
    ``model_overrides``: model switches to change, e.g. {"dib": false} (the ablation)."""
    import base64
    import json
    import os
    from pathlib import Path

    from hsnet.cli import run
    from hsnet.params import params_file

    if mlflow_tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = mlflow_tracking_uri
    sets = [a for key, value in (model_overrides or {}).items() for a in ("--set", f"model.{key}={json.dumps(value)}")]
    with params_file(params) as params_path:
        run(["train", "--data", crops.path, "--dataset", dataset, "--params", params_path,
             "--out", model.path, *sets])
    summary = json.loads((Path(model.path) / "train_summary.json").read_text())
    metrics.log_metric("best_val_accuracy", summary["best_val_accuracy"])
    metrics.log_metric("best_epoch", summary["best_epoch"])
    metrics.log_metric("epochs_run", summary["epochs_run"])
    png = base64.b64encode((Path(model.path) / "training_curves.png").read_bytes()).decode()
    Path(curves.path).write_text(f'<html><body><img alt="training curves" src="data:image/png;base64,{png}">'
                                 "</body></html>")
    model.metadata.update(dataset=dataset, framework="pytorch", checkpoint="best.pt",
                          **{f"model.{k}": v for k, v in (model_overrides or {}).items()},
                          mlflow_run_id=summary["mlflow_run_id"] or "")
