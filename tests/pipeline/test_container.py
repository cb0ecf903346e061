"""What can be checked about the image without a Docker engine: one image for every step,
a multi-stage build that installs the package, a non-root user, a small build context."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

import components
from components import IMAGE, SLIM_IMAGE

ROOT = Path(__file__).resolve().parents[2]


def _stages(dockerfile: str) -> list[list[str]]:
    lines, stages = [], []
    for raw in re.sub(r"\\\n", " ", dockerfile).splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
        lines.append(line)
    return stages


def test_every_component_runs_in_the_project_image():
    for name in components.__all__:
        if not name.islower():  # IMAGE, SLIM_IMAGE
            continue
        comp = getattr(components, name)
        container = comp.component_spec.implementation.container
        # the torch-free steps run in the slim image (the Dockerfile's slim target), the rest in IMAGE
        torch_free = name in ("source_version", "fetch_raw", "import_data", "validate_data")
        assert container.image == (SLIM_IMAGE if torch_free else IMAGE), name
        assert "pip install" not in " ".join(container.command or []), f"{name} installs packages at run time"


def test_dockerfile_multi_stage_installs_package_non_root():
    stages = _stages((ROOT / "Dockerfile").read_text())
    assert len(stages) >= 2, "expected a build stage and a runtime stage"
    build, final = stages[0], stages[-1]
    assert any(re.search(r"pip(?:\.sh)? install .*-c requirements/constraints\.txt .*\"\.\[all", s) for s in build)
    assert any(s.startswith("COPY --from=build /opt/venv") for s in final)
    users = [s.split()[1] for s in final if s.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "the runtime stage must end as a non-root user"
    assert not any("build-essential" in s for s in final), "no build toolchain in the runtime image"
    # ... but the C compiler Triton needs at run time to build its kernel launchers: without it
    # train.compile's CUDA graphs (the GPU default) can't compile and training falls back to eager
    assert any(re.search(r"apt-get install .*\bgcc\b.*\blibc6-dev\b", s) for s in final)
    assert any("MTCNN" in s for s in final), "the image checks that the MTCNN weights load offline"


def test_build_context_is_small():
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert ignore[[i for i, l in enumerate(ignore) if l and not l.startswith("#")][0]] == "*", "allow-list context"
    allowed = {l[1:].rstrip("/") for l in ignore if l.startswith("!")}
    assert {"hsnet", "pyproject.toml", "requirements/constraints.txt"} <= allowed
    assert not allowed & {".venv", "data", "runs", "mlflow", ".git", "tests"}


def test_mlflow_manifest_uses_the_image_and_no_inline_credentials():
    docs = list(yaml.safe_load_all((ROOT / "mlflow" / "k8s" / "mlflow.yaml").read_text()))
    kinds = {d["kind"]: d for d in docs}
    assert {"Deployment", "Service", "ConfigMap"} <= set(kinds)
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = pod["containers"][0]
    # the slim server image of mlflow/Dockerfile, tagged with the MLflow version the clients pin
    pins = dict(line.split("==") for line in (ROOT / "requirements" / "constraints.txt").read_text().splitlines()
                if "==" in line and not line.startswith("#"))
    assert container["image"] == f"ghcr.io/hsnet-pipeline/mlflow-server:{pins['mlflow']}"
    assert "ghcr.io/hsnet-pipeline/mlflow-server:" + pins["mlflow"] in (ROOT / "mlflow" / "Dockerfile").read_text()
    assert {"secretRef": {"name": "mlflow-s3"}} in container["envFrom"]
    assert not any(k.endswith(("SECRET_ACCESS_KEY", "PASSWORD")) for k in kinds["ConfigMap"]["data"])


def test_every_dependency_the_images_install_is_pinned():
    """The images install `.[all,server]` with -c constraints.txt (mlflow/Dockerfile: mlflow, boto3
    and the server extra's psycopg2-binary): a dependency missing from it would float to whatever
    PyPI has on the day of the build."""
    import tomllib

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pinned = {canonicalize_name(line.split("==")[0])
              for line in (ROOT / "requirements" / "constraints.txt").read_text().splitlines()
              if "==" in line and not line.startswith("#")}
    extras = project["optional-dependencies"]
    wanted = list(project["dependencies"]) + [r for name in ("data", "track", "pipeline", "server", "test")
                                              for r in extras[name]]
    names = {canonicalize_name(Requirement(r).name) for r in wanted} - {"hsnet"}
    assert names - pinned == set(), "not in requirements/constraints.txt: add them to the venv and run make lock"
    # make test's venv has them all, so that make lock (pip freeze of that venv) keeps them pinned
    assert {"data", "track", "pipeline", "server"} <= set(Requirement(extras["all"][0]).extras)
