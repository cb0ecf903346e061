from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Output

from . import SLIM_IMAGE


@dsl.component(base_image=SLIM_IMAGE, install_kfp_package=False)
def source_version(source: str, dvc_path: str, dvc_rev: str, params: dict = {}, dataset: str = "",
                   runs: list = [], require_stem_uri: bool = False, check_run: bool = False,
                   crop_device: str = "cpu", mlflow_tracking_uri: str = "", checkpoint_uri: str = "",
                   promote: bool = False, deploy: bool = False, canary_percent: int = -1) -> NamedTuple(
        "Outputs", version=str, settings=dict, import_settings=dict, validate_settings=dict, crop_settings=dict,
        train_settings=dict, evaluate_settings=dict, train_evaluate_settings=dict, stem_version=str,
        run_items=list):
    """The content version of the raw data at SOURCE now (S3: keys and ETags; DVC: the files' md5s at
    DVC_REV; a folder: its files' hashes), read without downloading. Never cached: fetch takes it as
    an input, so new data at the same source is fetched (and everything after it re-run) and
    unchanged data reuses the cache. The first step, so it also checks ``params`` for ``dataset``,
    that no two items of ``runs`` are the same configuration and seed, and (with
    ``require_stem_uri``, the ablation's) that ``runs`` holds a training and that every KTL run of
    it names its stem weights.
    ``settings``: ``params`` cut to what ``dataset``'s settings come from (``defaults`` and
    ``datasets.<dataset>``), for the later steps: a parameter's value is part of their cache key,
    so another dataset's edit to params reuses their results, as DVC does (``params`` itself when
    no dataset is named): the ablation's group step, which trains and evaluates, takes it.
    ``<step>_settings``: cut further to the keys that step reads (hsnet.params.STEP_KEYS), so an
    edit to this dataset's training re-runs train and what follows it, not the data steps, and
    one to its evaluate settings re-runs evaluate, not train; ``train_evaluate_settings`` for the
    ablation's GPU groups, which do both. ``stem_version``: the content of the KTL stem weights
    params' training reads (components.convert.stem_version), a train input: new weights at the
    same URI train again; ``run_items``: ``runs`` with each run's own (components.convert.run_items),
    what the ablation's loops iterate over. ``check_run``: the pipeline's other parameters (``crop_device`` ...
    ``canary_percent``: -1, none given, which a run that deploys is refused, as promote refuses it)
    are checked too (components.convert.check_run), before any data is fetched. Not retried (hsnet_pipeline.RETRIES): its checks are deterministic."""
    from typing import NamedTuple

    from components.convert import check_stem_weights, group_settings, params_for, start_step
    from components.convert import check_run as check_parameters
    from components.convert import run_items as run_items_of
    from components.convert import stem_version as stem_version_of
    from hsnet.data.fetch import source_version as version_of
    from hsnet.errors import HSNetError
    from hsnet.params import for_step

    start_step()
    if check_run:
        check_parameters(dataset, crop_device=crop_device, mlflow_tracking_uri=mlflow_tracking_uri,
                         checkpoint_uri=checkpoint_uri, promote=promote, deploy=deploy,
                         canary_percent=canary_percent, raw_source=source, dvc_path=dvc_path, dvc_rev=dvc_rev)
    settings = params
    if dataset:
        params_for(params, dataset)  # checked: a wrong key or value stops the run here
        settings = {"datasets_to_run": [dataset], "datasets": {dataset: params["datasets"][dataset]},
                    **({"defaults": params["defaults"]} if params.get("defaults") else {})}
        if runs:  # the ablation's: one training per configuration and seed (a twin would share its
            group_settings(params, dataset, runs)  # checkpoints and count twice in Table 6)
        if require_stem_uri:  # the ablation's: its trainings are the runs given
            if not runs:
                raise HSNetError("runs is empty: the ablation trains one model per item, and would report a Table 6 "
                                 "of missing rows; give the configurations and seeds to train (see the default)")
            check_stem_weights(params, dataset, runs)
    steps = {step: for_step(params, dataset, step) if dataset else params
             for step in ("import", "validate", "crop", "train", "evaluate")}
    both = for_step(params, dataset, "train", "evaluate") if dataset else params
    outputs = NamedTuple("Outputs", version=str, settings=dict, import_settings=dict, validate_settings=dict,
                         crop_settings=dict, train_settings=dict, evaluate_settings=dict,
                         train_evaluate_settings=dict, stem_version=str, run_items=list)
    return outputs(version_of(source, dvc_path=dvc_path or None, rev=dvc_rev or None), settings,
                   steps["import"], steps["validate"], steps["crop"], steps["train"], steps["evaluate"], both,
                   stem_version_of(params, dataset) if dataset else "",
                   run_items_of(params, dataset, runs) if dataset and runs else [])


@dsl.component(base_image=SLIM_IMAGE, install_kfp_package=False)
def fetch_raw(source: str, dvc_path: str, dvc_rev: str, version: str, raw: Output[Dataset]):
    """The raw dataset: an s3:// prefix (boto3), or DVC_PATH of the DVC repository SOURCE at DVC_REV.
    ``version`` (from source_version) is this step's cache key; the data fetched must still have it."""
    from components.convert import start_step
    from hsnet.data.fetch import fetch
    from hsnet.tracking import mask_text

    start_step()
    fetch(source, raw.path, dvc_path=dvc_path or None, rev=dvc_rev or None, expect_version=version)
    raw.metadata.update(source=mask_text(source) + (f" {dvc_path}@{dvc_rev}" if dvc_path else ""), version=version)
