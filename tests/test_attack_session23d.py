"""Attack 23d: one home per fact.

The project's rule: "One home per fact: each paper concept, each default, each file name, each number
the paper states. If you write a fact a second time, move it." docs/architecture.md, "Where each kind
of change goes": "a setting (new key, new default): hsnet/params.py (the schema and its default) ...;
params.yaml only if a dataset differs from the default"; "a number the paper states: hsnet/paper.py
(results) or the schema's default (recipe)".

The first four tests find copies that ALREADY differ from the fact they copy; the rest find a
literal written outside the module that is its home (no drift yet, a rename or a new default in
the home leaves the copy behind). Each reads the source or the docs; nothing runs a pipeline.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import sys
from pathlib import Path

import pytest
import yaml

from tests.test_review_session14 import CODE_DIRS, ROOT, _code_files
from tests.test_review_session14 import _string_constants as _strings


def _flat(path: Path) -> str:
    return " ".join(path.read_text(encoding="utf-8").split())


def _literal_defaults(names: tuple[str, ...], dirs=CODE_DIRS):
    """Literal (not None) defaults of parameters called ``names`` in function signatures, and of the
    argparse flags --name-with-dashes: (where, value)."""
    flags = {"--" + n.replace("_", "-") for n in names}
    found = []
    for d in dirs:
        for path in sorted((ROOT / d).rglob("*.py")):
            rel = path.relative_to(ROOT)
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    args = node.args.args + node.args.kwonlyargs
                    defaults = ([None] * (len(node.args.args) - len(node.args.defaults)) + list(node.args.defaults)
                                + list(node.args.kw_defaults))
                    for a, v in zip(args, defaults):
                        if a.arg in names and isinstance(v, (ast.Constant, ast.List, ast.Tuple)) \
                                and not (isinstance(v, ast.Constant) and v.value is None):
                            found.append((f"{rel}:{v.lineno} {node.name}({a.arg}=...)", ast.literal_eval(v)))
                if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument" and node.args \
                        and isinstance(node.args[0], ast.Constant) and node.args[0].value in flags:
                    for kw in node.keywords:
                        if kw.arg == "default" and isinstance(kw.value, (ast.Constant, ast.List)) \
                                and not (isinstance(kw.value, ast.Constant) and kw.value.value is None):
                            found.append((f"{rel}:{kw.value.lineno} {node.args[0].value}", ast.literal_eval(kw.value)))
    return found


# --- copies that already differ -------------------------------------------------------------------

def test_readme_chance_guard_window_is_the_one_guards_uses():
    """README, "Training and evaluation": a run is stopped when it shows "a validation accuracy at
    chance for the scheduler's patience and 10 epochs more". The guard's one home,
    hsnet.guards.chance_window, waits patience + 2 + CHANCE_EPOCHS (ReduceLROnPlateau lowers the lr
    only after epoch patience + 2 of a flat loss; docs/paper-notes.md says so: "32 epochs with the
    paper's patience of 20"). The README's copy of the rule was not updated when the window moved:
    with the paper's patience it promises 30 epochs, the code (and paper-notes) 32."""
    from hsnet.guards import chance_window
    from hsnet.params import SchedulerParams

    text = _flat(ROOT / "README.md")
    m = re.search(r"at chance for (\d+) epochs in a row with the paper's patience", text)
    assert m, "README states the chance window as a number of epochs with the paper's patience"
    patience = SchedulerParams().patience
    assert chance_window(patience) == int(m.group(1)), (
        f"README: {m.group(1)} epochs at chance; hsnet.guards.chance_window({patience}) = {chance_window(patience)}")


def _table_mb(cell: str) -> float:
    return float(re.match(r"\s*([\d.,]+) MB", cell).group(1).replace(",", ""))


def test_performance_md_bytes_moved_table_is_what_the_committed_dvc_lock_gives():
    """docs/performance.md, "Bytes moved per step of the sample pipeline": "`python -m
    benchmarks.bytes_moved --repo .` after a pipeline run; the committed `dvc.lock` of the sample",
    then a table whose crop row reads "51.91 MB (photos + manifest + validation report)" and whose
    total reads 302.5 MB. The same script on the committed dvc.lock gives crop 47.72 MB and 299.4 MB
    in all: crop no longer reads the validation report (dvc.yaml: it depends on summary.json alone,
    "so a re-run validation of unchanged data doesn't re-crop"), and the table was not redone. The
    figure's home is the file it is read from; the doc's copy drifted by 4.19 MB (the Data Docs)."""
    sys.path.insert(0, str(ROOT))
    from benchmarks.bytes_moved import moved

    text = (ROOT / "docs" / "performance.md").read_text(encoding="utf-8")
    section = text.split("### Bytes moved per step of the sample pipeline", 1)[1]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("|") and len(cells) == 3 and re.match(r"[\d.,]+ MB", cells[1]):
            rows[cells[0]] = (_table_mb(cells[1]), _table_mb(cells[2]))
        elif rows and not line.startswith("|"):
            break  # the first table of the section only
    assert "crop" in rows and "all steps" in rows, rows
    m = moved(ROOT)
    measured = {s["step"].split("@")[0]: (s["read_bytes"] / 1e6, s["written_bytes"] / 1e6) for s in m["steps"]
                if s["step"].endswith("@sample")}
    measured["all steps"] = (m["read_bytes"] / 1e6, m["written_bytes"] / 1e6)
    off = {step: (doc, tuple(round(x, 2) for x in measured[step])) for step, doc in rows.items()
           if abs(doc[0] - measured[step][0]) > 0.5 or abs(doc[1] - measured[step][1]) > 0.5}
    assert not off, f"docs/performance.md (read, written MB) vs benchmarks.bytes_moved on the committed dvc.lock: {off}"


def test_the_memory_quoted_for_one_run_side_by_side_is_the_measured_one():
    """README ("The ablation pipeline"): "One run at the paper's batch of 32 uses 0.27 GiB and leaves
    most of a large GPU idle: with the parameter `runs_per_gpu` above 1 ..."; the same figure in
    pipelines/ablation_pipeline.py's docstring and hsnet/concurrent.py's. 0.27 GiB is the H100's
    host-pipeline figure (docs/performance.md section 6, before `train.data_on_device` existed).
    The runs `runs_per_gpu` puts side by side train with today's defaults (data on the GPU, CUDA
    graphs), and their own measurement, benchmarks/results/h200/concurrent.json
    ("Several trainings sharing the GPU": "0.49 GiB per process"), says 0.49 GiB per run before the
    dataset is added (1.23 GiB with 6,400 images at 224: device_data-compile-reduce-overhead.json).
    Three copies of a number whose home, the raw result, says otherwise."""
    results = ROOT / "benchmarks/results/h200"
    rows = json.loads((results / "concurrent.json").read_text())["rows"]
    measured = {round(r["peak_memory_gib_per_run"], 2) for r in rows}
    measured |= {round(r["peak_memory_gib"], 2) for r in json.loads(
        (results / "device_data-compile-reduce-overhead.json").read_text())["rows"] if r["data"] == "device"}
    quoted = {
        "README.md": re.search(r"One run at the paper's batch of 32 uses ([\d.]+) GiB", _flat(ROOT / "README.md")),
        "pipelines/ablation_pipeline.py": re.search(r"one run takes ([\d.]+) GiB",
                                                    _flat(ROOT / "pipelines/ablation_pipeline.py")),
        "hsnet/concurrent.py": re.search(r"batch of 32 leaves most of a large GPU idle and takes ([\d.]+) GiB",
                                         _flat(ROOT / "hsnet/concurrent.py")),
    }
    quoted = {k: float(m.group(1)) for k, m in quoted.items() if m}
    if not quoted:
        pytest.skip("no longer quoted")
    wrong = {k: v for k, v in quoted.items() if v not in measured}
    assert not wrong, f"quoted GiB per run {wrong}; measured per run side by side: {sorted(measured)} GiB"


def test_source_version_checks_the_canary_share_the_pipeline_defaults_to():
    """components/fetch.py source_version checks the run's parameters "before any data is fetched",
    canary_percent among them, and its signature gives canary_percent a default of 100; the
    default's home is hsnet.deploy.CANARY_PERCENT (10: "a newly promoted version's share of the
    traffic, unless told otherwise"), which hsnet promote --canary-percent and hsnet_pipeline's
    parameter take. A caller of prepare_crops that passes promote/deploy without a canary share
    has 100 checked while the promote step rolls out 10 (components/promote.py's docstring: "No
    defaults for the gate and the canary: a component's signature can't read hsnet's" - this one
    has one, and another value). A component default must be a literal: use a sentinel (-1 =
    CANARY_PERCENT) resolved in the body, as seed=-1 is."""
    from components.fetch import source_version
    from hsnet.deploy import CANARY_PERCENT

    default = inspect.signature(source_version.python_func).parameters["canary_percent"].default
    assert default in (CANARY_PERCENT, -1, None), (
        f"source_version(canary_percent={default}) while hsnet.deploy.CANARY_PERCENT = {CANARY_PERCENT}")


# --- literals outside their home ------------------------------------------------------------------

def test_params_yaml_holds_only_settings_that_differ_from_the_schemas_defaults():
    """docs/architecture.md: "a setting (new key, new default): hsnet/params.py (the schema and its
    default) ...; `params.yaml` only if a dataset differs from the default" (a section dvc.yaml
    lists may be `{}`: "{} means the paper's defaults", params.yaml itself says). params.yaml writes
    the schema's defaults again as values: the sample's `train.lr: 0.01  # the paper's`,
    `evaluate: {tta_hflip: false}  # the paper's` in all five entries, the sample's
    `import: {split_by: class, seed: 0}` and `validate: {min_size: 32}`, rafdb's
    `import: {rafdb_images: aligned}`, rafd's and kdef's `crop: {detector: mtcnn}` (CropParams.detector's
    default, commented there "the paper crops RaFD and KDEF with MTCNN"), `defaults: {train: {seed: 0}}`.
    A change of the default in
    its home (the paper's recipe re-read, a new validation floor) silently doesn't reach these
    datasets. (`input_size` is left out: dvc.yaml lists `datasets.<name>.input_size`, so every entry
    must name it.)"""
    from hsnet.params import Params

    data = yaml.safe_load((ROOT / "params.yaml").read_text(encoding="utf-8"))
    schema = Params().to_dict()

    def copies(entry, default, where):
        for key, value in (entry or {}).items():
            if isinstance(value, dict) and isinstance(default.get(key), dict):
                yield from copies(value, default[key], f"{where}.{key}")
            elif key in default and key != "input_size":
                d = default[key]
                if value == d or (isinstance(d, list) and list(value or []) == d):
                    yield f"{where}.{key}: {value!r}"

    found = list(copies(data.get("defaults"), schema, "defaults"))
    for name, entry in (data.get("datasets") or {}).items():
        found += copies(entry, schema, f"datasets.{name}")
    # written out on purpose: `dvc exp run -S KEY=VALUE` (README) can only set a key the file has
    # (Hydra; tests/test_review_session10.py), so the sample's experiment knobs stay, each the default
    for key in WRITTEN_FOR_EXP_RUN:
        dataset, section, name = key.split(".")[1:]
        assert data["datasets"][dataset][section][name] == schema[section][name], (
            f"params.yaml's {key} is kept as the schema's default for dvc exp run -S; the default changed "
            f"to {schema[section][name]!r}: write that")
        found.remove(f"datasets.{dataset}.{section}.{name}: {data['datasets'][dataset][section][name]!r}")
    assert not found, f"params.yaml repeats {len(found)} schema default(s): {found}"


WRITTEN_FOR_EXP_RUN = ("datasets.sample.train.lr", "datasets.sample.evaluate.tta_hflip")


def test_the_papers_augmentation_is_not_copied_into_the_input_pipelines_signatures():
    """Sect. 4.2: "Random horizontal flips and 5 degree rotations were applied as the data
    augmentation"; its home is the schema (hsnet.params.AugmentParams: hflip True,
    rotate_degrees 5.0; architecture.md: "a number the paper states: ... the schema's default").
    hsnet/tensors.py writes `hflip: bool = True, rotate_degrees: float = 5.0` again as the default of
    draw_augment, augment, EpochAugment and BatchAugment: four more copies of the paper's 5 degrees
    (a caller that leaves them out augments by the copy, not by train.augment)."""
    copies = _literal_defaults(("rotate_degrees", "hflip"), dirs=("hsnet",))
    assert not copies, f"the paper's augmentation written as signature defaults: {copies}"


@pytest.mark.parametrize("literal, home", [
    ("skip", "hsnet/params.py"),  # SKIP_STEM_WEIGHTS = "skip" (since session 24 beside vggface2: the schema refuses it)
    ("vggface2", "hsnet/params.py"),  # ModelParams.stem_weights' value: model/hsnet.py, ktl.py, reproduce.py, convert.py
])
def test_stem_weights_keywords_have_one_home(literal, home):
    """`stem_weights` takes two keywords besides a file or s3:// URI: "vggface2" (facenet-pytorch's
    download: ModelParams.stem_weights' default) and "skip" (a frozen stem whose weights come from a
    checkpoint: hsnet.params.SKIP_STEM_WEIGHTS, a named constant). Each is compared or passed by
    literal in other modules (hsnet/model/info.py and hsnet/checkpoint.py pass "skip" instead of the
    constant; "vggface2" is tested by literal in model/hsnet.py, model/ktl.py, reproduce.py and
    components/convert.py): renaming the keyword in its home leaves those deciding on the old one."""
    places = [f"{p.relative_to(ROOT)}:{n.lineno}" for p in _code_files()
              for n in _strings(ast.parse(p.read_text())) if n.value == literal]
    outside = [p for p in places if not p.startswith(home + ":")]
    assert not outside, f"{literal!r} written outside {home}: {outside}"


def test_the_params_file_name_is_a_default_in_one_place():
    """The settings file's name, params.yaml (dvc.yaml's `--params params.yaml`), is the literal default
    of `hsnet train --params`, `hsnet reproduce ablation --params`, `hsnet reproduce datasets
    --params`, hsnet.reproduce.ablation(params_path=...), datasets(params_path=...),
    pipelines.submit.submit(params_path=...) and `python -m pipelines.submit --params`: seven copies
    of one default."""
    copies = _literal_defaults(("params", "params_path"))
    assert len(copies) <= 1, f"'params.yaml' written as a default {len(copies)} times: {copies}"


@pytest.mark.parametrize("names", [
    ("host",),  # hsnet serve --host and hsnet.serve.serve(host=...): "127.0.0.1" twice
    ("num_classes",),  # hsnet model-info --num-classes and hsnet.model.info.describe(num_classes=...): 7 twice
    ("experiment",),  # pipelines.submit: --experiment and submit(experiment=...): "hsnet" twice
], ids=lambda names: names[0])
def test_default_written_once(names):
    """Each default once (the rule; tests/test_review_session14.py holds min_prob, min_face_size,
    canary_percent, port and checkpoint_every_s to it). These three are written twice, as the flag's
    default and again as the function's."""
    copies = _literal_defaults(names)
    assert len(copies) <= 1, f"default of {names[0]} written {len(copies)} times: {copies}"


FILE_HOMES = {  # hsnet.files: the names of the files the steps write (the steps re-export theirs)
    "hsnet/files.py": ("best.pt", "last.pt", "metrics.json", "predictions.csv", "confusion_matrix.png",
                       "comparison.md", "manifest.csv", "crop_report.json", "history.json", "training_curves.png",
                       "train_summary.json"),
}


def test_the_files_a_step_says_it_wrote_are_named_by_their_constants():
    """Each output file has a named constant (hsnet.files since this attack; before, in the module of
    the step that writes it: checkpoint.BEST and LAST, evaluate.METRICS_FILE ..., manifest.MANIFEST
    and CROP_REPORT, train.HISTORY/CURVES/SUMMARY). What hsnet prints after a step, its flags' help and
    its messages spell the names again: `hsnet evaluate` prints "-> OUT/metrics.json,
    confusion_matrix.png" (hsnet/cli.py), `hsnet crop` "see OUT/crop_report.json", `hsnet train
    --out` "folder for last.pt, best.pt, history.json", the training curves' legend "best.pt
    (epoch ...)" (hsnet/plots.py), register's refusals "the metrics.json it writes"
    (hsnet/registry.py). A rename in the home leaves every one of them pointing at a file that
    isn't there."""
    found = []
    for path in _code_files():
        rel = str(path.relative_to(ROOT))
        for node in _strings(ast.parse(path.read_text())):
            for home, names in FILE_HOMES.items():
                if home == rel:
                    continue
                for name in names:
                    if re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", node.value) and node.value != name:
                        found.append(f"{rel}:{node.lineno} {name}")
    assert not found, f"{len(found)} file name(s) spelt outside their home: {found}"
