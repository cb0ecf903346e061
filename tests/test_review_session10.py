"""Session 10 review of the day's changes (cf5f7a2..HEAD): reproductions of what the fixes broke
or left out. Each test fails on the code as reviewed."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from hsnet.errors import HSNetError
from hsnet.params import Params

ROOT = Path(__file__).resolve().parents[1]


# --- dvc.yaml: evaluate's new params dependency ------------------------------------------------

def test_yesterdays_params_file_still_runs_the_dvc_pipeline(tmp_path, monkeypatch):
    """dvc.yaml's evaluate stage now lists ``datasets.${item}.evaluate``: a params.yaml whose entries
    have no ``evaluate:`` section (the project's own params.yaml at cf5f7a2, which hsnet still
    accepts: the section is optional in the schema and its defaults are the paper's) is refused by
    dvc for every dataset: "Parameters 'datasets.sample.evaluate' are missing from 'params.yaml'".
    Every user's existing params.yaml stops working with `dvc repro` after the upgrade, and the schema
    (hsnet.params.check_file) does not say the section is now required."""
    from dvc.repo import Repo
    from dvc.dependency.param import ParamsDependency

    old = subprocess.run(["git", "-C", str(ROOT), "show", "cf5f7a2:params.yaml"], capture_output=True, text=True,
                         check=True).stdout
    (tmp_path / "params.yaml").write_text(old)
    assert Params.resolve(tmp_path / "params.yaml", "sample").evaluate.tta_hflip is False  # hsnet: a valid file
    monkeypatch.chdir(tmp_path)  # dvc reads params.yaml relative to the working directory
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    Repo.init(str(tmp_path))
    shutil.copy(ROOT / "dvc.yaml", tmp_path / "dvc.yaml")
    repo = Repo(str(tmp_path))
    try:
        for name in ("train@sample", "evaluate@sample"):
            (stage,) = repo.stage.collect(name)
            for dep in stage.deps:
                if isinstance(dep, ParamsDependency):
                    dep.save()  # what `dvc repro` does with a stage's params (dvc: MissingParamsError)
    finally:
        repo.close()


# --- train --resume: settings that don't change what is trained --------------------------------

RESUME_PARAMS = ("datasets:\n  sample:\n    input_size: 80\n    model: {ktl: false, fgal: false}\n"
                 "    train: {lr: 0.001, epochs: 2, batch_size: 16, seed: 3, scheduler: {patience: 50}}\n")


def test_resume_after_editing_a_validation_threshold_continues(tiny_data, tmp_path):
    """hsnet train --resume refuses every changed setting outside train.RESUMABLE_CHANGES, including
    the validate section, which training never reads (the crops, and so data_version, are the same):
    '--resume: ... was trained with other settings (validate.min_size 32 -> 48)'. The only way on is
    to train again from the start. The same for model.stem_weights with ktl: false (unused)."""
    from hsnet.train import train

    path = tmp_path / "params.yaml"
    path.write_text(RESUME_PARAMS)
    train(tiny_data, Params.resolve(path, "sample"), tmp_path / "run", stop_after_epochs=1, track=False,
          progress=False)
    edited = Params.resolve(path, "sample", {"validate": {"min_size": 48}})
    try:
        summary = train(tiny_data, edited, tmp_path / "run", resume=True, track=False, progress=False)
    except HSNetError as exc:
        pytest.fail(f"a setting training does not read stopped the resume: {exc}")
    assert summary["epochs_run"] == 2


# --- Kubeflow: the train step's cache key -------------------------------------------------------

@pytest.mark.parametrize("edit", [{"validate": {"min_size": 48}}, {"evaluate": {"tta_hflip": True}}],
                         ids=["validate.min_size", "evaluate.tta_hflip"])
def test_kubeflow_train_is_not_re_run_for_a_setting_training_does_not_read(tmp_path, edit):
    """121c034 gave import, validate and crop only their keys (STEP_KEYS), but train (and through it
    evaluate and register) still takes source-version's ``settings``: the dataset's whole entry. A
    parameter's value is part of Kubeflow's cache key, so editing validate.min_size (validate re-runs,
    the crops stay cached) or evaluate.tta_hflip re-trains the model: hours of GPU, where dvc.yaml's
    train stage (params: defaults, input_size, model, train) is not re-run for either. And since
    Kubeflow's evaluate takes no params, tta_hflip only reaches it through a new training."""
    from components.fetch import source_version
    from hsnet.params import deep_merge

    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / "a.txt").write_text("x")
    base = {"datasets_to_run": ["sample"], "datasets": {"sample": {
        "input_size": 80, "import": {}, "validate": {}, "crop": {"detector": "none"}, "model": {"ktl": False},
        "train": {"lr": 0.001}, "evaluate": {}}}}
    edited = deep_merge(base, {"datasets": {"sample": edit}})

    def train_settings(params):
        return source_version.python_func(source=str(tmp_path / "raw"), dvc_path="", dvc_rev="", params=params,
                                          dataset="sample").train_settings

    assert train_settings(edited) == train_settings(base), "the train step's parameter changed: it re-runs"


# --- tracking: the CPU tags of a continued run ----------------------------------------------------

