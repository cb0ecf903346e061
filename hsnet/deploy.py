"""Serving deployment: ``hsnet serve``'s launcher and the KServe InferenceService that follows promotion.

* :func:`serve_command` starts the model server (:mod:`hsnet.serve`) here, or, where KServe's
  SDK is not importable beside the project's packages (its pins clash, serving/requirements.txt),
  again with the overlay ``make serve-env`` installed in front of them.
* :func:`render` fills hsnet/k8s/inferenceservice.yaml (the one template) with a model URI
  and a canary share; :func:`rollout` applies it to the cluster after a promotion: the
  InferenceService's model container is pointed at the new version with
  ``canaryTrafficPercent`` (KServe routes that share to the new revision and the rest to the
  last rolled-out one), or created when there is none. :func:`rollback` returns the traffic:
  during a canary of the rolled-back version by ``canaryTrafficPercent: 0`` (KServe's own
  rollback, immediate), otherwise by rolling the model back to the production version.

The cluster is reached with the Kubernetes client's usual configuration (``KUBECONFIG`` or
~/.kube/config, else the pod's service account); changes are read-modify-replace with the
object's ``resourceVersion``, so a concurrent change is a conflict, never lost.
"""

from __future__ import annotations

import copy
import logging
import os
import sys
from pathlib import Path

from . import __version__, tracking
from .errors import HSNetError
from .registry import GATE_METRIC, MIN_DELTA

log = logging.getLogger(__name__)

# inside the package, so that an installed hsnet (the images, a pip install) renders it too
TEMPLATE = Path(__file__).resolve().parent / "k8s" / "inferenceservice.yaml"
GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
CONTAINER = "kserve-container"
SERVE_IMAGE = f"ghcr.io/hsnet-pipeline/hsnet-serve:{__version__}"  # serving/Dockerfile, the template's image
VERSION_ANNOTATION = "hsnet.io/model-uri"
CANARY_PERCENT = 10  # a newly promoted version's share of the traffic, unless told otherwise


# --- hsnet serve -------------------------------------------------------------------------------
def overlay_dir() -> Path:
    """Where ``make serve-env`` installs KServe's SDK and its pins: ``<venv>/serve``."""
    return Path(sys.prefix) / "serve"


def serve_command(args) -> int:
    """``hsnet serve``: run the model server in this process, or re-run it with the overlay."""
    from .limits import Limits

    limits = Limits.from_env(**{k: getattr(args, k) for k in Limits.names()})
    try:
        import kserve  # noqa: F401
    except ImportError:
        overlay = overlay_dir()
        if os.environ.get("HSNET_SERVE_OVERLAY_TRIED") or not (overlay / "kserve").is_dir():
            raise HSNetError("hsnet serve needs KServe's SDK, which pins pandas<3 and psutil<6 against this "
                             f"environment's: run `make serve-env` (installs it into {overlay}, used by hsnet "
                             "serve) or use the serving image (serving/Dockerfile)") from None
        env = {**os.environ, "HSNET_SERVE_OVERLAY_TRIED": "1",
               "PYTHONPATH": os.pathsep.join(p for p in (str(overlay), os.environ.get("PYTHONPATH")) if p)}
        argv = [sys.executable, "-m", "hsnet.cli", "serve", "--model", str(args.model), "--port", str(args.port),
                "--host", args.host, "--name", args.name, "--min-prob", str(args.min_prob),
                "--min-face-size", str(args.min_face_size), "--grace-period", str(args.grace_period)]
        for flag in ("threads", "device", *Limits.names()):
            if getattr(args, flag) is not None:
                argv += ["--" + flag.replace("_", "-"), str(getattr(args, flag))]
        if args.verbose:
            argv.insert(3, "-v")
        os.execve(sys.executable, argv, env)  # the same process (signals reach the server)
    from .serve import serve

    serve(args.model, port=args.port, host=args.host, name=args.name, limits=limits, device=args.device,
          min_prob=args.min_prob, min_face_size=args.min_face_size, threads=args.threads,
          grace_period=args.grace_period)
    return 0


