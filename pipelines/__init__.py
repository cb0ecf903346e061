"""Kubeflow pipelines: ``hsnet_pipeline`` (one dataset, import to registered model)."""
