"""`dvc plots show` writes a page that works offline: vega, vega-lite and vega-embed inline
(.dvc/plots/offline.html, built by tools/vendor-vega.sh), no script from a CDN."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DVC = str(Path(sys.executable).with_name("dvc"))


def test_plots_page_loads_no_script_from_the_network(tmp_path):
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([DVC, "init", "-q"], cwd=tmp_path, check=True, env=env)
    shutil.copyfile(ROOT / ".dvc" / "config", tmp_path / ".dvc" / "config")
    shutil.copytree(ROOT / ".dvc" / "plots", tmp_path / ".dvc" / "plots")
    (tmp_path / "history.csv").write_text("epoch,val_accuracy\n1,0.5\n2,0.75\n")
    subprocess.run([DVC, "plots", "show", "history.csv", "-x", "epoch", "-y", "val_accuracy"], cwd=tmp_path,
                   check=True, env=env, capture_output=True)
    page = (tmp_path / "dvc_plots" / "index.html").read_text()
    assert not re.findall(r"<script[^>]+src=", page), "a script is loaded from elsewhere"
    assert "vegaEmbed(" in page and '"val_accuracy"' in page  # the plot's spec and the inline library
    assert "{plot_divs}" not in page and "{refresh_tag}" not in page