# --- the InferenceService ----------------------------------------------------------------------
def load_template(path: str | os.PathLike = TEMPLATE) -> dict:
    import yaml

    docs = [d for d in yaml.safe_load_all(Path(path).read_text(encoding="utf-8")) if d]
    isvcs = [d for d in docs if d.get("kind") == "InferenceService"]
    if len(isvcs) != 1:
        raise HSNetError(f"{path}: expected one InferenceService, found {len(isvcs)}")
    return isvcs[0]


def _container(isvc: dict) -> dict:
    containers = isvc.get("spec", {}).get("predictor", {}).get("containers") or []
    for c in containers:
        if c.get("name") == CONTAINER:
            return c
    raise HSNetError(f"InferenceService {isvc.get('metadata', {}).get('name')}: no predictor container named "
                     f"{CONTAINER!r} (the model server)")


def model_of(isvc: dict) -> str | None:
    args = _container(isvc).get("args") or []
    return args[args.index("--model") + 1] if "--model" in args[:-1] else None


def check_canary(canary_percent: int | None) -> None:
    """A canary share is a whole percentage of the traffic: 0 to 100 (100 or None: all of it); a
    whole float (Kubeflow's parameter transport makes 10 into 10.0) is that number."""
    if canary_percent is None:
        return
    whole = (not isinstance(canary_percent, bool) and isinstance(canary_percent, (int, float))
             and float(canary_percent).is_integer())
    if not whole or not 0 <= canary_percent <= 100:
        raise HSNetError(f"--canary-percent (canary_percent) must be a whole number between 0 and 100, got "
                         f"{canary_percent!r}")


def set_model(isvc: dict, model_uri: str, canary_percent: int | None) -> dict:
    """A copy of ``isvc`` serving ``model_uri``, with ``canary_percent`` of the traffic (None or
    100: all of it once ready)."""
    out = copy.deepcopy(isvc)
    container = _container(out)
    args = list(container.get("args") or [])
    if "--model" in args[:-1]:
        args[args.index("--model") + 1] = model_uri
    else:
        args += ["--model", model_uri]
    container["args"] = args
    predictor = out["spec"]["predictor"]
    check_canary(canary_percent)
    if canary_percent is None or int(canary_percent) == 100:
        predictor.pop("canaryTrafficPercent", None)
    else:
        predictor["canaryTrafficPercent"] = int(canary_percent)
    out.setdefault("metadata", {}).setdefault("annotations", {})[VERSION_ANNOTATION] = model_uri
    return out


def render(model_uri: str, *, name: str | None = None, namespace: str | None = None,
           canary_percent: int | None = None, template: str | os.PathLike = TEMPLATE) -> dict:
    """The template's InferenceService, named ``name``, serving ``model_uri``."""
    isvc = load_template(template)
    if name:
        isvc["metadata"]["name"] = name
    if namespace:
        isvc["metadata"]["namespace"] = namespace
    return set_model(isvc, model_uri, canary_percent)


def to_yaml(obj: dict) -> str:
    import yaml

    return yaml.safe_dump(obj, sort_keys=False)


def _api():
    """The Kubernetes CustomObjectsApi and the current namespace."""
    try:
        from kubernetes import client, config
    except ImportError as exc:
        raise HSNetError("--deploy needs the kubernetes package (pip install kubernetes)") from exc
    namespace = None
    path = os.environ.get("KUBECONFIG") or None  # read now: the client reads it once, at import
    try:
        config.load_kube_config(config_file=path)
        _, active = config.list_kube_config_contexts(config_file=path)
        namespace = (active or {}).get("context", {}).get("namespace")
    except Exception:  # noqa: BLE001 - no kubeconfig: try the pod's service account
        try:
            config.load_incluster_config()
            ns_file = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
            namespace = ns_file.read_text(encoding="utf-8").strip() if ns_file.is_file() else None
        except Exception as exc:  # noqa: BLE001
            raise HSNetError("--deploy: no Kubernetes configuration (KUBECONFIG, ~/.kube/config or a service "
                             f"account): {str(exc).rstrip('.')}. Use --dry-run to see the manifest without a "
                             "cluster") from exc
    return client.CustomObjectsApi(), namespace or "default"


