"""Attack, session 21c: today's changes, each a claim, tried against what users' installs and
checkouts really hold.

Each test fails on the code as it stands and passes once the defect its docstring names is fixed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _editable_site(tmp_path: Path, dist: str, module: str, version: str) -> Path:
    """A site folder holding ``dist`` ``version`` installed in editable mode as PEP 660 backends
    other than setuptools write it (hatchling's, meson-python's, scikit-build-core's): a .dist-info
    without top_level.txt whose RECORD lists a .pth pointing at the source checkout, not the
    module's files. ``module`` imports from that checkout."""
    src = tmp_path / "checkout" / "src"
    (src / module).mkdir(parents=True)
    (src / module / "__init__.py").write_text(f"__version__ = {version!r}\n")
    site = tmp_path / "site"
    info = site / f"{dist}-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n")
    (info / "WHEEL").write_text("Wheel-Version: 1.0\nGenerator: hatchling\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
    (info / "direct_url.json").write_text(json.dumps({"url": (tmp_path / "checkout").as_uri(),
                                                      "dir_info": {"editable": True}}))
    pth = f"_{dist}.pth"
    (site / pth).write_text(f"{src}\n")
    (info / "RECORD").write_text(f"{pth},,\n{info.name}/METADATA,,\n{info.name}/WHEEL,,\n"
                                 f"{info.name}/direct_url.json,,\n{info.name}/RECORD,,\n")
    return site


def test_library_versions_sees_a_library_installed_in_editable_mode(tmp_path):
    """hsnet/sources.py ``library_versions``: "The installed versions of what provides the
    top-level imports ``modules`` ... by distribution: what a cached result depends on besides
    hsnet's code ... A module that nothing installed provides is ``{module: "none"}``."

    An editable install (``pip install -e .`` of numpy, torch or Pillow built from source: numpy's
    own development setup with meson-python; or any hatchling/scikit-build-core project) is an
    installed distribution that provides the module, but its RECORD lists a ``.pth``, not the
    module's files, and it has no top_level.txt: ``importlib.metadata.packages_distributions()``
    maps the module to nothing, and ``library_versions`` says ``"none"``. Before today's change
    (``metadata.version(name)``) the same install reported its version; now the crop, tensor and
    validation caches are keyed by a constant ``"none"``: after rebuilding the library at a new
    version, cached crops and decoded splits made by the old one are reused.

    Expected: the editable distribution and its version (``{"fakelib": "2.0"}``), as for a
    regular install of the same distribution."""
    site = _editable_site(tmp_path, "fakelib", "fakelib", "2.0")
    code = ("import json, site, sys; site.addsitedir(sys.argv[1]); import fakelib; "
            "from hsnet.sources import library_versions; "
            "print(json.dumps([fakelib.__file__, library_versions(('fakelib',))]))")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code, str(site)], capture_output=True, text=True, env=env,
                         timeout=60, check=True)
    where, found = json.loads(out.stdout.strip().splitlines()[-1])
    assert where.startswith(str(tmp_path / "checkout")), where  # the module imports, from the editable checkout
    assert found == {"fakelib": "2.0"}, found
