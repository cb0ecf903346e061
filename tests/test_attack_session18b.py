"""Attack session 18b: is the project easy and safe to change? ("one home per fact: each paper
concept, each default, each file name, each number the paper states").

Each test guards a fact that lives in two or more places with nothing tying the copies together.
Most pass on the code they were written against and fail after the careless one-place edit named
in their docstring, which today leaves every other test green while the system is wrong.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from pathlib import Path
from urllib.parse import urlparse

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def _dvc_stages() -> dict:
    return yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]


def _flag(cmd: str, flag: str) -> str:
    words = shlex.split(cmd)
    return words[words.index(flag) + 1]


def _outs(stage: dict) -> set[str]:
    """Every path a dvc.yaml stage declares it writes (outs, metrics, plots)."""
    paths = set()
    for kind in ("outs", "metrics", "plots"):
        for entry in stage["do"].get(kind, []):
            paths.add(next(iter(entry)) if isinstance(entry, dict) else entry)
    return paths


# --- 1. the built-in sample: `make pipeline` draws it with the CLI's defaults, data.dvc records it --------

def _dvc_dir_md5(root: Path, prefix: str) -> tuple[str, int, int]:
    """DVC's hash of a directory (dvc-data's Tree: the md5 of the sorted JSON list of
    {md5, relpath}), its file count and size, as data.dvc records them."""
    entries, size = [], 0
    for p in sorted(root.rglob("*")):
        if p.is_file():
            data = p.read_bytes()
            size += len(data)
            entries.append({"md5": hashlib.md5(data).hexdigest(), "relpath": f"{prefix}/{p.relative_to(root).as_posix()}"})
    entries.sort(key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode()).hexdigest() + ".dir", len(entries), size


def test_makefile_draws_the_sample_data_dvc_records(tmp_path):
    """README: `make pipeline` "draws the built-in sample dataset into data/raw/sample (byte-identical
    to what data.dvc records)"; Makefile: the same, then `dvc status data.dvc`
    refuses to run the pipeline when data/raw differs. The draw is `hsnet data sample --out
    data/raw/sample` with the CLI's defaults (hsnet/cli.py: --per-class 30, --size 112, --seed 0),
    which repeat hsnet.data.sample.generate's own defaults (per_class=30, size=112, seed=0) and the
    result is recorded a third time in data.dvc (md5, nfiles 1260, size), in README ("1,260 PNGs",
    "126 test images") and docs/performance.md ("1,260 photos at 112 px").
    Careless edit: `--per-class` default 30 -> 20 in hsnet/cli.py (or --size 112 -> 96): every test
    passes, and `make pipeline` in a fresh clone stops at "data/raw differs from data.dvc". An edit
    of generate()'s defaults, the sample's apparent home, changes nothing at all: the CLI overrides
    them."""
    from hsnet.cli import main

    makefile = (ROOT / "Makefile").read_text()
    m = re.search(r"\$\(BIN\)/hsnet (data sample [^\n]*)", makefile)
    assert m, "the Makefile no longer draws the sample with hsnet data sample"
    words = shlex.split(m.group(1))
    out_rel = words[words.index("--out") + 1]
    assert out_rel == "data/raw/sample"
    words[words.index("--out") + 1] = str(tmp_path / "sample")
    assert main(words) == 0
    (out,) = yaml.safe_load((ROOT / "data.dvc").read_text())["outs"]
    assert out["path"] == "data/raw"
    md5, nfiles, size = _dvc_dir_md5(tmp_path / "sample", "sample")
    assert (md5, nfiles, size) == (out["md5"], out["nfiles"], out["size"]), \
        "hsnet data sample's defaults no longer draw what data.dvc records: make pipeline will refuse to run"
    stated = re.search(r"draw the built-in synthetic sample \(([\d,]+) PNGs\)", README.read_text())
    assert stated and int(stated.group(1).replace(",", "")) == nfiles, "README's count of the sample's images"


# --- 2. the end of make pipeline reads the register stage's record by a name of its own -------------------

def test_make_pipelines_summary_reads_the_record_the_register_stage_writes(tmp_path):
    """hsnet.summary: "per dataset of dvc.yaml's runs/DATASET/ ... what its register stage did
    (registered.json)". The name lives in dvc.yaml (register's --out, and its outs) and again as a
    literal in hsnet/summary.py:30 (no constant; hsnet register takes any --out). Careless edit:
    dvc.yaml's register --out (and its out) runs/${item}/registered.json -> runs/${item}/register.json:
    every fast test passes and `make pipeline` silently stops saying what was registered or how to
    promote it. Built as dvc repro leaves it: evaluate's --out and register's --out from dvc.yaml."""
    from hsnet.evaluate import METRICS_FILE
    from hsnet.summary import summarize

    stages = _dvc_stages()
    item = "sample"
    eval_dir = tmp_path / _flag(stages["evaluate"]["do"]["cmd"], "--out").replace("${item}", item)
    record = tmp_path / _flag(stages["register"]["do"]["cmd"], "--out").replace("${item}", item)
    assert record.relative_to(tmp_path).as_posix() in {p.replace("${item}", item) for p in _outs(stages["register"])}
    eval_dir.mkdir(parents=True)
    (eval_dir / METRICS_FILE).write_text(json.dumps({"accuracy": 0.9, "mean_accuracy": 0.9, "images": 10}))
    record.parent.mkdir(parents=True, exist_ok=True)
    # what hsnet register --skip-in-experiments writes inside a DVC experiment (no registry needed)
    record.write_text(json.dumps({"registered": False, "experiment": "exp-1"}))
    runs = tmp_path / Path(_flag(stages["evaluate"]["do"]["cmd"], "--out")).parts[0]
    text = summarize(runs)
    assert "not registered: DVC experiment exp-1" in text, text


# --- 3. the files each step writes: named in hsnet/, again in dvc.yaml -------------------------------------

def test_dvc_yaml_tracks_every_file_a_step_writes():
    """docs/architecture.md: "every arrow is a function in hsnet/ with typed arguments and explicit
    file outputs"; DVC caches, restores (dvc exp apply, checkout) and versions only what a stage
    declares. The file names live in hsnet (checkpoint.BEST/LAST, train.HISTORY/SUMMARY/CURVES,
    evaluate.OUTPUTS, validate.SUMMARY/RESULTS/DATA_DOCS) and again in dvc.yaml. Careless edit: a new
    evaluate output (append it to evaluate.OUTPUTS, as MLflow then logs it) or a renamed one
    (evaluate.CONFUSION = "confusion.png"): no fast test fails, the new file is never cached or
    restored (a renamed plot is caught only by the slow dvc repro test)."""
    from hsnet import checkpoint, evaluate, train
    from hsnet.data import validate

    stages = _dvc_stages()

    def declared(stage: str) -> set[str]:
        out = _flag(stages[stage]["do"]["cmd"], "--report" if stage == "validate" else "--out")
        return {p[len(out) + 1:] for p in _outs(stages[stage]) if p.startswith(out + "/")}

    assert declared("train") == {checkpoint.BEST, checkpoint.LAST, train.HISTORY, train.SUMMARY, train.CURVES}
    assert declared("evaluate") == set(evaluate.OUTPUTS)
    assert declared("validate") == {validate.SUMMARY, validate.RESULTS, validate.DATA_DOCS}


# --- 4. the committed make pipeline results are of the params.yaml committed --------------------------------

def test_dvc_lock_records_the_settings_params_yaml_gives():
    """`make pipeline`'s results are committed (dvc.lock, runs/sample/: metrics.json, the curves,
    registered.json; README quotes the sample's accuracy) and record the settings they were made
    with; params.yaml holds those settings too. The compiled pipeline YAML, the other copy of
    params.yaml, is held to it (tests/pipeline/test_kfp.py: "is stale"); dvc.lock is not. Careless
    edit: datasets.sample.train.epochs 12 -> 10 (or any sample setting) committed without re-running
    make pipeline: every test passes, and the committed results, and `dvc status`, describe a run
    the repository can no longer make."""
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text())["stages"]
    params = yaml.safe_load((ROOT / "params.yaml").read_text())

    def at(dotted: str):
        node = params
        for key in dotted.split("."):
            node = node[key]
        return node

    recorded = {(stage, key): value for stage, entry in lock.items()
                for values in (entry.get("params") or {}).values() for key, value in values.items()}
    assert recorded, "dvc.lock records no params"
    stale = {f"{stage} {key}": (value, at(key)) for (stage, key), value in recorded.items() if at(key) != value}
    assert not stale, f"dvc.lock (and runs/) were made with other settings than params.yaml's: {stale}"
    assert sorted({s.split("@")[1] for s in lock}) == sorted(params["datasets_to_run"])


# --- 5. the cluster's MLflow address: pipelines/__init__.py, again in mlflow/k8s/mlflow.yaml ------------------

def test_the_pipelines_mlflow_uri_is_the_service_mlflow_yaml_deploys():
    """pipelines/__init__.py: DEFAULT_MLFLOW_URI = "http://mlflow.kubeflow.svc.cluster.local:5000"
    "# mlflow/k8s/mlflow.yaml's Service"; the InferenceService template repeats it (held to
    DEFAULT_MLFLOW_URI by tests/serve/test_manifests.py). mlflow.yaml spells the Service's name and
    port, MLFLOW_PORT and, in MLFLOW_ALLOWED_HOSTS, the host:port clients send: MLflow 3.5+ refuses a
    request whose Host header is not allowed (https://mlflow.org/docs/latest/self-hosting/security/network,
    "Allowed Hosts"). Careless edit: the Service's port 5000 -> 80 (the usual Service port), or
    MLFLOW_ALLOWED_HOSTS cut to the short names: every test passes and every pipeline step and the
    model server fail to reach MLflow on the cluster."""
    from pipelines import DEFAULT_MLFLOW_URI

    docs = {d["kind"]: d for d in yaml.safe_load_all((ROOT / "mlflow" / "k8s" / "mlflow.yaml").read_text())}
    uri = urlparse(DEFAULT_MLFLOW_URI)
    service, namespace = uri.hostname.split(".")[:2]
    assert docs["Service"]["metadata"]["name"] == service
    assert re.search(rf"kubectl apply -n {namespace} -f mlflow/k8s/mlflow.yaml",
                     (ROOT / "mlflow" / "k8s" / "mlflow.yaml").read_text()), "applied in another namespace"
    (port,) = docs["Service"]["spec"]["ports"]
    assert port["port"] == uri.port
    config = docs["ConfigMap"]["data"]
    assert config["MLFLOW_PORT"] == str(port["targetPort"] if isinstance(port["targetPort"], int) else uri.port)
    assert uri.netloc in config["MLFLOW_ALLOWED_HOSTS"].split(","), \
        f"the server would refuse the Host header {uri.netloc} its clients send"


# --- 6. a dataset's classes and crop: hsnet/data/datasets.py and params.yaml, again in README and a docstring --

def _readme_datasets() -> dict[str, dict]:
    rows = {}
    text = README.read_text()
    section = text[text.index("### Placing the real datasets"):]
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and cells[1].startswith("`") and cells[1] != "`--dataset`":
            rows[cells[1].strip("`")] = {"classes": tuple(c.strip() for c in cells[3].split(",")), "crop": cells[5]}
        elif rows and not line.startswith("|"):
            break
    return rows


def test_readme_lists_every_dataset_with_the_importers_label_order():
    """README "Placing the real datasets": per dataset its --dataset name and "classes (label
    order)", the meaning of the manifest's label column and of the model's outputs. The order lives in
    hsnet/data/datasets.py (RAFDB_CLASSES, RAFD_CLASSES, KDEF_CODES, FERG_CLASSES), again in its module
    docstring and again in this table. Careless edit (brief's request 1): a fifth dataset, e.g. CK+
    (an importer with @dataset("ckplus", ...) and an entry in params.yaml, which is all
    docs/architecture.md's "a dataset" row asks for): every test passes and the README neither lists
    it nor says its label order; reordering a class tuple likewise leaves both copies wrong."""
    from hsnet.data.datasets import DATASETS

    rows = _readme_datasets()
    licensed = sorted(n for n in DATASETS if n != "sample")
    assert sorted(rows) == licensed, f"README's dataset table lists {sorted(rows)}, the importers {licensed}"
    for name, row in rows.items():
        assert row["classes"] == DATASETS[name].classes, name
    import hsnet.data.datasets as d

    for name, spec in DATASETS.items():
        line = next((l for l in d.__doc__.splitlines() if re.match(rf"\* (\w+, )*{name}\b", l.strip())), None)
        assert line is not None, f"hsnet/data/datasets.py's docstring doesn't give {name}'s class order"
        assert tuple(c.strip() for c in line.split(":", 1)[1].split("(")[0].split(",")) == spec.classes, name


def test_readme_gives_each_datasets_crop_as_params_yaml_sets_it():
    """README's "paper's crop" column (MTCNN, 100×100 / MTCNN, 256×256 / none, 256 / none, resize to
    224) repeats params.yaml's datasets.NAME.crop.detector and input_size. Careless edit: a dataset's
    input_size or detector in params.yaml (for the paper's four tests/test_params.py pins the values;
    for a new dataset nothing does)."""
    from hsnet.params import Params

    for name, row in _readme_datasets().items():
        p = Params.resolve(ROOT / "params.yaml", name)
        detector, _, size = row["crop"].partition(",")
        assert detector.strip().lower() == p.crop.detector, name
        assert re.findall(r"\d+", size)[0] == str(p.input_size), name


# --- 7. a setting's allowed values: the schema, again as the CLI flags' choices ----------------------------

@pytest.mark.parametrize("verb, flag, section, key", [
    ("crop", "--detector", "crop", "detector"), ("crop", "--no-face", "crop", "no_face"),
    ("data import", "--split-by", "import_", "split_by"), ("data import", "--rafdb-images", "import_", "rafdb_images")])
def test_every_value_the_schema_allows_the_flag_takes(verb, flag, section, key):
    """hsnet/cli.py: "A verb parses its flags, resolves the typed settings (hsnet.params.Params)";
    docs/architecture.md: a new setting or value goes in hsnet/params.py. The allowed values live in
    the schema (Literal[...]) and again as argparse choices (hsnet/cli.py: --detector, --no-face,
    --split-by, --rafdb-images), and for two of them a third time in hsnet/data/datasets.py
    (import_dataset's and scan_rafdb's own checks). Careless edit: a new value in the schema (e.g.
    CropParams.detector Literal["mtcnn", "none", "retinaface"] with its code in crop.py):
    params.yaml and --set accept it, `hsnet crop --detector retinaface` is refused by argparse."""
    import dataclasses
    import typing

    from hsnet.cli import build_parser
    from hsnet.params import Params

    hints = typing.get_type_hints(typing.get_type_hints(Params)[section])
    allowed = typing.get_args(hints[key])
    assert allowed, key
    base = {"crop": ["crop", "--manifest", "m", "--root", "r", "--out", "o"],
            "data import": ["data", "import", "--dataset", "sample", "--root", "r", "--out", "o"]}[verb]
    for value in allowed:
        args = build_parser().parse_args(base + [flag, value])
        assert getattr(args, flag[2:].replace("-", "_")) == value
    assert dataclasses.is_dataclass(typing.get_type_hints(Params)[section])


# --- 8. the paper's results: hsnet/paper.py, again in README's first paragraph ---------------------------------

def test_readme_quotes_the_papers_results_as_hsnet_paper_holds_them():
    """hsnet/paper.py: "What the paper (Fan et al. 2022) reports, written once". README's opening
    repeats Tables 2-5: "The paper reports 99.88% on RaFD, 93.35% on KDEF, 99.35% on FERG-DB and
    86.67% (mean accuracy 76.89%) on RAF-DB". Careless edit: a corrected figure in paper.RESULTS
    (what comparison.md and hsnet reproduce report compare with): every test but one report line in
    tests/pipeline/test_reproduce.py (KDEF's only) passes, and README goes on quoting the old one."""
    from hsnet.paper import RESULTS

    text = " ".join(README.read_text().split())
    m = re.search(r"The paper reports ([\d.]+)% on RaFD, ([\d.]+)% on KDEF, ([\d.]+)% on FERG-DB and ([\d.]+)% "
                  r"\(mean accuracy ([\d.]+)%\) on RAF-DB", text)
    assert m, "README no longer quotes the paper's results"
    quoted = [float(x) for x in m.groups()]
    assert quoted == [RESULTS["rafd"][1], RESULTS["kdef"][1], RESULTS["ferg"][1], RESULTS["rafdb"][1],
                      RESULTS["rafdb"][2]]


# --- 9. the keys each Kubeflow step takes: hsnet.params.STEP_KEYS, again in README --------------------------

def test_readme_lists_the_keys_each_step_takes_as_step_keys_has_them():
    """README "Caching follows the data": "Each step takes only the keys it reads
    (`hsnet.params.STEP_KEYS`: import `import`; validate `validate`; crop `input_size`, `crop`; train
    ...)" - a copy of STEP_KEYS (whose other copy, dvc.yaml's params lists, tests/pipeline/test_dvc.py
    holds to it). Careless edit: a step that reads one more key (say STEP_KEYS["evaluate"] gains
    "input_size"; dvc.yaml's evaluate stage already depends on the whole entry, so test_dvc.py asks
    for nothing): every test passes and README tells cluster users an edit of that key reuses the
    step's cached result."""
    from hsnet.params import STEP_KEYS

    text = " ".join(README.read_text().split())
    m = re.search(r"\(`hsnet\.params\.STEP_KEYS`: (.*?)\)", text)
    assert m, "README no longer lists STEP_KEYS"
    listed = {}
    for part in m.group(1).split(";"):
        step, _, keys = part.strip().partition(" ")
        listed[step] = tuple(re.findall(r"`([\w.]+)`", keys))
    assert listed == {step: tuple(keys) for step, keys in STEP_KEYS.items()}


# --- 10. the sections a dataset's entry must spell out: dvc.yaml's params lists, not the schema -------------

def test_every_dataset_entry_has_every_key_dvc_yaml_reads():
    """docs/architecture.md, "a dataset": "an importer ..., an entry in params.yaml", and "a
    setting: ... params.yaml only if a dataset differs from the default"; the schema
    (hsnet.params) accepts an entry with any subset of sections. dvc.yaml's stages list
    datasets.${item}.import, .validate, .crop, .input_size, .model, .train, and DVC refuses to run a
    stage whose listed key is missing ("failed to reproduce 's@a': Parameters 'datasets.a.import'
    are missing from 'params.yaml'", dvc 3 here; treeverse/dvc#6676). Only a comment in params.yaml
    says every entry must list every section. Careless edit: a new dataset written as the docs say,
    ckplus: {input_size: 96, crop: {detector: none}}: every test passes, hsnet and the Kubeflow
    pipeline take it, and `dvc repro` refuses as soon as ckplus is in datasets_to_run."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    listed = {p for stage in _dvc_stages().values() for p in stage["do"].get("params", []) if isinstance(p, str)}
    for name, entry in params["datasets"].items():
        for key in sorted(listed):
            node = params
            try:
                for part in key.replace("${item}", name).split("."):
                    node = node[part]
            except (KeyError, TypeError):
                pytest.fail(f"params.yaml: datasets.{name} has no {key.replace('${item}', name)}: dvc repro "
                            f"refuses every stage that lists it once {name} is in datasets_to_run")
