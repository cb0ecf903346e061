"""Attack session 13b: what README.md and docs/*.md tell a user against what the software does.

Each test quotes the documentation (parsed from the file, so that a fix of the docs is seen) and
runs the software (the CLI in-process, or the module the docs name). Each fails on the code it was
written against (commit e79d8e1) and passes once the code or the docs agree.
"""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import pytest
from doc_claims import claimed, flat
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SECURITY = ROOT / "docs" / "security.md"
PERFORMANCE = ROOT / "docs" / "performance.md"


# --- docs/security.md, "Data steps": every output ... ---------------------------------------------

DATA_STEPS_CLAIM = ("an unwritable `--out`/`--report`/`--annotate` is refused before any work, and the "
                    "`.NAME.*.tmp` files a killed write leaves are removed at the next start of the step "
                    "once they are an hour old")


def test_data_import_removes_the_tmp_file_a_killed_import_left(tiny_sample, tmp_path):
    """docs/security.md:149-152 ("Data steps: fetch, import, validate, crop, ..."): the `.NAME.*.tmp`
    files a killed write leaves are removed at the next start of the step once an hour old.
    validate, crop and predict do (hsnet.io.clean_stale_tmp); `hsnet data import` writes its manifest
    with the same atomic_path but never cleans: a killed import's `.manifest.csv.*.tmp` stays for
    ever beside the manifest (data/interim/<dataset>/)."""
    from hsnet.cli import main

    claimed(DATA_STEPS_CLAIM, SECURITY)
    out = tmp_path / "interim" / "manifest.csv"
    out.parent.mkdir()
    stale = out.parent / ".manifest.csv.k1lled.tmp"  # what atomic_path's mkstemp names it
    stale.write_text("path,label,label_name,split,subject\n")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))

    assert main(["data", "import", "--dataset", "sample", "--root", str(tiny_sample), "--out", str(out)]) == 0
    assert out.is_file()
    assert not stale.exists(), (f"{stale.name}, two hours old, is still beside the manifest after the next "
                                "`hsnet data import` (docs/security.md: removed at the next start of the step)")


def test_data_import_refuses_an_unwritable_out_by_name(tiny_sample, tmp_path, capsys):
    """docs/security.md:151: "an unwritable `--out` ... is refused before any work". validate, crop,
    fetch and predict call hsnet.io.check_writable first and exit 2 naming the flag; `hsnet data
    import --out` under a regular file reads the whole dataset and then dies in atomic_path with a
    Python traceback (FileExistsError), not a refusal naming --out."""
    from hsnet.cli import main

    claimed(DATA_STEPS_CLAIM, SECURITY)
    blocker = tmp_path / "interim"
    blocker.write_text("a file where the manifest's folder should be\n")
    try:
        rc = main(["data", "import", "--dataset", "sample", "--root", str(tiny_sample),
                   "--out", str(blocker / "manifest.csv")])
    except Exception as exc:  # noqa: BLE001 - what the user sees: a traceback
        pytest.fail(f"hsnet data import --out {blocker}/manifest.csv: traceback {type(exc).__name__}: {exc} "
                    "instead of a refusal naming --out (docs/security.md)")
    assert rc == 2
    assert "--out" in capsys.readouterr().err


# --- the KTL weights' message against the CLI --------------------------------------------------

