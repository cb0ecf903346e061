from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from . import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def crop_faces(dataset: str, params: dict, device: str, raw: Input[Dataset], manifest: Input[Dataset],
               crops: Output[Dataset]):
    """hsnet crop: MTCNN face crops (or resizing) with the dataset's crop settings."""
    from components.convert import params_for, start_step
    from hsnet.data.crop import crop

    start_step()
    report = crop(manifest.path, raw.path, crops.path, settings=params_for(params, dataset).crop,
                  device=device or "cpu")
    crops.metadata.update(dataset=dataset, images=report["output_images"], no_face=len(report["no_face"]))
