"""Helpers of the deploy tests: a live InferenceService as the template and an earlier rollout left
it (a model, a serving image), and the image an object names."""

from __future__ import annotations


def live_isvc(image: str, model: str = "models:/hsnet-rafdb/7") -> dict:
    """The template's InferenceService hsnet-rafdb in namespace models, serving ``model`` on ``image``."""
    from hsnet.deploy import _container, load_template, set_model

    live = set_model(load_template(), model, None)
    live["metadata"].update(namespace="models", name="hsnet-rafdb")
    _container(live)["image"] = image
    return live


def image_of(isvc: dict) -> str:
    """The model server's image an InferenceService names."""
    from hsnet.deploy import _container

    return _container(isvc)["image"]