def require_cluster() -> None:
    """:class:`HSNetError` when there is no Kubernetes configuration to deploy with (checked before
    ``hsnet promote --deploy`` moves the registry)."""
    _api()


def _status_message(exc) -> str:
    """The ``message`` of the Status the API server answered with (what is wrong, in its words: a
    webhook's denial, the field the schema refused), or ''."""
    import json

    try:
        return str(json.loads(exc.body).get("message") or "")[:1000]
    except (TypeError, ValueError, AttributeError):
        return ""


def _explain(what: str, exc: Exception) -> HSNetError:
    from kubernetes.client.exceptions import ApiException

    if isinstance(exc, ApiException):
        said = _status_message(exc)
        detail = f": {said}" if said else ""
        if exc.status == 409:
            return HSNetError(f"{what}: changed by someone else meanwhile (409 Conflict){detail}; run it again")
        if "admission webhook" in said:  # KServe's webhook: 403 for a refused spec, 500 when it is down
            return HSNetError(f"{what}: refused by an admission webhook ({exc.status} {exc.reason}){detail}")
        if exc.status in (401, 403):
            return HSNetError(f"{what}: not allowed ({exc.status} {exc.reason}){detail}; the account needs get, "
                              f"create and update on {PLURAL}.{GROUP}")
        return HSNetError(f"{what}: the API server answered {exc.status} {exc.reason}{detail}")
    return HSNetError(f"{what}: the Kubernetes API server is unreachable ({exc})")


def _call(what: str, fn, *args):
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        return fn(*args)
    except (ApiException, HTTPError, OSError) as exc:
        raise _explain(what, exc) from exc


def readiness(isvc: dict) -> tuple[str | None, str]:
    """What KServe reports of the InferenceService: ``ready``, ``failed`` or ``pending`` (its Ready
    condition True, False or Unknown), with the reason and message; None when it reports nothing
    yet. ``status.observedGeneration`` is not compared with ``metadata.generation``: KServe copies
    it from a child's counter, which a Ready InferenceService can have lower (kserve/kserve#6081)."""
    status = isvc.get("status") or {}
    for c in status.get("conditions") or []:
        if c.get("type") == "Ready":
            detail = "; ".join(str(c[k]) for k in ("reason", "message") if c.get(k))
            if c.get("status") == "False":  # the predictor's condition says why, where Ready only says that
                detail = "; ".join(str(p[k]) for p in status["conditions"] if p.get("type") == "PredictorReady"
                                   for k in ("reason", "message") if p.get(k)) or detail
            return {"True": "ready", "False": "failed"}.get(c.get("status"), "pending"), detail
    return None, "no Ready condition yet"


def _current(api, namespace: str, name: str) -> dict | None:
    """The live InferenceService, None when there is none."""
    from kubernetes.client.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    where = f"InferenceService {namespace}/{name}"
    try:
        return api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    except ApiException as exc:
        if exc.status != 404:
            raise _explain(where, exc) from exc
        return None
    except (HTTPError, OSError) as exc:
        raise _explain(where, exc) from exc