def test_the_missing_vggface2_weights_message_names_a_flag_hsnet_train_has(tmp_path, monkeypatch):
    """README "VGGFace2 stem weights": "If the weights can't be had, HSNet refuses to build and says
    how to provide them". The message (hsnet.model.ktl.HOW_TO_PROVIDE), printed by `hsnet train`
    (and so by `dvc repro` for every dataset of params.yaml but the sample: model.ktl is on), says
    "set stem_weights (params.yaml: model.stem_weights, CLI: --stem-weights)". `hsnet train` has no
    --stem-weights (argparse: unrecognized arguments); only `hsnet reproduce ablation` has. The
    flag that does it for train is `--set model.stem_weights=...`."""
    from facenet_pytorch.models import inception_resnet_v1 as irv1

    from hsnet.cli import build_parser
    from hsnet.model import ktl

    claimed("HSNet refuses to build and says how to provide them", README)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(*_a, **_k):
        raise OSError("no network")

    monkeypatch.setattr(irv1, "download_url_to_file", offline)
    with pytest.raises(ktl.StemWeightsError) as caught:
        ktl._fetch_vggface2()
    message = str(caught.value)
    train = build_parser()._subparsers._group_actions[0].choices["train"]
    train_flags = {s for a in train._actions for s in a.option_strings}
    said = re.search(r"hsnet train: (--[a-z-]+) (model\.stem_weights)=PATH", message)
    assert said, f"the message says no hsnet train flag for the weights: {message[-300:]}"
    assert said.group(1) in train_flags, (f"the message `hsnet train` prints names {said.group(1)}, which "
                                          f"hsnet train has not: {message[-300:]}")
    from hsnet.params import Params, parse_set

    (tmp_path / "params.yaml").write_text("datasets:\n  rafdb: {}\n")
    chosen = Params.resolve(tmp_path / "params.yaml", "rafdb", parse_set([f"{said.group(2)}=/w/irv1.pt"]))
    assert chosen.model.stem_weights == "/w/irv1.pt"  # what the message tells a user to do works


# --- docs/performance.md: settings the code no longer has ---------------------------------------

def test_performance_md_says_what_a_second_make_pipeline_runs_now():
    """docs/performance.md:318, "The sample pipeline": "A second `make pipeline` with nothing changed:
    14 s, no stage run." dvc.yaml's register stage is `always_changed: true` since the registry
    became state DVC can't see, and README.md:45 says "A second `make pipeline` with nothing changed
    trains nothing: only the register stage runs". The measurement describes a pipeline the code no
    longer has (and the two docs contradict each other)."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    always = [name for name, stage in stages.items() if stage.get("do", stage).get("always_changed")]
    assert always == ["register"]
    assert "only the register stage runs" in flat(README)
    claimed("A second `make pipeline` with nothing changed", PERFORMANCE)
    perf = flat(PERFORMANCE)
    says_no_stage_runs = "no stage run" in perf
    assert not says_no_stage_runs, ("docs/performance.md: a second make pipeline runs 'no stage'; dvc.yaml's "
                                        f"{always} stage is always_changed (it runs at every repro, as README says)")


def test_performance_md_summary_names_the_inferenceservices_memory_limit():
    """docs/performance.md:36 (Summary against the targets, serving under a hostile mix): "peak RSS
    under the cap ... the pod's limit 3 GiB". hsnet/k8s/inferenceservice.yaml's limit is 4Gi
    (raised after 3 GiB was exceeded; performance.md:306 and security.md:108 say 4 GiB)."""
    isvc = next(d for d in yaml.safe_load_all((ROOT / "hsnet/k8s/inferenceservice.yaml").read_text())
                if d and d.get("kind") == "InferenceService")
    container = isvc["spec"]["predictor"]["containers"][0]
    limit = container["resources"]["limits"]["memory"]
    assert limit.endswith("Gi")
    stated = re.findall(r"the pod's limit (\d+(?:\.\d+)?) GiB", flat(PERFORMANCE))
    for gib in stated:
        assert float(gib) == float(limit[:-2]), (f"docs/performance.md: 'the pod's limit {gib} GiB'; "
                                                 f"hsnet/k8s/inferenceservice.yaml: memory limit {limit}")


# --- README "Development": where the GPU session's results go ------------------------------------

STUB_PYTHON = """#!/usr/bin/env bash
# python3's stand-in: a benchmark writes <name>.json into its --out, as benchmarks.common.save does
out=""; prev=""; mod=""
for a in "$@"; do [ "$prev" = "--out" ] && out=$a; [ "$prev" = "-m" ] && mod=$a; prev=$a; done
case "$mod" in benchmarks.*) mkdir -p "$out" && echo '{}' > "$out/${mod#benchmarks.}.json" ;; esac
echo "python3 $*"
"""


def test_gpu_session_writes_its_results_where_the_readme_says(tmp_path):
    """README.md:597-598: "On a GPU machine, `bash benchmarks/gpu_session.sh` runs the CUDA checks and
    GPU benchmarks in one go (results in `benchmarks/results/h100/`; ...)". The script's OUT defaults
    to benchmarks/results itself, where the committed *CPU* figures live (crop.json,
    input_pipeline.json, gpu.json: docs/performance.md sections 2, 3, 6 cite them): run as the README
    says, the GPU session's crop and input_pipeline benchmarks overwrite them. Run here with python3
    and nvidia-smi standing in (STEPS=crop), from a copy of the repository's layout."""
    import shutil
    import subprocess

    text = flat(README)
    m = re.search(r"`bash benchmarks/gpu_session.sh` runs the CUDA checks and GPU benchmarks in one go "
                  r"\(results in `([^`]+)`", text)
    assert m, "README no longer says where gpu_session.sh's results go"
    documented = m.group(1).rstrip("/")

    work, bin_dir = tmp_path / "repo", tmp_path / "bin"
    shutil.copytree(ROOT / "benchmarks" / "results", work / "benchmarks" / "results")
    shutil.copy(ROOT / "benchmarks" / "gpu_session.sh", work / "benchmarks" / "gpu_session.sh")
    (work / "data/processed/sample").mkdir(parents=True)
    committed_cpu = (work / "benchmarks/results/crop.json").read_text()
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(STUB_PYTHON)
    (bin_dir / "nvidia-smi").write_text("#!/usr/bin/env bash\necho 'NVIDIA H100 80GB HBM3, 580.00, 81559 MiB'\n")
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "BRING_BACK", "STEPS", "PYTHON")}
    env.update(PATH=f"{bin_dir}:{os.environ['PATH']}", STEPS="crop", HSNET_CACHE_DIR=str(tmp_path / "cache"))
    run = subprocess.run(["bash", "benchmarks/gpu_session.sh"], capture_output=True, text=True, cwd=work,
                         env=env, timeout=60)
    assert run.returncode == 0, run.stderr
    written = sorted(str(p.relative_to(work)) for p in (work / "benchmarks/results").rglob("crop.json")
                     if not (ROOT / p.relative_to(work)).is_file()
                     or p.read_text() != (ROOT / p.relative_to(work)).read_text())
    assert written, run.stdout
    overwrote = (work / "benchmarks/results/crop.json").read_text() != committed_cpu
    assert all(w.startswith(documented + "/") for w in written), (
        f"README: results in {documented}/; the GPU session wrote {written}"
        + (" (over the committed CPU figures of benchmarks/results/crop.json)" if overwrote else ""))


