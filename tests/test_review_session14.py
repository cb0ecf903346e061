"""Review session 14b: findings that can be checked as tests (each fails on the tree reviewed, 63c258a).

Rule 1 (one behaviour for the three callers) and rule 2 (one home per fact). Cheap: no training,
no registry, no cluster: the step functions the callers share are replaced by recorders.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CODE_DIRS = ("hsnet", "components", "pipelines")


def _code_files():
    for d in CODE_DIRS:
        yield from sorted((ROOT / d).rglob("*.py"))


def _string_constants(tree):
    """String constants of a module that are not docstrings."""
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            yield node


# --- rule 1: the same step behaves the same whichever caller runs it ----------------------------

def test_promote_deploy_of_a_version_already_in_production_is_the_same_from_cli_and_kubeflow(monkeypatch):
    """`hsnet promote --version 3 --deploy` when version 3 is already production rolls the
    InferenceService to it (hsnet.deploy.after_promotion: "e.g. a canary to 100%", as the CLI's
    --canary-percent help tells users to do); the Kubeflow promote_model component, given the same
    inputs, deploys only when r["promoted"] (components/promote.py:23): re-running the pipeline
    with canary_percent=100 never finishes a canary. The deploy decision belongs in one hsnet
    function both call."""
    import hsnet.deploy
    import hsnet.registry
    from components.promote import promote_model
    from hsnet.cli import main

    already = {"name": "hsnet-x", "candidate": 3, "metric": "accuracy", "forced": False, "previous": 3,
               "promoted": False, "reason": "version 3 is already production"}
    monkeypatch.setattr(hsnet.registry, "promote", lambda *a, **k: dict(already))
    monkeypatch.setattr(hsnet.registry, "registered_version", lambda uri: ("hsnet-x", "3"))
    monkeypatch.setattr("components.convert.start_step", lambda *a, **k: None)
    calls = {"cli": [], "kfp": []}
    caller = "cli"

    def rollout(model_uri, *, name, namespace=None, canary_percent=10):
        calls[caller].append((model_uri, name, canary_percent))
        return {"action": "updated", "name": name, "namespace": namespace or "ns", "model": model_uri,
                "canary": None}

    monkeypatch.setattr(hsnet.deploy, "rollout", rollout)
    monkeypatch.setattr(hsnet.deploy, "require_cluster", lambda: None)  # the cluster is the fake rollout
    monkeypatch.setattr(hsnet.deploy, "check_no_other_canary", lambda *a, **k: None)  # (no canary running there)
    assert main(["promote", "--name", "hsnet-x", "--version", "3", "--deploy", "--canary-percent", "100",
                 "--namespace", "ns"]) == 0
    caller = "kfp"
    promote_model.python_func(model_uri="models:/hsnet-x/3", mlflow_tracking_uri="", metric="accuracy",
                              min_delta=0.0, deploy=True, canary_percent=100, namespace="ns")
    assert calls["cli"] == [("models:/hsnet-x/3", "hsnet-x", 100)]
    assert calls["kfp"] == calls["cli"], "the Kubeflow promote step deploys differently from hsnet promote"


def test_register_skip_in_experiments_is_decided_by_the_step_not_the_cli():
    """Whether `hsnet register` registers at all (DVC_EXP_NAME, HSNET_REGISTER_EXPERIMENTS) is
    decided in hsnet/cli.py:128-137, and register.json's "not registered" record is written there:
    step logic in the CLI, which no other caller can reach. It belongs in hsnet.registry."""
    cli = (ROOT / "hsnet/cli.py").read_text()
    registry = (ROOT / "hsnet/registry.py").read_text()
    assert "HSNET_REGISTER_EXPERIMENTS" not in cli.split("def _add_registry")[0], \
        "the experiment-skip decision is made in hsnet/cli.py's _register"
    assert "DVC_EXP_NAME" in registry


def test_components_use_what_the_step_returns_not_files_it_wrote():
    """validate() returns its summary (the CLI prints from it) but components/validate.py re-reads
    report/summary.json and globs GX's data_docs/validations layout; train() returns its summary
    but components/train.py writes its own train_summary.json (with "checkpoint": "best.pt" where
    hsnet train writes the full path): a second writer of the step's files."""
    validate_src = (ROOT / "components/validate.py").read_text()
    train_src = (ROOT / "components/train.py").read_text()
    assert '"summary.json"' not in validate_src, "components/validate.py:29 re-reads the summary validate() returned"
    assert "train_summary.json" not in train_src, "components/train.py:49 writes its own train_summary.json"


