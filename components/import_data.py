from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from . import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def import_data(dataset: str, params: dict, raw: Input[Dataset], manifest: Output[Dataset]):
    """hsnet data import: the dataset's files in its publisher's layout -> manifest.csv with splits."""
    from hsnet.cli import run
    from hsnet.params import params_file

    with params_file(params) as params_path:
        run(["data", "import", "--dataset", dataset, "--root", raw.path, "--params", params_path,
             "--out", manifest.path])
    manifest.metadata["dataset"] = dataset
