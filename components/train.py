from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from . import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_model(dataset: str, params: dict, mlflow_tracking_uri: str, crops: Input[Dataset],
                model: Output[Model], metrics: Output[Metrics], curves: Output[HTML], model_overrides: dict = {},
                seed: int = -1):
    """hsnet train: the paper's recipe on the crops; MLflow run at MLFLOW_TRACKING_URI.
    ``model_overrides``: model switches to change, e.g. {"dib": false} (the ablation).
    ``seed``: train.seed for this run (the ablation's repeats); -1 keeps params'."""
    import base64
    from pathlib import Path

    from components.convert import params_for, start_step
    from hsnet.checkpoint import BEST
    from hsnet.train import train

    start_step(mlflow_tracking_uri)
    overrides = {"model": model_overrides or {}, "train": {"seed": seed} if seed >= 0 else {}}
    summary = train(crops.path, params_for(params, dataset, overrides), model.path)
    metrics.log_metric("best_val_accuracy", summary["best_val_accuracy"])
    metrics.log_metric("best_epoch", summary["best_epoch"])
    metrics.log_metric("epochs_run", summary["epochs_run"])
    png = base64.b64encode((Path(model.path) / "training_curves.png").read_bytes()).decode()
    Path(curves.path).write_text(f'<html><body><img alt="training curves" src="data:image/png;base64,{png}">'
                                 "</body></html>")
    model.metadata.update(dataset=dataset, framework="pytorch", checkpoint=BEST,
                          **{f"model.{k}": v for k, v in (model_overrides or {}).items()},
                          **({"train.seed": seed} if seed >= 0 else {}),
                          mlflow_run_id=summary["mlflow_run_id"] or "")