def plan_rollout(current: dict | None, model_uri: str, *, name: str, namespace: str,
                 canary_percent: int | None = CANARY_PERCENT) -> dict:
    """What :func:`rollout` does to the live InferenceService ``current`` (None: there is none), as
    a record with the object it sends (``object``, None for ``unchanged``); nothing is sent."""
    where = f"InferenceService {namespace}/{name}"
    record = {"name": name, "namespace": namespace, "model": model_uri, "canary": None}
    if current is None:  # the first deploy: the template, with all traffic
        return {**record, "action": "created",
                "object": render(model_uri, name=name, namespace=namespace, canary_percent=None)}
    previous = model_of(current)
    image, image_note = _release_image(current)
    if previous == model_uri and "canaryTrafficPercent" not in current["spec"]["predictor"] and image is None:
        state, detail = readiness(current)
        if state == "failed":  # the spec asks for it, but KServe routes no traffic to a revision that failed
            raise HSNetError(f"{where} names {model_uri} with all traffic, but KServe reports it not ready "
                             f"({detail}): the traffic stays on the last ready revision. Fix the cause (kubectl "
                             f"describe inferenceservice -n {namespace} {name}), then run this again")
        return {**record, "action": "unchanged", "object": None, "ready": state == "ready"}
    canary = canary_percent  # a new version, or a step of the running canary (e.g. to 100)
    notes = [image_note] if image_note else []
    if _is_alias(previous) and canary is not None and canary < 100:
        # Each pod resolves an alias when it starts, and promote has just moved it to this version:
        # the revision that would keep the other share starts the new version too from now on (a
        # scale-up, a restart), so there is nothing to compare with, and a canary rollback returns
        # nothing. From here on the InferenceService names versions, and canaries compare two.
        canary = None
        notes.append(f"no canary: it served the alias {previous}, which its pods resolve when they start "
                     "and which now names this version")
    updated = set_model(current, model_uri, canary)
    if image is not None:  # recorded with the version it brings, so that rolling back from that
        _container(updated)["image"] = image  # version puts back the image the others ran on
        updated["metadata"]["annotations"][REPLACED_IMAGE] = f"{_container(current).get('image')} {model_uri}"
    return {**record, "action": "updated", "object": updated, "previous": previous,
            "canary": canary if canary is not None and canary < 100 else None,
            **({"note": "; ".join(notes)} if notes else {})}


REPLACED_IMAGE = "hsnet.io/replaced-image"  # the serving image a rollout replaced, for its rollback


def _release_image(current: dict) -> tuple[str | None, str | None]:
    """The serving image a rollout brings, and a note: this release's :data:`SERVE_IMAGE` where the
    live one is an earlier release's tag of its repository (that release's first deploy made it:
    its hsnet may not read the checkpoints this release trains, and its fixes would never
    arrive); none otherwise: a later release's (never downgraded: said), a commit build or a
    digest of it (``sha-...``, ``@sha256:``: a pin of one's own), or another repository (a
    mirror: said)."""
    from packaging.version import InvalidVersion, Version

    live = _container(current).get("image") or ""
    if live == SERVE_IMAGE:
        return None, None
    repository, ours = SERVE_IMAGE.rsplit(":", 1)
    named, _, digest = live.partition("@")
    if not (named == repository or named.startswith(repository + ":")):
        return None, (f"its model server is {live}, not this release's {SERVE_IMAGE}: it must be built from the "
                      "same hsnet release, or it may not read the checkpoints this one trains")
    tag = named[len(repository) + 1:] if named != repository else ""
    try:
        theirs = Version(tag)
    except InvalidVersion:  # a digest alone, a commit build (sha-...): someone's pin, kept (said unless a digest)
        return None, None if digest and not tag else f"its model server {live} is not a release tag: kept"
    if theirs == Version(ours):
        return None, None  # this release (perhaps pinned by digest, README: deploy by digest)
    if digest or theirs > Version(ours):  # a pin is kept; a later release is never downgraded
        return None, (f"its model server {live} is hsnet {theirs}, not this release ({ours}): kept"
                      + ("; promote with that release" if theirs > Version(ours) else ""))
    return SERVE_IMAGE, f"serving image {live} -> {SERVE_IMAGE} (this hsnet's release)"


