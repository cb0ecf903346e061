from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Output

from . import SLIM_IMAGE


@dsl.component(base_image=SLIM_IMAGE, install_kfp_package=False)
def validate_data(dataset: str, params: dict, raw: Input[Dataset], manifest: Input[Dataset],
                  data_docs: Output[HTML], summary: Output[Metrics]):
    """hsnet validate (Great Expectations). A failed expectation fails this task and stops the run."""
    import shutil
    import tempfile

    from components.convert import params_for, start_step, write_metrics_file
    from hsnet.data.validate import validate, validation_page

    start_step()
    settings = params_for(params, dataset).validate
    with tempfile.TemporaryDirectory(prefix="validation-") as report:
        try:
            s = validate(manifest.path, raw.path, dataset, report, settings)
        finally:  # the Data Docs page of this validation, also when it failed
            page = validation_page(report)
            if page:
                shutil.copyfile(page, data_docs.path)
    summary.log_metric("images", s["images"])
    summary.log_metric("warnings", len(s["warnings"]))
    summary.log_metric("left_out", s["left_out"])  # undecodable, within validate.max_bad_fraction
    for split, n in s["usable"].items():  # the images crop will cut
        summary.log_metric(f"{split}_images", n)
    write_metrics_file(summary)