# --- rule 2: one home per fact ---------------------------------------------------------------

# a step's output file names: each a constant in one module (hsnet.files)
FILE_NAMES = ("best.pt", "manifest.csv", "metrics.json", "history.json", "train_summary.json",
              "training_curves.png", "comparison.md", "confusion_matrix.png", "summary.json")


@pytest.mark.parametrize("name", FILE_NAMES)
def test_file_name_written_in_one_module(name):
    homes = []
    for path in _code_files():
        tree = ast.parse(path.read_text())
        for node in _string_constants(tree):
            if node.value == name or node.value.endswith("/" + name):
                homes.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    modules = sorted({h.split(":")[0] for h in homes})
    assert len(modules) <= 1, f"{name!r} is written in {len(modules)} modules: {homes}"


def _literal_defaults(param: str):
    """Literal defaults of ``param`` in function signatures and argparse flags (--param-name)."""
    flag = "--" + param.replace("_", "-")
    found = []
    for path in _code_files():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = node.args.args + node.args.kwonlyargs
                defaults = ([None] * (len(node.args.args) - len(node.args.defaults)) + list(node.args.defaults)
                            + list(node.args.kw_defaults))
                for a, d in zip(args, defaults):
                    if a.arg == param and isinstance(d, ast.Constant) and d.value is not None:
                        found.append((f"{path.relative_to(ROOT)}:{d.lineno}", d.value))
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "add_argument" and node.args
                    and isinstance(node.args[0], ast.Constant) and node.args[0].value == flag):
                for kw in node.keywords:
                    if kw.arg == "default" and isinstance(kw.value, ast.Constant) and kw.value.value is not None:
                        found.append((f"{path.relative_to(ROOT)}:{kw.value.lineno}", kw.value.value))
    return found


@pytest.mark.parametrize("param", ["min_prob", "min_face_size", "canary_percent", "port", "checkpoint_every_s"])
def test_default_has_one_home(param):
    """e.g. min_prob=0.9: hsnet/cli.py:414, :426, hsnet/predict.py:251, :352, hsnet/serve.py:113, :391."""
    found = _literal_defaults(param)
    assert len(found) <= 1, f"default of {param} written {len(found)} times: {found}"


def test_durable_interval_is_imported_not_copied():
    """components/train.py:10 and components/train_group.py:10 copy durable.INTERVAL_S (300.0) as
    their default: a change to the interval leaves Kubeflow at 5 minutes. (A component's default
    must be a literal: use a sentinel, e.g. -1 = durable.INTERVAL_S, resolved in the body, as seed=-1 is.)"""
    from hsnet.durable import INTERVAL_S

    copies = [f"{p.relative_to(ROOT)}:{n.lineno}" for p in sorted((ROOT / "components").glob("*.py"))
              for n in ast.walk(ast.parse(p.read_text()))
              if isinstance(n, ast.Constant) and type(n.value) is float and n.value == INTERVAL_S]
    assert not copies, f"durable.INTERVAL_S copied at {copies}"


@pytest.mark.parametrize("text", [
    "http://mlflow.kubeflow.svc.cluster.local:5000",  # hsnet_pipeline.py:182, ablation_pipeline.py:77
    "metadata.labels['pipeline/runid']",  # hsnet_pipeline.py:168, ablation_pipeline.py:95
    "s3://hsnet-data/",  # hsnet_pipeline.py:48, :178, ablation_pipeline.py:73, submit.py:84
    '"great_expectations", "botocore", "urllib3", "matplotlib", "PIL"',  # cli.py:455, components/convert.py:39
    'f"models:/{',  # models:/NAME/VERSION built by hand in 8 places (registry.py has no helper)
])
def test_text_in_one_place(text):
    places = [f"{p.relative_to(ROOT)}:{i}" for p in _code_files()
              for i, line in enumerate(p.read_text().splitlines(), 1) if text in line and not line.lstrip().startswith("#")]
    assert len(places) <= 1, f"{text!r} written {len(places)} times: {places}"


