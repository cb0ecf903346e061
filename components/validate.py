from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Output

from . import SLIM_IMAGE


@dsl.component(base_image=SLIM_IMAGE, install_kfp_package=False)
def validate_data(dataset: str, params: dict, raw: Input[Dataset], manifest: Input[Dataset],
                  data_docs: Output[HTML], summary: Output[Metrics]):
    """hsnet validate (Great Expectations). A failed expectation fails this task and stops the run."""
    import json
    import shutil
    import tempfile
    from pathlib import Path

    from components.convert import params_for, start_step, write_metrics_file
    from hsnet.data.validate import validate

    start_step()
    settings = params_for(params, dataset).validate
    with tempfile.TemporaryDirectory(prefix="validation-") as tmp:
        report = Path(tmp)
        try:
            validate(manifest.path, raw.path, dataset, report, settings)
        finally:  # the Data Docs page of this validation, also when it failed
            pages = sorted((report / "data_docs" / "validations").rglob("*.html"))
            if pages:
                shutil.copyfile(pages[-1], data_docs.path)
        s = json.loads((report / "summary.json").read_text())
    summary.log_metric("images", s["images"])
    summary.log_metric("warnings", len(s["warnings"]))
    for split, n in s["splits"].items():
        summary.log_metric(f"{split}_images", n)
    write_metrics_file(summary)
