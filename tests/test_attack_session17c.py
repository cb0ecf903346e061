"""Attack session 17c: README.md and docs/*.md, read and followed by an outsider, against what the
software does after the changes since 2026-11-29 (not repeating tests/test_attack_session13_docs.py).

Each test quotes the documentation (parsed from the file: once the docs no longer say it, the test
skips) and runs the software the docs describe. Each fails on the code it was written against and
passes once the code or the docs agree.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from doc_claims import claimed

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
SECURITY = ROOT / "docs" / "security.md"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
PERFORMANCE = ROOT / "docs" / "performance.md"


@pytest.fixture(scope="module")
def tiny_manifest(tiny_sample, tmp_path_factory) -> Path:
    from hsnet.data.datasets import import_dataset

    out = tmp_path_factory.mktemp("interim") / "manifest.csv"
    import_dataset("sample", tiny_sample, out)
    return out


# --- README "Data steps", hsnet validate: the tolerated broken files are each named -----------------

def test_validate_names_each_tolerated_broken_file_in_the_reports_warnings(tiny_sample, tiny_manifest,
                                                                          tmp_path, monkeypatch):
    """README.md "Data steps", `hsnet validate`: "every file decodes fully (a share
    `--max-bad-fraction`, 0.001 by default, may not: each is named in the report's warnings and crop
    leaves it out as unreadable, ...)"; `hsnet validate --help`: "share of images that may not decode
    and still pass, each named in the report". The warning's names stop at five
    (hsnet/data/validate.py: ``idx[:5]``): at FERG-DB's scale 0.001 lets 55 files through, 50 of them
    named nowhere in summary.json (crop_report.json lists them, but only after the crop ran)."""
    import shutil

    from hsnet.data.validate import validate
    from hsnet.params import ValidateParams

    claimed("may not: each is named in the report's warnings and crop leaves it out as unreadable", README)
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    root = tmp_path / "raw"
    shutil.copytree(tiny_sample, root)
    rows = [line.split(",")[0] for line in tiny_manifest.read_text().splitlines()[1:]]
    broken = sorted(rows)[::6][:7]  # 7 of 42, one or two per class, none the only one of its class in train
    for rel in broken:
        (root / rel).write_bytes((root / rel).read_bytes()[:200])  # a truncated PNG
    summary = validate(tiny_manifest, root, "sample", tmp_path / "report",
                       ValidateParams(max_bad_fraction=0.25), workers=1, use_cache=False)
    named = " ".join(" ".join(w["examples"]) for w in summary["warnings"])
    unnamed = [rel for rel in broken if rel not in named]
    assert not unnamed, f"tolerated broken files named nowhere in the report's warnings: {unnamed}"


# --- README "On the cluster": --dry-run, "the manifest it would roll out", before the first deploy ----

def _kubeconfig(tmp_path, monkeypatch, url):
    cfg = tmp_path / "kubeconfig"
    cfg.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": url}}],
        "users": [{"name": "fake", "user": {"token": "not-a-secret"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "fake"}}]}))
    monkeypatch.setenv("KUBECONFIG", str(cfg))


def test_dry_run_before_the_first_deploy_shows_the_manifest_the_first_deploy_creates(local_mlflow, tmp_path,
                                                                                     monkeypatch, capsys):
    """README.md "On the cluster", the commands in order:
    `hsnet promote --name hsnet-rafdb --deploy --namespace models --dry-run   # the manifest it would roll out`
    then `hsnet promote --name hsnet-rafdb --deploy --namespace models  # the first time: creates it,
    serving production`, and "The first `--deploy` creates the InferenceService from the template with
    production's version (`models:/NAME/VERSION`) and all the traffic." The dry run never looks at the
    cluster (hsnet/deploy.py dry_run: ``render(..., canary_percent=canary_percent)``): before the
    first deploy it prints `canaryTrafficPercent: 10` and "would serve ... with 10% of the traffic",
    where the deploy it previews creates the InferenceService with no canary share (all traffic). An
    operator checking the manifest before the first rollout is shown one that isn't rolled out."""
    import mlflow
    import yaml

    from hsnet import deploy
    from hsnet.cli import main

    claimed("--dry-run # the manifest it would roll out", README)
    claimed("The first `--deploy` creates the InferenceService from the template with production's version "
            "(`models:/NAME/VERSION`) and all the traffic", README)
    monkeypatch.syspath_prepend(str(ROOT / "tests" / "serve"))
    from fake_kube import FakeKube

    name = deploy.load_template()["metadata"]["name"]  # hsnet-rafdb, README's
    mlflow.set_tracking_uri(local_mlflow)
    client = mlflow.MlflowClient()
    client.create_registered_model(name)
    v = client.create_model_version(name, source=str(tmp_path / "model"))
    client.set_registered_model_alias(name, "candidate", v.version)

    fake = FakeKube()
    try:
        _kubeconfig(tmp_path, monkeypatch, fake.url)
        assert main(["promote", "--name", name, "--deploy", "--namespace", "models", "--dry-run"]) in (0, None)
        shown = capsys.readouterr().out
        made = deploy.rollout(f"models:/{name}/{v.version}", name=name, namespace="models")  # the first --deploy
        created = fake.objects[("models", name)]
    finally:
        fake.stop()
    assert made["action"] == "created"
    manifest = yaml.safe_load(shown.split("\n", 1)[1])
    assert manifest["spec"]["predictor"].get("canaryTrafficPercent") == \
        created["spec"]["predictor"].get("canaryTrafficPercent"), (
        f"--dry-run before the first deploy: {shown.splitlines()[0]!r}, canaryTrafficPercent "
        f"{manifest['spec']['predictor'].get('canaryTrafficPercent')}; the first deploy created it with "
        f"{created['spec']['predictor'].get('canaryTrafficPercent')} (all traffic)")