def rollout(model_uri: str, *, name: str, namespace: str | None = None,
            canary_percent: int | None = CANARY_PERCENT) -> dict:
    """Point InferenceService ``name`` at ``model_uri`` with ``canary_percent`` of the traffic
    (created from the template, with all traffic, when it doesn't exist; an earlier release's
    serving image is replaced by this release's: :func:`plan_rollout`)."""
    api, default_ns = _api()
    namespace = namespace or default_ns
    where = f"InferenceService {namespace}/{name}"
    plan = plan_rollout(_current(api, namespace, name), model_uri, name=name, namespace=namespace,
                        canary_percent=canary_percent)
    isvc = plan.pop("object")
    if plan["action"] == "created":
        _call(where, api.create_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, isvc)
        log.info("%s created, serving %s", where, model_uri)
    elif plan["action"] == "updated":
        _call(where, api.replace_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name, isvc)
        log.info("%s: %s -> %s (%s)", where, plan["previous"], model_uri,
                 f"canary {plan['canary']}%" if plan["canary"] is not None else "all traffic")
    return plan


def _is_alias(model_uri: str | None) -> bool:
    """``models:/NAME@ALIAS``: a name the registry can point elsewhere, not one version."""
    return bool(model_uri) and model_uri.startswith("models:/") and "@" in model_uri[len("models:/"):]


def _existing(api, namespace: str, name: str) -> dict:
    """The live InferenceService a rollback changes; refused by name when there is none."""
    current = _current(api, namespace, name)
    if current is None:
        raise HSNetError(f"InferenceService {namespace}/{name} does not exist: there is nothing to roll back")
    return current


def plan_rollback(current: dict, model_uri: str, *, name: str, namespace: str) -> dict:
    """What :func:`rollback` does to the live InferenceService ``current``; nothing is sent."""
    serving, canary = model_of(current), current["spec"]["predictor"].get("canaryTrafficPercent")
    if serving != model_uri and canary is not None and int(canary) < 100:
        updated = copy.deepcopy(current)  # a canary of the bad version: KServe's rollback
        updated["spec"]["predictor"]["canaryTrafficPercent"] = 0
        action = "canary-stopped"
    else:
        updated = set_model(current, model_uri, None)
        action = "rolled-back"
    note = None
    replaced = (current.get("metadata", {}).get("annotations") or {}).get(REPLACED_IMAGE, "").split()
    if action == "rolled-back" and len(replaced) == 2 and replaced[1] == serving and serving != model_uri:
        # rolling back from the version whose rollout replaced the serving image: back to the image
        # the versions before it ran on
        _container(updated)["image"] = replaced[0]
        updated["metadata"]["annotations"].pop(REPLACED_IMAGE, None)
        note = f"serving image back to {replaced[0]}, which served {model_uri}"
    return {"action": action, "name": name, "namespace": namespace, "model": model_uri, "previous": serving,
            "object": updated, **({"note": note} if note else {})}


def rollback(model_uri: str, *, name: str, namespace: str | None = None) -> dict:
    """Traffic back to ``model_uri`` (the version a registry rollback puts back in production)."""
    api, default_ns = _api()
    namespace = namespace or default_ns
    where = f"InferenceService {namespace}/{name}"
    plan = plan_rollback(_existing(api, namespace, name), model_uri, name=name, namespace=namespace)
    _call(where, api.replace_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL, name, plan.pop("object"))
    log.info("%s: %s (was serving %s)", where, plan["action"], plan["previous"])
    return plan


@tracking.as_found
def deploy_production(name: str, result: dict, *, isvc: str | None = None, namespace: str | None = None,
                      canary_percent: int = CANARY_PERCENT) -> dict:
    """``hsnet promote --deploy`` (and the Kubeflow promote step with ``deploy``): after
    :func:`hsnet.registry.promote` returned ``result``, the InferenceService ``isvc`` (default: the
    model's ``name``) serves production, rolled out with ``canary_percent`` of the traffic. A
    version that was production already is rolled out too (a canary's next step, e.g. to 100%, or
    the run again after a rollout that failed: the registry is moved first, so that is what a
    retry needs). Returns :func:`rollout`'s record; :func:`describe` says it in a line."""
    from . import tracking

    production = result.get("production")
    if production is None and result.get("previous") == result.get("candidate"):
        production = result.get("candidate")  # already production: deploy it (e.g. a canary to 100%)
    if production is None:
        raise HSNetError(f"{name}: no production version to deploy")
    return rollout(tracking.version_uri(name, production), name=isvc or name, namespace=namespace,
                   canary_percent=canary_percent)