def test_promote_component_does_not_parse_model_uris():
    """components/promote.py:17 splits models:/NAME/VERSION by hand (an alias URI,
    models:/NAME@candidate, becomes name '' and version 'NAME@candidate'); hsnet.tracking.model_version
    is the project's parser."""
    assert 'removeprefix("models:/")' not in (ROOT / "components/promote.py").read_text()


def test_alias_names_come_from_registry_constants():
    """registry.CANDIDATE/PRODUCTION/PREVIOUS exist, but hsnet/deploy.py:275 picks the alias to deploy
    by literal ("previous" / "candidate") and hsnet/summary.py:33 builds '@production' by hand."""
    deploy = (ROOT / "hsnet/deploy.py").read_text()
    summary = (ROOT / "hsnet/summary.py").read_text()
    assert 'alias = "previous"' not in deploy and 'else "candidate"' not in deploy
    assert "@production" not in summary


def test_paper_datasets_default_is_the_paper_list():
    """hsnet reproduce datasets --datasets defaults to the literal "rafd,kdef,ferg,rafdb"
    (hsnet/cli.py:368): hsnet.paper.DATASETS is that list's home."""
    src = (ROOT / "hsnet/cli.py").read_text()
    assert '"rafd,kdef,ferg,rafdb"' not in src


def test_package_version_has_one_home():
    """0.1.0 in pyproject.toml:7 and hsnet/__init__.py:5 (and the serving manifest's image tag):
    pyproject can read it from the package (dynamic = ["version"])."""
    import tomllib

    import hsnet

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"] and "version" in project["project"].get("dynamic", [])
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "hsnet.__version__"}
    from importlib.metadata import version

    assert version("hsnet") == hsnet.__version__  # the installed package's metadata reads it


# --- rule 3: dead code ------------------------------------------------------------------------

@pytest.mark.parametrize("module, name", [
    ("hsnet/pyfunc.py", "decode_image"),  # was a second decoding path beside decode_all, called by nothing
    ("hsnet/data/datasets.py", "_RafdbLine"),
    ("hsnet/paper.py", "CITATION"),
])
def test_no_unreferenced_definitions(module, name):
    """Each of these was defined and used nowhere: gone, or used."""
    own = len(re.findall(rf"\b{name}\b", (ROOT / module).read_text()))
    uses = [p for p in list(_code_files()) + sorted((ROOT / "tests").rglob("*.py"))
            if p.name != Path(__file__).name and re.search(rf"\b{name}\b", p.read_text())
            and str(p.relative_to(ROOT)) != module]
    assert own == 0 or uses or own > 1, f"{module}: {name} is defined and never used"


def test_build_table_uses_its_parameters():
    """hsnet/data/validate.py build_table took classes and min_size and never read them: every
    parameter it takes is read."""
    tree = ast.parse((ROOT / "hsnet/data/validate.py").read_text())
    fn = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "build_table")
    used = {n.id for n in ast.walk(fn) if isinstance(n, ast.Name)}
    params = {a.arg for a in fn.args.args + fn.args.kwonlyargs}
    assert params <= used, f"build_table never reads {sorted(params - used)}"


def test_serve_limit_names_come_from_limits():
    """The four request limits are fields of hsnet.pyfunc.Limits, and listed again by hand at
    hsnet/cli.py:429 (flags), hsnet/deploy.py:48 (Limits.from_env) and hsnet/deploy.py:62 (the
    overlay re-exec's argv): a fifth limit added to Limits gets no flag and is dropped on re-exec.
    dataclasses.fields(Limits) is the list."""
    copies = [f"{p.relative_to(ROOT)}:{n.lineno}" for p in _code_files() if p.name != "pyfunc.py"
              for n in _string_constants(ast.parse(p.read_text())) if n.value == "max_request_pixels"]
    assert not copies, copies