# --- every `hsnet VERB ...` the docs name is a verb hsnet has --------------------------------------

def _verbs(parser):
    import argparse

    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


@pytest.mark.parametrize("doc", [README, ARCHITECTURE, SECURITY, PERFORMANCE, ROOT / "docs" / "results.md",
                                 ROOT / "docs" / "paper-notes.md"], ids=lambda p: p.name)
def test_every_hsnet_command_in_the_docs_is_a_verb_hsnet_has(doc):
    """docs/architecture.md, "Where state lives": "(`flock` on the folder: a second `hsnet train`, or a
    second `hsnet data crop`, into it is refused ...)". There is no `hsnet data crop`: crop is the
    top-level `hsnet crop` (`hsnet data` has import, sample, fetch); `hsnet data crop --help` is an
    argparse error. Checked for every backticked `hsnet ...` command in README.md and docs/*.md."""
    from hsnet.cli import build_parser

    parser = build_parser()
    wrong = []
    for m in re.finditer(r"`hsnet((?: [a-z][a-z-]*)+)", doc.read_text(encoding="utf-8")):
        cur, path = parser, []
        for word in m.group(1).split():
            verbs = _verbs(cur)
            if not verbs:
                break
            if word not in verbs:
                wrong.append(f"`hsnet {' '.join(path + [word])}` (hsnet {' '.join(path)} has {sorted(verbs)})")
                break
            cur, path = verbs[word], path + [word]
    assert not wrong, f"{doc.name} names commands hsnet doesn't have: {wrong}"


# --- docs/security.md, "Data steps": data fetch from a folder and links leading out of it ------------

def test_data_fetch_of_a_folder_copies_nothing_from_outside_it_through_links(tmp_path):
    """docs/security.md, "Data steps": the raw data, "a local folder", is "written by whoever can
    upload there ... None of it is trusted: ... names that lead out of ROOT through a symbolic link
    that exists are refused"; its table, `data fetch` (DVC, folder): "after `dvc get`, every entry
    under `--out` is a regular file or folder and no link leads out of it (else all of it is
    removed); a folder copy copies regular files only". A folder copy
    (hsnet/data/fetch.py `_fetch`: ``shutil.copytree(source, out, ..., copy_function=_copy_regular)``,
    symlinks=False) follows every link: a `photo.png` linking to a file outside the source (in a pod:
    /var/run/secrets/kubernetes.io/serviceaccount/token) and a folder linking to one outside are
    copied as their targets' content into --out, which the Kubeflow fetch step uploads as its
    artifact. `_check_tree` then sees no link (copytree dereferenced them), so nothing is refused."""
    from hsnet.data.fetch import fetch
    from hsnet.errors import HSNetError

    claimed("a folder copy copies regular files only", SECURITY)
    outside = tmp_path / "outside"
    (outside / "dir").mkdir(parents=True)
    (outside / "token").write_text("the pod's secret")
    (outside / "dir" / "key.png").write_text("another secret")
    source = tmp_path / "raw"
    (source / "aia" / "aia_anger").mkdir(parents=True)
    (source / "aia" / "aia_anger" / "aia_anger_1.png").write_bytes(b"\x89PNG not really")
    (source / "aia" / "aia_anger" / "aia_anger_2.png").symlink_to(outside / "token")
    (source / "linked").symlink_to(outside / "dir")
    out = tmp_path / "out"
    try:
        fetch(str(source), out, progress=False)
    except HSNetError:
        pass  # refused by name: what the DVC branch does with a link leading out
    copied = [p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()] if out.exists() else []
    leaked = [rel for rel in copied if "secret" in (out / rel).read_text(errors="replace")]
    assert not leaked, f"fetch --source FOLDER copied files from outside the folder through links: {leaked}"


