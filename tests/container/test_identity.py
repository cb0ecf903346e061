"""What identifies a build, checked without a Docker engine: the commit hsnet records (MLflow's
git_commit tag) and the image references the pipelines are compiled against."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def other_checkout(tmp_path, monkeypatch):
    """The working directory is some other git repository, with a commit of its own."""
    repo = tmp_path / "elsewhere"
    repo.mkdir()
    _git(repo, "init", "-q")
    (repo / "f").write_text("x")
    _git(repo, "add", "f")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "other")
    monkeypatch.chdir(repo)
    monkeypatch.delenv("HSNET_GIT_COMMIT", raising=False)
    return _git(repo, "rev-parse", "HEAD")


def test_git_commit_is_the_source_checkout_not_the_working_directory(other_checkout):
    from hsnet.tracking import git_commit

    if not (ROOT / ".git").exists():
        pytest.skip("not run from a git checkout")
    expected = _git(ROOT, "rev-parse", "HEAD")
    got = git_commit()
    assert got.removesuffix("-dirty") == expected != other_checkout


def test_git_commit_is_the_image_build_commit(other_checkout, monkeypatch):
    """In the image (no checkout of the source) the build's commit comes from HSNET_GIT_COMMIT,
    also when a step runs inside some other repository."""
    from hsnet.tracking import git_commit

    monkeypatch.setenv("HSNET_GIT_COMMIT", "0123456789abcdef0123456789abcdef01234567")
    assert git_commit() == "0123456789abcdef0123456789abcdef01234567"


def _images(path: Path) -> dict[str, str]:
    pipeline = list(yaml.safe_load_all(path.read_text()))[0]
    return {name: e["container"]["image"] for name, e in pipeline["deploymentSpec"]["executors"].items()}


TORCH_STEPS = ("exec-crop-faces", "exec-train-model", "exec-evaluate-model", "exec-register-model")
DATA_STEPS = ("exec-source-version", "exec-fetch-raw", "exec-import-data", "exec-validate-data")


def test_committed_yaml_names_the_release_tags_data_steps_the_slim_image():
    from hsnet import __version__

    release = f"ghcr.io/hsnet-pipeline/hsnet:{__version__}"
    for name in ("hsnet_pipeline.yaml", "ablation_pipeline.yaml"):
        images = _images(ROOT / "pipelines" / name)
        assert set(images.values()) <= {release, release + "-slim"}, name
        for executor, image in images.items():
            step = executor.rstrip("-0123456789")
            if step in TORCH_STEPS:
                assert image == release, (name, executor)
            if step in DATA_STEPS:
                assert image == release + "-slim", (name, executor)


def test_compile_against_another_image(tmp_path, capsys):
    from hsnet import __version__
    from pipelines.compile import main

    release = f"ghcr.io/hsnet-pipeline/hsnet:{__version__}"
    default = {n: _images(ROOT / "pipelines" / n) for n in ("hsnet_pipeline.yaml", "ablation_pipeline.yaml")}

    def expect(name, image, slim):
        return {e: {release: image, release + "-slim": slim}[i] for e, i in default[name].items()}

    ref = "registry.example/team/hsnet:sha-0123456789ab"
    assert main([str(tmp_path), "--image", ref]) == 0
    for name in default:
        assert _images(tmp_path / name) == expect(name, ref, ref + "-slim")
    # a digest has no tag to derive the slim image's from: it must be named
    digest, slim_digest = (f"registry.example/team/hsnet@sha256:{c * 64}" for c in "ab")
    assert main([str(tmp_path), "--image", digest]) == 2
    assert "give the slim image too" in capsys.readouterr().err
    assert main([str(tmp_path), "--image", digest, "--slim-image", slim_digest]) == 0
    for name in default:
        assert _images(tmp_path / name) == expect(name, digest, slim_digest)


def test_a_release_tag_is_built_only_from_a_clean_checkout(tmp_path):
    """Kubeflow keys a cached step on the image's name, not its digest: `build.sh --release` from a
    checkout whose image files differ from the commit would put the release tag (the one the
    committed pipelines name) on other code, and cached results of the old code would be reused.
    It stops before anything else (no Docker engine needed for the refusal)."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
    for rel in ("tests/container/build.sh", ".dockerignore", "Dockerfile"):  # the script under test, as it is now
        (clone / rel).write_bytes((ROOT / rel).read_bytes())
    _git(clone, "-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qam", "as now", "--allow-empty")
    with open(clone / "hsnet" / "io.py", "a") as f:
        f.write("# an edit not committed\n")
    done = subprocess.run(["bash", "tests/container/build.sh", "--release"], cwd=clone, capture_output=True,
                          text=True, timeout=60, env={"PATH": "/usr/bin:/bin", "PYTHON": "false"})
    assert done.returncode == 2
    assert "--release needs a clean checkout" in done.stderr and "hsnet/io.py" in done.stderr
