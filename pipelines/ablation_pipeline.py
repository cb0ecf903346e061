"""Table 6 on a cluster: the eight DIB/FGAL/KTL configurations trained in parallel, one GPU each.

fetch -> import -> validate -> crop once, then a ParallelFor over the configurations:
train (with ``model.dib/fgal/ktl`` set) -> evaluate, every pair on the same crops and splits.
Compile: ``python -m pipelines.compile``; upload ``pipelines/ablation_pipeline.yaml``.
"""

from kfp import dsl

from hsnet.reproduce import CONFIGS

from .hsnet_pipeline import DEFAULT_PARAMS, prepare_crops, train_and_evaluate

ABLATION_CONFIGS = [{"dib": dib, "fgal": fgal, "ktl": ktl} for dib, fgal, ktl in CONFIGS]


@dsl.pipeline(name="hsnet-ablation", description="HSNet Table 6: 8 configurations of DIB, FGAL and KTL in parallel")
def ablation_pipeline(
    dataset: str = "rafdb",
    raw_source: str = "s3://hsnet-data/raw/rafdb",
    dvc_path: str = "",
    dvc_rev: str = "",
    params: dict = DEFAULT_PARAMS,
    mlflow_tracking_uri: str = "http://mlflow.kubeflow.svc.cluster.local:5000",
):
    cropped = prepare_crops(dataset, raw_source, dvc_path, dvc_rev, params, "cpu")
    with dsl.ParallelFor(items=ABLATION_CONFIGS, parallelism=8) as config:
        train_and_evaluate(dataset, params, mlflow_tracking_uri, cropped.outputs["crops"], model_overrides=config)
