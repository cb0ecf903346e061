"""hsnet.sources: the code a step runs, read from its imports (a checkpoint's code_version, the crop
record's reuse key, dvc.yaml's deps)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from hsnet import sources

HERE = Path(sources.__file__).resolve().parent


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root / "hsnet"


def test_the_closure_follows_every_form_of_import_and_nothing_else(tmp_path):
    pkg = _write(tmp_path, {
        "hsnet/__init__.py": "",
        "hsnet/a.py": ("import os\nimport torch\nimport hsnet.sub.c\nfrom hsnet.sub import d as dd\n"
                       "def later():\n    from . import b\n"),
        "hsnet/b.py": "x = 1\n",
        "hsnet/sub/__init__.py": "",
        "hsnet/sub/c.py": "from ..e import x\n",
        "hsnet/sub/d.py": "import numpy\nfrom . import missing_name\n",
        "hsnet/e.py": "x = 2\nimport hsnet.a\n",  # a cycle back to a
        "hsnet/unrelated.py": "import hsnet.a\n",  # imports a, but a doesn't import it
        "hsnetx/f.py": "",  # a package whose name starts the same
    })
    (pkg / "a.py").write_text((pkg / "a.py").read_text() + "import hsnetx.f\n")
    assert sources.closure("hsnet.a", pkg) == [
        "hsnet/__init__.py", "hsnet/a.py", "hsnet/b.py", "hsnet/e.py", "hsnet/sub/__init__.py",
        "hsnet/sub/c.py", "hsnet/sub/d.py"]
    assert sources.closure("hsnet.b", pkg) == ["hsnet/b.py"]
    with pytest.raises(ValueError, match="no module hsnet.nothing"):
        sources.closure("hsnet.nothing", pkg)


def test_training_runs_the_model_and_not_the_server():
    train = sources.closure("hsnet.train")
    assert {"hsnet/model/dib.py", "hsnet/model/fgal.py", "hsnet/model/ktl.py", "hsnet/params.py",
            "hsnet/step.py"} <= set(train)
    assert not {"hsnet/serve.py", "hsnet/cli.py", "hsnet/registry.py", "hsnet/deploy.py",
                "hsnet/predict.py", "hsnet/data/crop.py"} & set(train)
    crop = sources.closure("hsnet.data.crop")
    assert "hsnet/data/mtcnn.py" in crop and not any(f.startswith("hsnet/model/") for f in crop)


def test_the_code_version_is_the_same_elsewhere_and_changes_only_with_the_code_the_step_runs(tmp_path):
    """A Kubeflow retry lands on another node, where the package lies elsewhere: the same sources give
    the same version (or the retry would train from the start). An edit to code training runs gives
    another (or dvc repro after it would resume the old code's run); an edit to serve.py, a new module
    nothing imports, bytecode don't (a killed run resumes)."""
    one, two = tmp_path / "node1" / "hsnet", tmp_path / "elsewhere" / "deeper" / "hsnet"
    for copy in (one, two):
        shutil.copytree(HERE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    first = sources.code_version("hsnet.train", one)
    assert first == sources.code_version("hsnet.train", two) == sources.code_version("hsnet.train")
    assert first != sources.code_version("hsnet.evaluate", one)
    (two / "__pycache__").mkdir(exist_ok=True)
    (two / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"\0" * 10)
    (two / "serve.py").write_text((two / "serve.py").read_text() + "\n# an edit\n")
    (two / "extra.py").write_text("x = 1\n")
    assert sources.code_version("hsnet.train", two) == first
    versions = {first}
    (two / "model" / "dib.py").write_text((two / "model" / "dib.py").read_text() + "\n# an edit\n")
    versions.add(sources.code_version("hsnet.train", two))
    (two / "train.py").write_text((two / "train.py").read_text() + "\nfrom . import extra\n")
    versions.add(sources.code_version("hsnet.train", two))
    (two / "extra.py").write_text("x = 2\n")
    versions.add(sources.code_version("hsnet.train", two))
    assert len(versions) == 4