# --- names the docs give for code -----------------------------------------------------------------

def _top_level_names(path: Path) -> set[str]:
    import ast

    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def _resolves(dotted: str) -> bool:
    """``hsnet.a.b.NAME``: a module file of the package, then a top-level name in it (read, not
    imported: hsnet.serve needs KServe's SDK)."""
    parts = dotted.split(".")
    for i in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:i])
        module = base.with_suffix(".py") if base.with_suffix(".py").is_file() else base / "__init__.py"
        if module.is_file():
            rest = parts[i:]
            return not rest or (len(rest) == 1 and rest[0] in _top_level_names(module)) or \
                (len(rest) == 2 and rest[0] in _top_level_names(module))  # Class.method: the class is enough
    return False


def test_every_hsnet_function_the_docs_name_exists():
    """README.md:367-368: "each Kubeflow component calls the same verb (`hsnet.cli.run`) in the
    project's image". hsnet/cli.py has no `run` (its docstring and docs/architecture.md say the
    components call the step functions directly; components/*.py import hsnet.data..., hsnet.train).
    Checked for every dotted `hsnet.<module>.<name>` in README.md and docs/*.md."""
    named = set()
    for doc in [README, *sorted((ROOT / "docs").glob("*.md"))]:
        for m in re.finditer(r"`(hsnet(?:\.[A-Za-z_][A-Za-z0-9_]*)+)`", doc.read_text(encoding="utf-8")):
            if not m.group(1).endswith(".py"):  # `hsnet.py`: the file hsnet/model/hsnet.py
                named.add((doc.name, m.group(1)))
    assert len(named) > 10, named
    missing = sorted(f"{doc}: {name}" for doc, name in named if not _resolves(name))
    assert not missing, f"named in the docs, not in the code: {missing}"


# --- README "DVC": editing any module a stage runs re-runs it --------------------------------------

