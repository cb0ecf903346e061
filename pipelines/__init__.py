"""Kubeflow pipelines: ``hsnet_pipeline`` (one dataset, import to registered model) and
``ablation_pipeline`` (Table 6); ``submit`` starts runs, ``compile`` writes their YAML.

The cluster's defaults (README "On a cluster"), here so that ``submit`` reads them without
compiling a pipeline:"""

BUCKET = "s3://hsnet-data/"  # the cluster's data bucket
RAW_PREFIX = BUCKET + "raw/"  # the raw datasets: RAW_PREFIX + DATASET
DEFAULT_CHECKPOINT_URI = BUCKET + "checkpoints"  # train's durable checkpoints
DEFAULT_MLFLOW_URI = "http://mlflow.kubeflow.svc.cluster.local:5000"  # mlflow/k8s/mlflow.yaml's Service