# --- docs/security.md, "Data steps", validate: a row with fewer fields than the header ---------------

def test_validate_refuses_a_manifest_row_with_fewer_fields_than_the_header_by_line(tiny_sample, tiny_manifest,
                                                                                 tmp_path, monkeypatch):
    """docs/security.md, "Data steps", `validate` checks: "the manifest is UTF-8 CSV with as many
    fields per row as the header (else an error naming the file and line)". Only rows with *more*
    fields are refused (hsnet/data/manifest.py: ``csv.DictReader(f, restval="")`` then
    ``if None in row``); a row cut short (a hand edit, a truncated line) is padded with empty values
    and read as if whole: here one row loses its last field (`subject`) and validate passes, and crop
    (which trusts "nothing, validated or not") cuts it. The claim is an error naming the line."""
    from hsnet.data.validate import validate
    from hsnet.errors import HSNetError

    claimed("the manifest is UTF-8 CSV with as many fields per row as the header (else an error naming "
            "the file and line)", SECURITY)
    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    lines = tiny_manifest.read_text(encoding="utf-8").splitlines()
    lines[3] = lines[3].rsplit(",", 1)[0]  # 4 fields under a 5-column header
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(HSNetError, match=r"line 4"):
        validate(manifest, tiny_sample, "sample", tmp_path / "report", workers=1, use_cache=False)


# --- README "Training and evaluation", MLflow: "the sqlite store mlflow/mlflow.db of the project" ------

def test_the_local_store_is_the_projects_also_from_a_subfolder(tmp_path, monkeypatch):
    """README.md, "Training and evaluation": "`MLFLOW_TRACKING_URI` chooses the server; unset, runs go
    to the sqlite store `mlflow/mlflow.db` of the project"; docs/architecture.md, "Where state
    lives": "MLflow runs and registry | `MLFLOW_TRACKING_URI`, else the project's `mlflow/mlflow.db`".
    hsnet.tracking.project_root() is the current folder (hsnet/tracking.py:115-120), so `hsnet train`
    or `hsnet evaluate` run from a folder of the project (`cd runs/sample && hsnet evaluate ...`)
    silently creates a second, empty store there (tracking_uri(create=True) mkdirs it), and the next
    `hsnet register` from the project's root doesn't find that evaluation run. The project here is
    what DVC and git call one: the folder with `.dvc/`, `.git/` and `dvc.yaml`."""
    from hsnet import tracking

    claimed("unset, runs go to the sqlite store `mlflow/mlflow.db` of the project", README)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    project = tmp_path / "project"
    for d in (".dvc", ".git", "mlflow", "runs/sample"):
        (project / d).mkdir(parents=True)
    (project / "dvc.yaml").write_text("stages: {}\n")
    (project / "mlflow" / "mlflow.db").write_bytes(b"")
    monkeypatch.chdir(project / "runs" / "sample")
    uri = tracking.tracking_uri()
    assert uri == f"sqlite:///{project.resolve() / 'mlflow' / 'mlflow.db'}", (
        f"run from {project}/runs/sample, hsnet records in {uri}, not the project's store")


def test_a_folders_content_version_covers_every_file_fetch_copies(tmp_path):
    """README.md, Kubeflow Pipelines, "Caching follows the data": "The first step, `source-version`,
    is never cached: it lists the source (..., a folder's hashes) without downloading it, and `fetch`
    takes that content version as an input. New data synced to the same prefix gets a new version:
    fetch and everything after it run again." For a folder, hsnet.data.fetch.source_version hashes
    ``root.rglob("*")``, which doesn't enter linked folders, while fetch copies them
    (``shutil.copytree`` follows links): a change of a file under a linked folder keeps the version,
    so Kubeflow reuses the cached fetch, import, ..., train of the old data, and fetch's own check
    after the download ("fails if the data changed meanwhile") can't see it either."""
    from hsnet.data.fetch import fetch, source_version
    from hsnet.errors import HSNetError

    claimed("fetch and everything after it run again", README)
    elsewhere = tmp_path / "elsewhere" / "aia_anger"
    elsewhere.mkdir(parents=True)
    (elsewhere / "aia_anger_1.png").write_bytes(b"old photo")
    source = tmp_path / "raw"
    (source / "aia").mkdir(parents=True)
    (source / "aia" / "aia_anger").symlink_to(elsewhere)
    try:
        before = source_version(str(source))
        fetched = fetch(str(source), tmp_path / "out", progress=False)
    except HSNetError:
        return  # a linked folder refused (as a link leading out of the source): nothing cached to go stale
    assert (tmp_path / "out" / "aia" / "aia_anger" / "aia_anger_1.png").read_bytes() == b"old photo", fetched
    (elsewhere / "aia_anger_1.png").write_bytes(b"new photo")
    assert source_version(str(source)) != before, (
        "a file fetch copies changed and the folder's content version stayed the same: the cached "
        "fetch (and every step after it) is reused with the old data")