def test_every_dvc_stage_depends_on_the_cli_module_its_command_runs():
    """README.md:395: "Editing any module a stage runs (`hsnet/params.py`'s paper defaults included)
    re-runs it". Every stage's cmd is `hsnet VERB ...`, i.e. hsnet.cli:main (pyproject's
    [project.scripts]), and hsnet/cli.py decides what the step computes: it turns the flags into the
    settings (_params: the dataset's section <- flags; _evaluate: whether params.yaml's tta_hflip
    or the checkpoint's applies; _crop: --device cpu, --batch-size 16; _train: --resume auto). No
    stage lists hsnet/cli.py among its deps (tests/pipeline/test_dvc.py walks the imports from
    hsnet/train.py etc., not from the module the command runs), so an edit there re-runs nothing."""
    import tomllib

    claimed("Editing any module a stage runs", README)
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["hsnet"] == "hsnet.cli:main"
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    missing = []
    for name, stage in stages.items():
        do = stage.get("do", stage)
        if do["cmd"].split()[0] == "hsnet":
            deps = [d for d in do.get("deps", []) if isinstance(d, str)]
            if not any(d == "hsnet/cli.py" or "hsnet/cli.py".startswith(d.rstrip("/") + "/") for d in deps):
                missing.append(name)
    assert not missing, (f"dvc.yaml stages {missing} run `hsnet ...` (hsnet/cli.py) but don't depend on "
                         "hsnet/cli.py: editing it re-runs none of them")


# --- README "Serving in production": the commands in order ----------------------------------------

def test_readmes_promote_deploy_rolls_the_inferenceservice_its_first_deploy_made(tmp_path, monkeypatch):
    """README.md "On the cluster" in order: the first `hsnet promote --name hsnet-rafdb --deploy
    --namespace models` creates the InferenceService (a pinned version, all traffic), then `hsnet
    promote ... --deploy --canary-percent 10  # gate, then 10% to the new version`. (It was
    `kubectl apply -n models -f hsnet/k8s/inferenceservice.yaml` first, without --namespace on the
    promotion: the promotion made default/hsnet-rafdb instead; since session 16 the first step is
    the deploy itself, as a template serving the alias can't be canaried against.) Both lines must
    name one namespace, or the canary creates a second InferenceService with all the traffic.
    Run against the fake API server of tests/serve (a context without a namespace, as `kubectl
    config` makes by default)."""
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "serve"))
    from fake_kube import FakeKube

    from hsnet import deploy

    text = README.read_text(encoding="utf-8")
    lines = [(m.group(1), m.group(2).split("#")[0] + " ")
             for m in re.finditer(r"^\s*hsnet promote --name (\S+)( .*)$", text, re.M) if "--deploy" in m.group(2)]
    first = next(((n, r) for n, r in lines if "--dry-run" not in r and "--canary-percent" not in r
                  and "--rollback" not in r), None)
    canary = next(((n, r) for n, r in lines if "--canary-percent 10 " in r), None)
    assert first and canary, f"README no longer shows the first deploy and the canary promotion: {lines}"
    spaces = [re.search(r"--namespace[ =](\S+)", r) for _, r in (first, canary)]
    assert first[0] == canary[0] == deploy.load_template()["metadata"]["name"]
    name = first[0]

    fake = FakeKube()
    try:
        cfg = tmp_path / "kubeconfig"
        cfg.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "fake",
            "clusters": [{"name": "fake", "cluster": {"server": fake.url}}],
            "users": [{"name": "fake", "user": {"token": "not-a-secret"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}]}))
        monkeypatch.setenv("KUBECONFIG", str(cfg))
        made = deploy.rollout(f"models:/{name}/1", name=name, namespace=spaces[0].group(1) if spaces[0] else None)
        deploy.rollout(f"models:/{name}/2", name=name, namespace=spaces[1].group(1) if spaces[1] else None,
                       canary_percent=10)
        objects = dict(fake.objects)
    finally:
        fake.stop()
    assert made["action"] == "created" and list(objects) == [(made["namespace"], name)], (
        f"README's first deploy and its canary promotion made {sorted(objects)}: two InferenceServices")
    isvc = objects[(made["namespace"], name)]
    assert deploy.model_of(isvc) == f"models:/{name}/2"
    assert isvc["spec"]["predictor"].get("canaryTrafficPercent") == 10
