"""Session 10 attack on the settings, the numbers and reproducibility: hostile or careless params
files, hand-computed metrics, and what a resumed or re-run training records."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import torch

from hsnet.errors import HSNetError
from hsnet.params import Params, ParamsError


def _write(tmp_path, text: str):
    path = tmp_path / "params.yaml"
    path.write_text(text)
    return path


# --- params.yaml: careless or hostile files ----------------------------------------------------

@pytest.mark.parametrize("text, key", [
    # a dataset entry written twice: the first was dropped without a word (dvc refuses the same file:
    # "YAML file structure is corrupted", so the CLI and Kubeflow's submit ran what dvc would not)
    ("datasets:\n  sample:\n    train: {lr: 0.1}\n  sample:\n    train: {lr: 0.5}\n", "sample"),
    ("datasets:\n  sample:\n    train: {lr: 0.1, lr: 0.5}\n", "lr"),
])
def test_a_key_written_twice_is_refused_naming_it(tmp_path, text, key):
    with pytest.raises(ParamsError, match=rf"{key}.*(twice|more than once)"):
        Params.resolve(_write(tmp_path, text), "sample")


def test_kubeflow_submit_refuses_a_key_written_twice_as_the_cli_and_dvc_do(tmp_path):
    """pipelines/submit.py reads params.yaml with yaml.safe_load: the duplicate the CLI (hsnet.params.load)
    and dvc refuse is sent to Kubeflow with the last entry silently winning."""
    from pipelines.submit import load_params

    path = _write(tmp_path, "datasets:\n  sample:\n    train: {lr: 0.1}\n  sample:\n    train: {lr: 0.5}\n")
    with pytest.raises(HSNetError, match="sample.*twice"):
        load_params(str(path), ["sample"])


def test_a_merge_key_overridden_by_an_explicit_key_is_not_a_duplicate(tmp_path):
    text = ("datasets:\n  sample: &base\n    input_size: 80\n    train: {lr: 0.1}\n"
            "  rafdb:\n    <<: *base\n    input_size: 96\n")
    assert Params.resolve(_write(tmp_path, text), "rafdb").input_size == 96


@pytest.mark.parametrize("to_run", ["[[sample]]", "[{a: 1}]"])
def test_datasets_to_run_with_an_item_that_is_not_a_name_is_a_params_error(tmp_path, to_run):
    # TypeError: unhashable type: 'list' (a traceback, from hsnet train and from Kubeflow's submit)
    with pytest.raises(ParamsError, match="datasets_to_run"):
        Params.resolve(_write(tmp_path, f"datasets_to_run: {to_run}\ndatasets:\n  sample: {{}}\n"), "sample")


@pytest.mark.parametrize("section, seed", [("import", -1), ("train", 10 ** 14), ("train", -1)])
def test_a_seed_the_generators_cannot_take_is_refused_by_name(tmp_path, section, seed):
    # import.seed -1: numpy's "expected non-negative integer" traceback from hsnet data import;
    # train.seed 1e14: "Overflow when unpacking long long" from torch in the first epoch
    with pytest.raises(ParamsError, match=rf"datasets\.sample\.{section}\.seed.*range"):
        Params.resolve(_write(tmp_path, f"datasets:\n  sample:\n    {section}: {{seed: {seed}}}\n"), "sample")


def test_an_aliased_value_in_the_wrong_place_is_refused_quickly_with_a_short_message(tmp_path):
    # 8 levels of 10 aliases each: under 1 kB of YAML, 10^8 strings once written out in full
    # (7 levels took 1.1 s, 8 levels 11 s, each level 10 times more, and as much memory)
    doc = "datasets:\n  sample:\n    model:\n      stem_weights:\n"
    doc += "        - &a0 [x, x, x, x, x, x, x, x, x, x]\n"
    for i in range(1, 8):
        doc += f"        - &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n"
    start = time.monotonic()
    with pytest.raises(ParamsError, match="stem_weights") as err:
        Params.resolve(_write(tmp_path, doc), "sample")
    assert time.monotonic() - start < 2, "the message wrote out every aliased copy"
    assert len(str(err.value)) < 2000


@pytest.mark.parametrize("entry, key", [("input_size: 9000", "input_size"), ("crop: {size: 9000}", "crop.size")])
def test_a_crop_size_hsnet_cannot_read_back_is_refused_before_cropping(tmp_path, entry, key):
    """input_size 9000 (a careless 900): hsnet crop wrote 9000x9000 crops (81 Mpx each), which every
    reader then refused (hsnet.io.MAX_IMAGE_PIXELS, 64 Mpx: 'over the limit ... downscale it first'),
    so the whole crop was lost work and train failed on data the pipeline made itself."""
    from hsnet.io import MAX_IMAGE_PIXELS

    path = _write(tmp_path, f"datasets:\n  sample:\n    {entry}\n")
    with pytest.raises(ParamsError, match=rf"datasets\.sample\.{key}: 9000 is out of range.*<= 8000"):
        Params.resolve(path, "sample")
    assert 8000 ** 2 <= MAX_IMAGE_PIXELS < 8001 ** 2
    assert Params.resolve(_write(tmp_path, "datasets:\n  sample:\n    input_size: 8000\n"), "sample").crop.size == 8000


@pytest.mark.parametrize("entry, key, bound", [("train: {max_epochs: 0}", "train.max_epochs", ">= 1"),
                                               ("train: {num_threads: 0}", "train.num_threads", ">= 1"),
                                               ("crop: {size: 0}", "crop.size", ">= 1")])
def test_an_optional_number_out_of_range_says_its_range(tmp_path, entry, key, bound):
    # said "0 is not an integer or null": the range error of `int | None` was swallowed by the union
    with pytest.raises(ParamsError, match=rf"datasets\.sample\.{key}: 0 is out of range; it must be {bound}"):
        Params.resolve(_write(tmp_path, f"datasets:\n  sample:\n    {entry}\n"), "sample")


def test_every_section_of_a_dataset_entry_is_a_param_of_a_dvc_stage_that_reads_it():
    """datasets.<name>.evaluate (tta_hflip) is read by no stage dvc re-runs on its change: train's
    params are defaults, input_size, model and train; evaluate has none and runs without --params,
    so it takes the evaluate settings best.pt was trained with. Setting tta_hflip: true in a
    dataset's entry and running dvc repro (or make pipeline) changes nothing, not even with
    dvc repro -f evaluate@NAME; Kubeflow's train step takes the whole entry, so there it retrains."""
    import yaml

    from hsnet.params import _keys

    stages = yaml.safe_load((Path(__file__).resolve().parents[1] / "dvc.yaml").read_text())["stages"]
    tracked = {p for s in stages.values() for p in (s.get("do") or s).get("params", [])}
    for key in _keys(Params):
        assert any(f"datasets.${{item}}.{key}".startswith(t) for t in tracked), \
            f"datasets.<name>.{key} is no stage's param in dvc.yaml"