# --- README "Data steps", hsnet data import: the byte-identical images left out are listed -----------

def test_data_import_lists_every_duplicate_it_leaves_out(tmp_path, capsys, caplog, monkeypatch):
    """README.md "Data steps", `hsnet data import`: "Byte-identical images are left out and listed
    (`duplicates`): of copies with one label the first is kept, of copies with different labels none
    (KDEF ships one black placeholder under four expressions' names, ...)". Nothing lists them:
    import writes only the manifest (the Kubeflow step keeps nothing else either), the CLI prints a
    count ("N left out as duplicates") and one warning of examples ("e.g. ...", hsnet/data/datasets.py
    ``duplicates[:3]``, each example naming a few files; the summary's ``duplicate_examples`` five).
    Here one photo copied under seven expressions' names is left out seven times and three of the
    seven are named nowhere: a user can't tell which photos the dataset lost."""
    import logging
    import shutil

    monkeypatch.syspath_prepend(str(ROOT / "tests"))
    from crafted import ferg_tree

    from hsnet.cli import main
    from hsnet.data.datasets import FERG_CLASSES

    claimed("Byte-identical images are left out and listed (`duplicates`)", README)
    root = ferg_tree(tmp_path / "ferg", per_class=3)
    placeholder = root / "aia" / "aia_anger" / "aia_anger_1.png"
    copies = []
    for emotion in FERG_CLASSES[1:]:
        target = root / "aia" / f"aia_{emotion}" / f"aia_{emotion}_1.png"
        shutil.copyfile(placeholder, target)
        copies.append(target.relative_to(root).as_posix())
    copies.append(placeholder.relative_to(root).as_posix())
    caplog.set_level(logging.INFO)
    assert main(["data", "import", "--dataset", "ferg", "--root", str(root), "--out",
                 str(tmp_path / "manifest.csv")]) in (0, None)
    shown = capsys.readouterr()
    said = shown.out + shown.err + caplog.text
    assert f"{len(copies)} left out as duplicates" in said, said[-500:]
    unnamed = [c for c in copies if c not in said]
    assert not unnamed, f"left out as duplicates and named nowhere: {unnamed}"


def test_reproduce_datasets_that_could_not_run_is_not_a_success(tmp_path, monkeypatch, capsys):
    """`hsnet reproduce datasets` outside a DVC project (or without a dataset's raw data) ran
    nothing and exited 0 ("0 ran ... 1 missing"), where `reproduce ablation` exits 2 for the same
    cause: a script or CI job chaining it went on as if the table's runs existed."""
    from hsnet.cli import main

    monkeypatch.chdir(tmp_path)  # no dvc.yaml, no params.yaml
    rc = main(["reproduce", "datasets", "--datasets", "rafd"])
    out = capsys.readouterr().out
    assert rc != 0 and "0 ran" in out and "1 missing" in out, (rc, out)


def test_promote_deploy_without_a_cluster_is_refused_before_the_registry_moves(local_mlflow, tmp_path,
                                                                                 monkeypatch, capsys):
    """`hsnet promote --deploy` with no Kubernetes configuration moved `production` in the registry,
    then failed ("no Kubernetes configuration ... not set.."), without saying the registry had
    moved. Now it is refused before anything moves, in one clean sentence."""
    import mlflow

    from hsnet.cli import main

    mlflow.set_tracking_uri(local_mlflow)
    client = mlflow.MlflowClient()
    client.create_registered_model("hsnet-nocluster")
    v = client.create_model_version("hsnet-nocluster", source=str(tmp_path / "model"))
    client.set_registered_model_alias("hsnet-nocluster", "candidate", v.version)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert main(["promote", "--name", "hsnet-nocluster", "--deploy", "--force"]) == 2
    (said,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("hsnet promote: error:")]
    assert "no Kubernetes configuration" in said and ".." not in said, said
    assert "production" not in client.get_registered_model("hsnet-nocluster").aliases
