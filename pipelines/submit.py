"""Create a run of the compiled pipeline on a Kubeflow Pipelines endpoint, one per dataset.

    python -m pipelines.submit --host https://kubeflow.example.com/pipeline --dataset rafdb \
        --raw-source s3://my-bucket/raw/rafdb --experiment hsnet
    python -m pipelines.submit --host ... --dataset rafdb --raw-source s3://b/raw/rafdb \
        --dataset kdef --raw-source s3://b/raw/kdef --no-cache

One ``--raw-source`` per ``--dataset``, in the same order (none: ``pipelines.RAW_PREFIX`` + DATASET
for each). The params passed are params.yaml (or --params FILE), checked for every dataset before
anything is submitted. ``--no-cache`` runs every step even where Kubeflow's cache holds its
result. On a multi-user Kubeflow, ``--namespace`` names your profile namespace (without it kfp
takes the one its context file names, and the API server refuses an experiment with none). Authentication: KF_PIPELINES_SA_TOKEN_PATH or an existing kfp login
(``--existing-token``), never on the command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from hsnet.params import PARAMS_FILE

HERE = Path(__file__).resolve().parent
EXPERIMENT = "hsnet"  # the Kubeflow experiment the runs are filed under


# the pipeline parameters this command takes as options of the same name (--raw-source for raw_source)
OPTIONS = ("dataset", "raw_source", "dvc_path", "dvc_rev", "mlflow_tracking_uri", "checkpoint_uri")


def load_params(params_path: str, datasets: list[str]) -> dict:
    """params.yaml as a mapping (the pipeline's ``params``), each dataset's settings checked against
    the schema first: a typo fails here, not in a pod an hour later."""
    from hsnet.errors import HSNetError
    from hsnet.params import Params, load

    params = load(params_path)  # as the CLI reads it: a key written twice is refused, as dvc does
    for dataset in datasets:
        if dataset not in (params.get("datasets") or {}):
            raise HSNetError(f"--dataset {dataset}: no entry under 'datasets' in {params_path}")
        Params.from_mapping(params, dataset, source=params_path)
    return params


def submit(host: str, dataset: str, raw_source: str, *, experiment: str = EXPERIMENT, params_path: str = PARAMS_FILE,
           mlflow_tracking_uri: str | None = None, dvc_path: str = "", dvc_rev: str = "",
           package: Path = HERE / "hsnet_pipeline.yaml", existing_token: str | None = None,
           enable_caching: bool = True, checkpoint_uri: str | None = None, params: dict | None = None,
           namespace: str | None = None) -> str:
    import kfp

    from hsnet.errors import HSNetError

    from components.convert import check_run

    params = params if params is not None else load_params(params_path, [dataset])
    check_run(dataset, mlflow_tracking_uri=mlflow_tracking_uri or None, checkpoint_uri=checkpoint_uri,
              raw_source=raw_source, dvc_path=dvc_path, dvc_rev=dvc_rev)  # as source-version will
    args = {"dataset": dataset, "raw_source": raw_source, "dvc_path": dvc_path, "dvc_rev": dvc_rev, "params": params}
    if mlflow_tracking_uri:
        args["mlflow_tracking_uri"] = mlflow_tracking_uri
    if checkpoint_uri is not None:
        args["checkpoint_uri"] = checkpoint_uri
    try:
        client = kfp.Client(host=host, existing_token=existing_token)
        # enable_caching=False overrides every task's caching option for this run; None keeps the spec's
        # namespace: a multi-user Kubeflow's profile; None lets kfp take its context's (single-user: none)
        run = client.create_run_from_pipeline_package(str(package), arguments=args, experiment_name=experiment,
                                                      run_name=f"hsnet-{dataset}", namespace=namespace,
                                                      enable_caching=None if enable_caching else False)
    except Exception as exc:  # noqa: BLE001 - kfp raises urllib3/ApiException/...
        from hsnet.tracking import mask_text, mask_uri

        first = str(exc).splitlines()[0] if str(exc) else ""
        raise HSNetError(f"Kubeflow Pipelines at {mask_uri(host)} did not accept the run ({type(exc).__name__}: "
                         f"{mask_text(first)[:300]}). Check --host and your login") from exc
    return run.run_id


def main(argv=None) -> int:
    from hsnet.errors import HSNetError

    from . import RAW_PREFIX

    p = argparse.ArgumentParser(prog="python -m pipelines.submit", description=__doc__.splitlines()[0])
    p.add_argument("--host", required=True, help="the Kubeflow Pipelines API, e.g. https://HOST/pipeline")
    p.add_argument("--dataset", required=True, action="append", help="repeat for several datasets (one run each)")
    p.add_argument("--raw-source", action="append", default=None,
                   help="s3:// prefix of the raw data or a DVC repo URL, one per --dataset in the same order "
                   f"(default {RAW_PREFIX}DATASET)")
    p.add_argument("--dvc-path", default="", help="with a DVC repo URL: the path, e.g. data/raw/rafdb")
    p.add_argument("--dvc-rev", default="")
    p.add_argument("--params", default=PARAMS_FILE)
    p.add_argument("--mlflow-tracking-uri", default=None)
    p.add_argument("--experiment", default=EXPERIMENT)
    p.add_argument("--namespace", default=None,
                   help="multi-user Kubeflow: your profile namespace (e.g. kubeflow-user-example-com), where the "
                   "experiment and the run are made and the hsnet-s3 secret must be")
    p.add_argument("--no-cache", action="store_true", help="run every step, reusing no cached result")
    p.add_argument("--checkpoint-uri", default=None,
                   help="s3:// prefix for train's durable checkpoints (default: the pipeline's; '' for none)")
    p.add_argument("--existing-token", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    sources = args.raw_source or [RAW_PREFIX + d for d in args.dataset]
    if len(sources) != len(args.dataset):
        p.error(f"{len(args.dataset)} --dataset but {len(sources)} --raw-source: give one --raw-source per "
                f"--dataset, in the same order (or none for {RAW_PREFIX}DATASET)")
    from hsnet.tracking import mask_uri

    try:
        from components.convert import check_run

        params = load_params(args.params, args.dataset)  # every dataset checked before any run starts
        for dataset, source in zip(args.dataset, sources):
            check_run(dataset, mlflow_tracking_uri=args.mlflow_tracking_uri or None,  # "": the pipeline's default
                      checkpoint_uri=args.checkpoint_uri,
                      raw_source=source, dvc_path=args.dvc_path.replace("DATASET", dataset), dvc_rev=args.dvc_rev,
                      names={key: "--" + key.replace("_", "-") for key in OPTIONS})  # as typed here
        for dataset, source in zip(args.dataset, sources):
            dvc_path = args.dvc_path.replace("DATASET", dataset)
            run_id = submit(args.host, dataset, source, experiment=args.experiment, params_path=args.params,
                            mlflow_tracking_uri=args.mlflow_tracking_uri, dvc_path=dvc_path, dvc_rev=args.dvc_rev,
                            existing_token=args.existing_token, enable_caching=not args.no_cache,
                            checkpoint_uri=args.checkpoint_uri, params=params, namespace=args.namespace)
            print(f"{dataset}: run {run_id} in experiment {args.experiment} at {mask_uri(args.host)}")
    except HSNetError as exc:
        print(f"pipelines.submit: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