# --- the numbers ---------------------------------------------------------------------------------

def test_the_per_class_figures_average_to_the_mean_accuracy_reported():
    """metrics.json, MLflow (test_accuracy_<class>) and Kubeflow (accuracy_<class>) give a class with
    no test image an accuracy of 0.0, while mean accuracy (eq. 23) leaves it out: a reader who
    averages the per-class figures, or reads 'surprise 0.00', is told something that wasn't measured."""
    from hsnet.evaluate import confusion_matrix, metrics_from_confusion

    # 3 classes; class c has no test image; the ties in the scores went to the first class
    actual = [0, 0, 0, 0, 1, 1]
    predicted = [0, 0, 0, 1, 1, 0]
    m = metrics_from_confusion(confusion_matrix(actual, predicted, 3), ["a", "b", "c"])
    assert m["accuracy"] == pytest.approx(4 / 6)  # eq. 22, by hand
    assert m["mean_accuracy"] == pytest.approx((3 / 4 + 1 / 2) / 2)  # eq. 23 over the classes tested
    measured = [v for v in m["per_class_accuracy"].values() if v is not None and not np.isnan(v)]
    assert np.mean(measured) == pytest.approx(m["mean_accuracy"])


def test_evaluate_on_crops_cut_otherwise_than_the_models_says_so(trained, tmp_path, caplog):
    """best.pt records the crop settings its training crops were cut with (train reads crop_report.json,
    and predict and the server cut faces with them), but hsnet evaluate takes any crops of the dataset:
    the test split cut at 60 px (or with another margin or detector) is scored without a word, and the
    metrics say nothing of it. train itself warns when params and crops differ."""
    import logging
    import shutil

    from hsnet.data.crop import crop
    from hsnet.evaluate import evaluate
    from hsnet.params import CropParams

    raw = trained["data"].parent  # tiny_data's folder: raw/, manifest.csv, crops/
    crop(raw / "manifest.csv", raw / "raw", tmp_path / "crops60", settings=CropParams(detector="none", size=60),
         progress=False)
    caplog.set_level(logging.WARNING)
    try:
        evaluate(trained["checkpoint"], tmp_path / "crops60", tmp_path / "eval", track=False, progress=False)
    except HSNetError as exc:
        assert "crop" in str(exc)
        return
    finally:
        shutil.rmtree(tmp_path / "crops60", ignore_errors=True)
    assert any("crop" in r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING), \
        "evaluated crops cut at 60 px with a model trained on 80 px crops without a word"


