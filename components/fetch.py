from kfp import dsl
from kfp.dsl import Dataset, Output

from . import SLIM_IMAGE


@dsl.component(base_image=SLIM_IMAGE, install_kfp_package=False)
def fetch_raw(source: str, dvc_path: str, dvc_rev: str, raw: Output[Dataset]):
    """The raw dataset: an s3:// prefix (boto3), or DVC_PATH of the DVC repository SOURCE at DVC_REV."""
    from components.convert import start_step
    from hsnet.data.fetch import fetch

    start_step()
    fetch(source, raw.path, dvc_path=dvc_path or None, rev=dvc_rev or None)
    raw.metadata["source"] = source + (f" {dvc_path}@{dvc_rev}" if dvc_path else "")