@tracking.as_found
def promote_and_deploy(name: str, *, version=None, metric: str = GATE_METRIC, min_delta: float = MIN_DELTA,
                       force: bool = False, isvc: str | None = None, namespace: str | None = None,
                       canary_percent: int = CANARY_PERCENT) -> tuple[dict, dict]:
    """``hsnet promote --deploy`` and the Kubeflow promote step with ``deploy``: the Kubernetes
    configuration is checked first (without one, refused before the registry moves), then
    :func:`hsnet.registry.promote` (its refusals raise), then :func:`deploy_production`; a rollout
    that fails after production moved says so, and that running the same again rolls it out.
    Returns (the promotion's decision, the rollout's record)."""
    from .registry import failures_recorded, promote

    with failures_recorded(name, "promote", version=version, deploy=True):  # refused before the registry is asked
        check_canary(canary_percent)
        require_cluster()
        check_no_other_canary(name, version, isvc=isvc or name, namespace=namespace)
    decision = promote(name, version=version, metric=metric, min_delta=min_delta, force=force)
    try:
        # a rollout that fails after production moved is recorded too (--history: not served yet)
        with failures_recorded(name, "promote", version=decision.get("production"), deploy=True):
            return decision, deploy_production(name, decision, isvc=isvc, namespace=namespace,
                                               canary_percent=canary_percent)
    except HSNetError as exc:
        if not decision["promoted"]:
            raise
        raise HSNetError(f"{str(exc).rstrip('.')}. The registry's production is version {decision['production']} "
                         f"already{' (FORCED)' if decision['forced'] else ''}: {decision['reason']}; run the same "
                         "again once the cluster answers (it rolls production out)") from exc


def check_no_other_canary(name: str, version, *, isvc: str, namespace: str | None) -> None:
    """Refuse, before the registry moves, to roll out a version while a canary of another one is
    running (0 < canaryTrafficPercent < 100): KServe would split the new version's canary with
    the last version that had all the traffic, not with the canary's, and a rollback (back to
    ``previous``, the canary's version) would then stop the canary and serve that older version
    while the registry names the canary's. ``version``: the one promoted (None: the candidate)."""
    from .registry import CANDIDATE

    api, default_ns = _api()
    namespace = namespace or default_ns
    current = _current(api, namespace, isvc)
    share = (current or {}).get("spec", {}).get("predictor", {}).get("canaryTrafficPercent")
    if current is None or share is None or not 0 < int(share) < 100:
        return
    if version is None:
        _, version = tracking.model_version(tracking.alias_uri(name, CANDIDATE))
    serving = model_of(current)
    if serving == tracking.version_uri(name, version):
        return  # a step of this canary (e.g. to 100%)
    raise HSNetError(f"InferenceService {namespace}/{isvc} is running a canary of {serving} ({share}% of the traffic): "
                     f"version {version} can't be rolled out over it. Finish that canary first (hsnet promote --name "
                     f"{name} --version {serving.rsplit('/', 1)[-1]} --deploy --canary-percent 100) or roll it back "
                     f"(hsnet promote --name {name} --rollback --deploy); nothing changed")


@tracking.as_found
def rollback_production(name: str, *, isvc: str | None = None, namespace: str | None = None) -> tuple[dict, dict]:
    """``hsnet promote --rollback --deploy``: the traffic goes back first (:func:`rollback` to the
    version :func:`hsnet.registry.rollback_target` names), then the registry's aliases swap. A
    rollback swaps, so the other order would not survive a failure in between: the registry
    already swapped, the run again as told would swap it back and send the bad version all the
    traffic. In this order a failed traffic change leaves the registry as it was, and the run
    again does the same rollback again. Returns (the registry's record, :func:`rollback`'s)."""
    from . import registry, tracking

    target = registry.rollback_target(name)
    production = registry.production_version(name)  # what the registry serves until it swaps
    model_uri = tracking.version_uri(name, target)
    with registry.failures_recorded(name, "rollback", expect=target, deploy=True):  # the traffic refused: as is
        record = rollback(model_uri, name=isvc or name, namespace=namespace)
    try:
        return registry.rollback(name, expect=target), record
    except Exception as exc:  # noqa: BLE001 - the registry refused or failed (an MlflowException too)
        # the traffic moved, the registry didn't: say both, and the command that puts them together
        again = (f"hsnet promote --name {name} --version {production} --deploy --canary-percent 100 "
                 f"--namespace {record['namespace']}" + (f" --isvc {record['name']}" if record["name"] != name else ""))
        raise HSNetError(f"{exc}. The InferenceService {record['namespace']}/{record['name']} was already changed "
                         f"({record['action']}, to {model_uri}): run the rollback again once the registry "
                         f"answers, or serve production again with `{again}`") from exc


