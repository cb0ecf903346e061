from kfp import dsl
from kfp.dsl import Dataset, Output

from . import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def fetch_raw(source: str, dvc_path: str, dvc_rev: str, raw: Output[Dataset]):
    """The raw dataset: an s3:// prefix (boto3), or DVC_PATH of the DVC repository SOURCE at DVC_REV."""
    from hsnet.cli import run

    argv = ["data", "fetch", "--source", source, "--out", raw.path]
    if dvc_path:
        argv += ["--dvc-path", dvc_path] + (["--rev", dvc_rev] if dvc_rev else [])
    run(argv)
    raw.metadata["source"] = source + (f" {dvc_path}@{dvc_rev}" if dvc_path else "")
