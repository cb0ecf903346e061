from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from . import SLIM_IMAGE


@dsl.component(base_image=SLIM_IMAGE, install_kfp_package=False)
def import_data(dataset: str, params: dict, raw: Input[Dataset], manifest: Output[Dataset]):
    """hsnet data import: the dataset's files in its publisher's layout -> manifest.csv with splits."""
    from components.convert import params_for, start_step
    from hsnet.data.datasets import import_dataset

    start_step()
    import_dataset(dataset, raw.path, manifest.path, params_for(params, dataset).import_)
    manifest.metadata["dataset"] = dataset