def test_table6s_summed_confusion_matrix_holds_the_runs_and_predictions_its_header_counts():
    """A row's confusion matrix is summed over the runs that have one (dvc exp show leaves the list
    out; a run whose commit can't be read keeps None), but its header counts every run and every
    run's images: 'summed over 2 run(s) (16 test predictions)' above a matrix of 8."""
    from hsnet.reproduce import ablation_section, exp_name

    cfg = (True, True, False)
    rows = [{"experiment": exp_name("s", cfg, seed), "rev": "x", "timestamp": "2026-01-01T00:00:00", "seed": seed,
             "dataset": "s", "config": cfg, "accuracy": 0.875, "mean_accuracy": 0.875, "classes": ["a", "b"],
             "confusion_matrix": cm, "images": 8} for seed, cm in ((0, [[3, 1], [0, 4]]), (1, None))]
    lines, _ = ablation_section(rows, "s")
    text = "\n".join(lines)
    header = next(ln for ln in lines if ln.startswith("<details><summary>confusion matrix"))
    matrix = [ln for ln in text.split(header, 1)[1].splitlines() if ln.startswith("| **")]
    total = sum(int(v) for ln in matrix for v in ln.split("|")[2:-1])
    assert f"({total} test predictions)" in header, header


# --- reproducibility -----------------------------------------------------------------------------

def test_a_run_records_the_cpu_settings_that_decide_its_numbers():
    """'Another CPU gave different numbers', reproduced on one machine with the tiny sample, seed 3,
    2 epochs: 1 thread: epoch-1 loss 1.95157778, val acc 0.143; 2 threads: 1.9510138; 1 thread with
    ATEN_CPU_CAPABILITY=default (PyTorch's kernels for a CPU without AVX2/AVX-512): 1.95040584, val
    acc 0.214. The same settings repeat bit for bit. docs/results.md says a run moves with the CPU
    and thread count, but no record keeps either: MLflow's params say train.num_threads None (torch's
    default, the core count) and the system tags hold python, torch, the OS string and 'cpu'."""
    from hsnet import tracking

    values = set(tracking.system_tags().values())
    assert str(torch.get_num_threads()) in values, "the CPU threads used"
    assert torch.backends.cpu.get_cpu_capability() in values, "the CPU kernels used (AVX512, AVX2, DEFAULT)"


RESUME_PARAMS = ("datasets:\n  sample:\n    input_size: 80\n    model: {ktl: false, fgal: false}\n"
                 "    train: {lr: 0.001, epochs: 2, batch_size: 16, seed: 3, scheduler: {patience: 50}}\n")


@pytest.fixture(scope="module")
def killed_run(tiny_data, tmp_path_factory):
    """A training stopped after its first epoch, as a kill leaves it: last.pt to resume from."""
    from hsnet.train import train

    base = tmp_path_factory.mktemp("killed")
    path = base / "params.yaml"
    path.write_text(RESUME_PARAMS)
    train(tiny_data, Params.resolve(path, "sample"), base / "run", stop_after_epochs=1, track=False, progress=False)
    return base


def _resume(tiny_data, killed_run, tmp_path, overrides):
    import shutil

    from hsnet.train import train

    shutil.copytree(killed_run / "run", tmp_path / "run")
    return train(tiny_data, Params.resolve(killed_run / "params.yaml", "sample", overrides), tmp_path / "run",
                 resume=True, track=False, progress=False)


def test_resume_with_other_optimizer_settings_records_what_it_trained_with(tiny_data, killed_run, tmp_path):
    """hsnet train --resume --set train.lr=0.01 after a killed run at lr 0.001: the optimizer state
    loaded from last.pt brings back lr 0.001 (and the old betas, weight decay, scheduler patience and
    factor), so epoch 2 trains at 0.001 while last.pt's meta, best.pt (hsnet register) and the new
    MLflow run record lr 0.01. Either refuse, naming the setting, or train with the new value."""
    from hsnet.checkpoint import load

    try:
        _resume(tiny_data, killed_run, tmp_path, {"train": {"lr": 0.01}})
    except HSNetError as exc:
        assert "lr" in str(exc)
        return
    last = load(tmp_path / "run" / "last.pt")
    trained_with = last["state"]["history"][-1]["lr"]
    assert last["meta"]["params"]["train"]["lr"] == trained_with, \
        f"epoch 2 trained at lr {trained_with}, the checkpoint says {last['meta']['params']['train']['lr']}"


def test_resume_with_another_architecture_is_refused_naming_the_setting(tiny_data, killed_run, tmp_path):
    """hsnet train --resume --set model.fgal=true on a last.pt trained without FGAL: a RuntimeError
    'Error(s) in loading state_dict for HSNet: Missing key(s) ...' (a traceback of parameter names)
    instead of a message naming model.fgal and what to do (another --out, or drop --resume)."""
    with pytest.raises(HSNetError, match=r"model\.fgal"):
        _resume(tiny_data, killed_run, tmp_path, {"model": {"fgal": True}})
