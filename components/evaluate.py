from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from . import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate_model(mlflow_tracking_uri: str, crops: Input[Dataset], model: Input[Model], report: Output[Artifact],
                   metrics: Output[Metrics], confusion: Output[ClassificationMetrics], comparison: Output[Markdown],
                   dataset: str = "", params: dict = {}):
    """hsnet evaluate on the test split: accuracy, mean accuracy, confusion matrix, comparison with the paper.
    ``params`` (with ``dataset``): the evaluate settings to use (source-version's ``evaluate_settings``);
    without them, those the model was trained with."""
    import shutil
    from pathlib import Path

    from components.convert import params_for, start_step, write_metrics_file
    from hsnet.checkpoint import BEST
    from hsnet.evaluate import COMPARISON, evaluate

    start_step(mlflow_tracking_uri)
    if params and not dataset:  # as hsnet evaluate --params without --dataset
        from hsnet.errors import HSNetError

        raise HSNetError("params needs dataset (whose 'evaluate' settings to use)")
    settings = params_for(params, dataset).evaluate if params else None
    m = evaluate(Path(model.path) / BEST, crops.path, report.path, settings=settings)
    metrics.log_metric("accuracy", m["accuracy"])
    metrics.log_metric("mean_accuracy", m["mean_accuracy"])
    for name, acc in m["per_class_accuracy"].items():
        if acc is not None:  # a class with no test image has no accuracy
            metrics.log_metric(f"accuracy_{name}", acc)
    confusion.log_confusion_matrix(m["classes"], m["confusion_matrix"])
    write_metrics_file(metrics, confusion)
    shutil.copyfile(Path(report.path) / COMPARISON, comparison.path)
