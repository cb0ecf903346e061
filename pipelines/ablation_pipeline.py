"""Table 6 on a cluster: the eight DIB/FGAL/KTL configurations trained in parallel, one GPU each.

fetch -> import -> validate -> crop once, then a ParallelFor over the configurations:
train (with ``model.dib/fgal/ktl`` set) -> evaluate, every pair on the same crops and splits.
Compile: ``python -m pipelines.compile``; upload ``pipelines/ablation_pipeline.yaml``.
"""

from kfp import dsl, kubernetes

from components import crop_faces, evaluate_model, fetch_raw, import_data, train_model, validate_data
from hsnet.reproduce import CONFIGS

from .hsnet_pipeline import DEFAULT_PARAMS, GPU, _secrets

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
    fetch = _secrets(fetch_raw(source=raw_source, dvc_path=dvc_path, dvc_rev=dvc_rev)).set_display_name("fetch")
    imported = import_data(dataset=dataset, params=params, raw=fetch.outputs["raw"]).set_display_name("import")
    validated = validate_data(dataset=dataset, params=params, raw=fetch.outputs["raw"],
                              manifest=imported.outputs["manifest"]).set_display_name("validate")
    cropped = crop_faces(dataset=dataset, params=params, device="cpu", raw=fetch.outputs["raw"],
                         manifest=imported.outputs["manifest"]).set_display_name("crop").after(validated)
    with dsl.ParallelFor(items=ABLATION_CONFIGS, parallelism=8) as config:
        trained = _secrets(train_model(dataset=dataset, params=params, mlflow_tracking_uri=mlflow_tracking_uri,
                                       crops=cropped.outputs["crops"], model_overrides=config),
                           mlflow=True).set_display_name("train")
        trained.set_accelerator_type(GPU).set_accelerator_limit(1).set_cpu_request("4").set_memory_request("16G")
        kubernetes.add_toleration(trained, key=GPU, operator="Exists", effect="NoSchedule")
        _secrets(evaluate_model(mlflow_tracking_uri=mlflow_tracking_uri, crops=cropped.outputs["crops"],
                                model=trained.outputs["model"]), mlflow=True).set_display_name("evaluate")
