"""Attack 23e: today's fixes, part 1, as a user of `dvc repro` and of the command line.

Attacked: crop's output kept between runs (dvc.yaml's ``persist: true`` on ``data/processed/${item}``)
and `hsnet model-info`'s default class count taken from Table 6's dataset (hsnet/model/info.py).

Each test states the promise or the independent expectation it checks, fails on the code as it
stands because of the defect it names, and passes once that defect is fixed.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
import yaml

# the smallest settings tests/pipeline/test_dvc.py uses
TINY = {"input_size": 80, "import": {"split_by": "class", "seed": 0}, "validate": {"min_size": 32},
        "crop": {"detector": "none", "size": 80}, "model": {"ktl": False},
        "train": {"lr": 0.001, "epochs": 1, "batch_size": 16, "seed": 3}}


def _contents(paths: list[Path]) -> dict[str, str]:
    """{file: sha256 of its bytes} of every file under ``paths`` (files or folders): what DVC's
    md5 of those dependencies is made of."""
    out = {}
    for top in paths:
        files = [top] if top.is_file() else [Path(d) / f for d, _, fs in os.walk(top) for f in fs]
        for f in files:
            out[str(f)] = hashlib.sha256(f.read_bytes()).hexdigest()
    return out


def test_crop_run_again_on_unchanged_photos_changes_nothing_train_depends_on(tmp_path):
    """README ("The pipeline: DVC on a workstation"): "A stage runs again when its code, data or the
    settings it reads change"; "Crop's output folder is kept between runs (`persist`), so a re-run
    cuts only the photos whose content or settings changed". dvc.yaml holds its steps' outputs to
    "the same for the same input" so that a re-run upstream costs nothing downstream (validate's
    summary.json: "so a re-run validation of unchanged data doesn't re-crop"; README: "a re-run of
    validation on unchanged data doesn't re-crop").

    Independent expectation: when the crop stage runs again on the same photos with the same
    settings (e.g. a file the importer skips lands in data/raw/NAME, a dependency of crop; import and
    validate give the same manifest and verdict), nothing that train@ and evaluate@ depend on under
    data/processed/NAME changes, so `dvc repro` doesn't train and evaluate again. Before crop's output
    persisted, DVC deleted the folder and crop cut everything: the same bytes. Now the re-run reuses
    every crop and writes its counts into crop_report.json inside the folder ("processed": 0,
    "reused": 42 instead of 42 and 0): the folder's hash changes, and `dvc repro` re-runs train
    (resuming a finished last.pt: the data loaded, the MLflow run continued) and evaluate (a new
    evaluation run) for crops that did not change. (Seen with real dvc: a README.txt added to
    data/raw/sample made `dvc repro` run import, validate, crop "84 reused", then train@sample;
    dvc.lock's md5 of data/processed/sample changed, crop_report.json the only file that did.)

    Here the crop stage's own command (dvc.yaml) runs twice in a folder laid out as the project.
    """
    import shlex
    import subprocess
    import sys

    from hsnet.data.datasets import import_dataset
    from hsnet.data.sample import generate

    ROOT = Path(__file__).resolve().parents[1]
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    generate(tmp_path / "data" / "raw" / "sample", per_class=1, size=96, seed=11)
    import_dataset("sample", tmp_path / "data" / "raw" / "sample", tmp_path / "data" / "interim" / "sample" / "manifest.csv")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump({"datasets_to_run": ["sample"], "datasets": {"sample": TINY}}))
    cmd = shlex.split(stages["crop"]["do"]["cmd"].replace("${item}", "sample"))
    assert cmd[0] == "hsnet"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HSNET_CACHE_DIR": str(tmp_path / "cache")}

    def run_stage():
        proc = subprocess.run([sys.executable, "-m", "hsnet", *cmd[1:]], cwd=tmp_path, env=env,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return proc.stdout

    run_stage()
    read_by_train = [tmp_path / d.replace("${item}", "sample") for d in stages["train"]["do"]["deps"]
                     if d.startswith("data/processed/")]
    assert read_by_train, "train depends on crop's output"
    before = _contents(read_by_train)
    assert "42 unchanged" in run_stage()  # the same photos, the same settings: every crop reused
    after = _contents(read_by_train)
    changed = sorted(os.path.relpath(f, tmp_path) for f in before.keys() | after.keys()
                     if before.get(f) != after.get(f))
    assert not changed, (f"crop re-ran on unchanged photos and changed {changed}, which train@sample depends on "
                         "(dvc.yaml): dvc repro trains and evaluates again for the same crops")


def test_model_info_refuses_zero_classes_instead_of_counting_seven():
    """hsnet model-info --help: "--num-classes: expressions the classifier tells apart (default: those
    of Table 6's dataset)"; hsnet.model.info.describe: "for ``num_classes`` expressions (default: those
    of Table 6's dataset)". HSNet refuses a classifier of fewer than 2 classes ("num_classes must be
    at least 2"), as `--num-classes 1` or `-3` shows.

    Independent expectation: a count that was given is used, or refused; the default applies only
    when none was given. `hsnet model-info --num-classes 0` (before today refused by HSNet) now
    prints, without a word, the parameter counts of a 7-class model (``num_classes or len(...)``
    takes 0 for "not given"), a table that doesn't say how many classes it counted.
    """
    from hsnet.errors import HSNetError
    from hsnet.model.info import describe

    with pytest.raises((ValueError, HSNetError), match="class"):
        describe(num_classes=0, sizes=(), progress=False)  # sizes=(): the parameters only, no FLOPs (quick)
