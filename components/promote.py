from kfp import dsl

from . import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def promote_model(model_uri: str, mlflow_tracking_uri: str, metric: str = "accuracy", min_delta: float = 0.0,
                  deploy: bool = False, canary_percent: int = 10, isvc: str = "", namespace: str = "") -> str:
    """hsnet promote (and --deploy): production moves to the registered version only if the gate passes
    (a refusal is an answer, not a failure: the run succeeds and says why); with ``deploy`` the
    KServe InferenceService then gets it with a canary share. Returns what happened."""
    from components.convert import start_step
    from hsnet.deploy import rollout
    from hsnet.registry import PromotionRefused, promote

    start_step(mlflow_tracking_uri)
    name, _, version = model_uri.removeprefix("models:/").rpartition("/")
    try:
        r = promote(name, version=version, metric=metric, min_delta=min_delta)
    except PromotionRefused as refused:
        return f"not promoted: {refused}"
    outcome = f"production -> version {r['production']}" if r["promoted"] else f"unchanged: {r['reason']}"
    if deploy and r["promoted"]:
        d = rollout(f"models:/{name}/{r['production']}", name=isvc or name, namespace=namespace or None,
                    canary_percent=canary_percent)
        outcome += f"; InferenceService {d['namespace']}/{isvc or name}: {d['action']}"
    print(outcome)
    return outcome
