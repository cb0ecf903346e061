from kfp import dsl
from kfp.dsl import Artifact, ClassificationMetrics, Dataset, Input, Markdown, Metrics, Model, Output

from . import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def evaluate_model(mlflow_tracking_uri: str, crops: Input[Dataset], model: Input[Model], report: Output[Artifact],
                   metrics: Output[Metrics], confusion: Output[ClassificationMetrics], comparison: Output[Markdown]):
    """hsnet evaluate on the test split: accuracy, mean accuracy, confusion matrix, comparison with the paper."""
    import json
    import os
    import shutil
    from pathlib import Path

    from hsnet.cli import run

    if mlflow_tracking_uri:
        os.environ["MLFLOW_TRACKING_URI"] = mlflow_tracking_uri
    run(["evaluate", "--checkpoint", str(Path(model.path) / "best.pt"), "--data", crops.path,
         "--out", report.path])
    m = json.loads((Path(report.path) / "metrics.json").read_text())
    metrics.log_metric("accuracy", m["accuracy"])
    metrics.log_metric("mean_accuracy", m["mean_accuracy"])
    for name, acc in m["per_class_accuracy"].items():
        metrics.log_metric(f"accuracy_{name}", acc)
    confusion.log_confusion_matrix(m["classes"], m["confusion_matrix"])
    shutil.copyfile(Path(report.path) / "comparison.md", comparison.path)
