"""Create a run of the compiled pipeline on a Kubeflow Pipelines endpoint, one per dataset.

    python -m pipelines.submit --host https://kubeflow.example.com/pipeline --dataset rafdb \
        --raw-source s3://my-bucket/raw/rafdb --experiment hsnet

The params passed are params.yaml (or --params FILE). Authentication: KF_PIPELINES_SA_TOKEN_PATH
or an existing kfp login (``--existing-token``), never on the command line.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent


def submit(host: str, dataset: str, raw_source: str, *, experiment: str = "hsnet", params_path: str = "params.yaml",
           mlflow_tracking_uri: str | None = None, dvc_path: str = "", dvc_rev: str = "",
           package: Path = HERE / "hsnet_pipeline.yaml", existing_token: str | None = None) -> str:
    import kfp

    from hsnet.errors import HSNetError

    params = yaml.safe_load(Path(params_path).read_text())
    if dataset not in (params.get("datasets") or {}):
        raise HSNetError(f"--dataset {dataset}: no entry under 'datasets' in {params_path}")
    args = {"dataset": dataset, "raw_source": raw_source, "dvc_path": dvc_path, "dvc_rev": dvc_rev, "params": params}
    if mlflow_tracking_uri:
        args["mlflow_tracking_uri"] = mlflow_tracking_uri
    try:
        client = kfp.Client(host=host, existing_token=existing_token)
        run = client.create_run_from_pipeline_package(str(package), arguments=args, experiment_name=experiment,
                                                      run_name=f"hsnet-{dataset}")
    except Exception as exc:  # noqa: BLE001 - kfp raises urllib3/ApiException/...
        raise HSNetError(f"Kubeflow Pipelines at {host} did not accept the run ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:300] if str(exc) else ''}). Check --host and your login") from exc
    return run.run_id


def main(argv=None) -> int:
    from hsnet.errors import HSNetError

    p = argparse.ArgumentParser(prog="python -m pipelines.submit", description=__doc__.splitlines()[0])
    p.add_argument("--host", required=True, help="the Kubeflow Pipelines API, e.g. https://HOST/pipeline")
    p.add_argument("--dataset", required=True, action="append", help="repeat for several datasets (one run each)")
    p.add_argument("--raw-source", default=None,
                   help="s3:// prefix of the raw data (default s3://hsnet-data/raw/DATASET) or a DVC repo URL")
    p.add_argument("--dvc-path", default="", help="with a DVC repo URL: the path, e.g. data/raw/rafdb")
    p.add_argument("--dvc-rev", default="")
    p.add_argument("--params", default="params.yaml")
    p.add_argument("--mlflow-tracking-uri", default=None)
    p.add_argument("--experiment", default="hsnet")
    p.add_argument("--existing-token", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    try:
        for dataset in args.dataset:
            source = args.raw_source or f"s3://hsnet-data/raw/{dataset}"
            dvc_path = args.dvc_path.replace("DATASET", dataset)
            run_id = submit(args.host, dataset, source, experiment=args.experiment, params_path=args.params,
                            mlflow_tracking_uri=args.mlflow_tracking_uri, dvc_path=dvc_path, dvc_rev=args.dvc_rev,
                            existing_token=args.existing_token)
            print(f"{dataset}: run {run_id} in experiment {args.experiment} at {args.host}")
    except HSNetError as exc:
        print(f"pipelines.submit: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
