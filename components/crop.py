from kfp import dsl
from kfp.dsl import Dataset, Input, Output

from . import IMAGE


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def crop_faces(dataset: str, params: dict, device: str, raw: Input[Dataset], manifest: Input[Dataset],
               crops: Output[Dataset]):
    """hsnet crop: MTCNN face crops (or resizing) with the dataset's crop settings."""
    import json
    from pathlib import Path

    from hsnet.cli import run
    from hsnet.params import params_file

    with params_file(params) as params_path:
        run(["crop", "--manifest", manifest.path, "--root", raw.path, "--dataset", dataset,
             "--params", params_path, "--out", crops.path, "--device", device or "cpu"])
    report = json.loads((Path(crops.path) / "crop_report.json").read_text())
    crops.metadata.update(dataset=dataset, images=report["output_images"], no_face=len(report["no_face"]))
