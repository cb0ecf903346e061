from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from . import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def train_model(dataset: str, params: dict, mlflow_tracking_uri: str, crops: Input[Dataset],
                model: Output[Model], metrics: Output[Metrics], curves: Output[HTML], model_overrides: dict = {},
                seed: int = -1, checkpoint_uri: str = "", checkpoint_every_s: float = -1.0, stem_version: str = ""):
    """hsnet train: the paper's recipe on the crops; MLflow run at MLFLOW_TRACKING_URI.
    ``model_overrides``: model switches to change, e.g. {"dib": false} (the ablation).
    ``seed``: train.seed for this run (the ablation's repeats); -1 keeps params'.
    ``checkpoint_uri``: an s3:// prefix; last.pt (and best.pt) go to CHECKPOINT_URI/RUN_ID/DATASET-SETTINGS
    after the first epoch and then at most every ``checkpoint_every_s`` seconds (0: every epoch; -1,
    or any negative: hsnet.durable.INTERVAL_S), and a restarted pod (preemption, a retry) resumes
    from there; "" keeps them local. With them, an epoch's figures reach the MLflow run when its
    checkpoint is up (so they lag by up to that interval, and a retry logs no epoch twice).
    The Model artifact holds best.pt and the run's summary and history, not the resume state.
    ``stem_version``: source-version's version of the KTL stem weights, part of this step's cache
    key (new weights at the same URI train again); refused when the weights are no longer that
    version (components.convert.check_stem_version)."""
    import base64
    import logging
    import tempfile
    from pathlib import Path

    from components.convert import (check_stem_version, checkpoint_interval, params_for, run_id, start_step,
                                    write_metrics_file)
    from hsnet import durable
    from hsnet.checkpoint import BEST
    from hsnet.train import CURVES, export_model

    start_step(mlflow_tracking_uri)
    check_stem_version(params, dataset, model_overrides, stem_version)
    overrides = {"model": model_overrides or {}, "train": {"seed": seed} if seed >= 0 else {}}
    settings = params_for(params, dataset, overrides)
    prefix = durable.prefix_for_run(checkpoint_uri, run_id(), settings)
    if prefix:
        logging.getLogger("hsnet").info("durable checkpoints at %s", prefix)
    if stem_version:
        logging.getLogger("hsnet").info("stem weights: %s", stem_version)
    with tempfile.TemporaryDirectory(prefix="train-") as work:
        summary = durable.train(crops.path, settings, work, prefix,
                                min_interval_s=checkpoint_interval(checkpoint_every_s))
        export_model(work, model.path)
        png = base64.b64encode((Path(work) / CURVES).read_bytes()).decode()
    metrics.log_metric("best_val_accuracy", summary["best_val_accuracy"])
    metrics.log_metric("best_epoch", summary["best_epoch"])
    metrics.log_metric("epochs_run", summary["epochs_run"])
    write_metrics_file(metrics)
    Path(curves.path).write_text(f'<html><body><img alt="training curves" src="data:image/png;base64,{png}">'
                                 "</body></html>")
    model.metadata.update(dataset=dataset, framework="pytorch", checkpoint=BEST,
                          **{f"model.{k}": v for k, v in (model_overrides or {}).items()},
                          **({"train.seed": seed} if seed >= 0 else {}),
                          mlflow_run_id=summary["mlflow_run_id"] or "")