def describe(r: dict) -> str:
    """One line for what :func:`rollout` or :func:`rollback` did."""
    where = f"InferenceService {r['namespace']}/{r['name']}"
    if r["action"] == "unchanged":
        if r.get("ready", True):
            return f"{where}: already serves {r['model']} with all traffic"
        return (f"{where}: already names {r['model']} with all traffic; KServe has not reported it ready yet "
                f"(kubectl get inferenceservice -n {r['namespace']} {r['name']})")
    share = f", canary {r['canary']}%" if r.get("canary") is not None else ""  # 0: rolled out, no traffic yet
    return (f"{where}: {r['action']}, {r['model']}{share}" + (f" (was {r['previous']})" if r.get("previous") else "")
            + (f"; {r['note']}" if r.get("note") else ""))


@tracking.as_found
def dry_run(name: str, *, version: int | str | None = None, rollback: bool = False, isvc: str | None = None,
            namespace: str | None = None, canary_percent: int = CANARY_PERCENT) -> str:
    """``hsnet promote --deploy --dry-run``: what the promotion of ``version`` (default: the
    candidate), or the rollback, would send to the cluster, as YAML after a comment line saying
    what it does. The live InferenceService is read (nothing is changed), so that the manifest is
    the one :func:`rollout` or :func:`rollback` would send: created from the template with all
    traffic before the first deploy, a canary of the live one after. Without a Kubernetes
    configuration, the first deploy's manifest, said so. No alias moves; the gate is not evaluated."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from . import tracking
    from .registry import CANDIDATE, PREVIOUS

    tracking.connect()
    client = mlflow.MlflowClient()
    alias = PREVIOUS if rollback else None if version else CANDIDATE
    try:
        found = (client.get_model_version_by_alias(name, alias).version if alias
                 else client.get_model_version(name, str(version)).version)
    except MlflowException as exc:
        raise HSNetError(f"{name}: no {'version ' + str(version) if version else repr(alias)} "
                         f"in the registry ({exc.message[:200]})") from exc
    model_uri = tracking.version_uri(name, found)
    target = isvc or name
    try:
        api, default_ns = _api()
    except HSNetError:  # no cluster to read: the template, as the first deploy would create it
        ns = namespace or "default"
        plan = plan_rollout(None, model_uri, name=target, namespace=ns, canary_percent=canary_percent)
        what = "after a rollback, the InferenceService would serve" if rollback else "a first deploy would create"
        return (f"# --dry-run: no Kubernetes configuration, so the live InferenceService was not read; from the "
                f"template, {what} {ns}/{target} serving {model_uri} with all the traffic; nothing changed\n"
                + to_yaml(plan["object"]))
    ns = namespace or default_ns
    what = "a rollback" if rollback else "promoting version " + str(found)
    if rollback:
        plan = plan_rollback(_existing(api, ns, target), model_uri, name=target, namespace=ns)
    else:
        plan = plan_rollout(_current(api, ns, target), model_uri, name=target, namespace=ns,
                            canary_percent=canary_percent)
    head = f"# --dry-run, nothing changed: after {what}, it would be {describe(plan)}"
    return head + ("; nothing to send\n" if plan["object"] is None else "\n" + to_yaml(plan["object"]))
