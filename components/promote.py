from kfp import dsl

from . import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def promote_model(model_uri: str, mlflow_tracking_uri: str, metric: str, min_delta: float, deploy: bool,
                  canary_percent: int, isvc: str = "", namespace: str = "") -> str:
    """hsnet promote (and --deploy): production moves to the registered version only if the gate passes
    (a refusal is an answer, not a failure: the run succeeds and says why); with ``deploy`` the
    KServe InferenceService then serves production with a canary share, as ``hsnet promote --deploy``
    does (hsnet.deploy.deploy_production: a version already in production is rolled out too, so a
    re-run with canary_percent 100 finishes a canary). Returns what happened.
    No defaults for the gate and the canary: a component's signature can't read hsnet's, so the
    pipeline passes them (hsnet.registry.GATE_METRIC, MIN_DELTA; hsnet.deploy.CANARY_PERCENT)."""
    from components.convert import start_step
    from hsnet.deploy import describe, promote_and_deploy
    from hsnet.registry import PromotionRefused, promote, registered_version

    start_step(mlflow_tracking_uri)
    name, version = registered_version(model_uri)
    deployed = None
    try:
        if deploy:  # the cluster checked first, as hsnet promote --deploy does
            r, deployed = promote_and_deploy(name, version=version, metric=metric, min_delta=min_delta,
                                             isvc=isvc or None, namespace=namespace or None,
                                             canary_percent=canary_percent)
        else:
            r = promote(name, version=version, metric=metric, min_delta=min_delta)
    except PromotionRefused as refused:
        return f"not promoted: {refused}"
    outcome = f"production -> version {r['production']}" if r["promoted"] else f"unchanged: {r['reason']}"
    if deployed is not None:
        outcome += "; " + describe(deployed)
    print(outcome)
    return outcome