def test_a_continued_run_keeps_the_cpu_settings_its_first_epochs_ran_with(local_mlflow):
    """73bba81 records system.cpu_threads / system.cpu_kernels because they move a CPU run's numbers.
    A resumed training continues its MLflow run when the params are the same (train.num_threads null:
    torch's default, the machine's cores), which is the Kubeflow case this exists for: a preempted pod
    restarted on another node. tracking.run then set_tags(system_tags()) again, overwriting the
    first machine's values: the run says every epoch ran with the second machine's threads and
    kernels. Here: epochs on 2 threads, then resumed on 1; the record keeps only '1'."""
    import mlflow
    import torch

    from hsnet import tracking

    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        with tracking.run("train-sample", params={"train.num_threads": None}, tags={}) as first:
            run_id = first.info.run_id
        torch.set_num_threads(1)
        with tracking.run("train-sample", params={"train.num_threads": None}, tags={}, continue_run=run_id) as again:
            assert again.info.run_id == run_id  # continued, as a resumed training's is
    finally:
        torch.set_num_threads(old)
    tags = mlflow.MlflowClient().get_run(run_id).data.tags
    assert "2" in tags["system.cpu_threads"], f"the first epochs' thread count is lost: {tags['system.cpu_threads']}"


# --- params.yaml: a key written twice ------------------------------------------------------------

def test_a_key_written_twice_inside_a_merged_mapping_is_refused(tmp_path):
    """4be5f39's loader checks each mapping before PyYAML flattens its merges, but a mapping that is
    only a ``<<`` source is never constructed on its own, so its keys are never checked: here
    input_size 80 is silently replaced by 96. dvc (ruamel) refuses the same file ("found duplicate
    key input_size"), so hsnet train / Kubeflow submit run what dvc refuses, the case 4be5f39 fixed."""
    from hsnet.params import ParamsError

    path = tmp_path / "params.yaml"
    path.write_text("datasets_to_run: [sample]\ndatasets:\n  sample:\n"
                    "    <<: {input_size: 80, input_size: 96}\n    train: {}\n")
    with pytest.raises(ParamsError, match="input_size.*twice"):
        Params.resolve(path, "sample")


def test_dvc_exp_run_can_set_the_evaluate_setting_dvc_now_tracks(tmp_path):
    """72d176e made datasets.<name>.evaluate a param of dvc's evaluate stage and wrote it as
    ``evaluate: {}``. `dvc exp run -S 'datasets.sample.evaluate.tta_hflip=true'` (the form dvc.yaml's
    header and README show for train.lr) is then refused with dvc's bare "Invalid `--set-param`
    value": Hydra will not add a key the file lacks without '+'/'++'. train.lr works because
    params.yaml writes it out; writing evaluate: {tta_hflip: false} would make both work."""
    from dvc.utils.hydra import apply_overrides

    shutil.copy(ROOT / "params.yaml", tmp_path / "params.yaml")
    apply_overrides(str(tmp_path / "params.yaml"), ["datasets.sample.train.lr=0.002"])  # works
    apply_overrides(str(tmp_path / "params.yaml"), ["datasets.sample.evaluate.tta_hflip=true"])
    assert yaml.safe_load((tmp_path / "params.yaml").read_text())["datasets"]["sample"]["evaluate"] == \
        {"tta_hflip": True}


# --- MLflow telemetry ----------------------------------------------------------------------------

def test_mlflow_telemetry_is_off_where_mlflow_is_imported_before_hsnet():
    """7aaa5ca: 'hsnet's steps, server and the models it logs send none' via os.environ.setdefault in
    hsnet/__init__. MLflow decides at `import mlflow` (mlflow/__init__ calls set_telemetry_client()):
    whoever loads a registered hsnet model (mlflow.pyfunc.load_model, `mlflow models serve`, a
    notebook) imports mlflow first, and the telemetry client is already running when the model's
    code imports hsnet. The load_model event itself is recorded before hsnet is imported."""
    import os
    import sys

    env = {k: v for k, v in os.environ.items()
           if k not in ("MLFLOW_DISABLE_TELEMETRY", "DO_NOT_TRACK", "CI", "PYTEST_CURRENT_TEST")}
    code = ("import mlflow.pyfunc, hsnet\n"
            "from mlflow.telemetry.client import get_telemetry_client\n"
            "print(get_telemetry_client() is None)\n")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.stdout.strip().splitlines()[-1] == "True", "MLflow's telemetry client runs in the process"


def test_a_continued_runs_system_tags_say_each_change_once():
    """By hand: the first value, then each different one after it; a restart on the same kind of
    machine as the last adds nothing."""
    from hsnet.tracking import _then

    assert _then(None, "1") == "1" and _then("2", "2") == "2"
    assert _then("2", "1") == "2, then 1" and _then("2, then 1", "1") == "2, then 1"
    assert _then("2, then 1", "2") == "2, then 1, then 2"


def test_a_mapping_merged_into_itself_is_a_params_error(tmp_path):
    """``datasets: &a {<<: *a}``: PyYAML follows the merge for ever (a RecursionError traceback)."""
    from hsnet.params import ParamsError

    path = tmp_path / "params.yaml"
    path.write_text("datasets: &a\n  <<: *a\n  sample: {}\n")
    with pytest.raises(ParamsError, match="merge"):
        Params.resolve(path, "sample")
