"""benchmarks/gpu_session.sh, checked without a GPU: a GPU lease is 15 minutes and a device command at
most 600 s, so a misspelt step or a step set that can't finish in one command would waste it."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_session.sh"
PER_COMMAND_S = 600  # the device tool's limit on one command


def _parse():
    text = SCRIPT.read_text()
    all_steps = set(re.search(r'ALL_STEPS="([^"]*)"', text).group(1).split())
    limits = {}
    for name, limit in re.findall(r"^\s*step (\S+) (\d+) ", text, flags=re.M):
        for data in ("device", "host"):  # the loop's names: sample_$data, sample_${data}_evaluate
            limits[name.replace("${data}", data).replace("$data", data)] = int(limit)
    sets = {name: body.split() for name, body in re.findall(r'^\s*(issue\w+)\) STEPS=\$\{STEPS:-"([^"]*)"\}',
                                                             text, flags=re.M)}
    return all_steps, limits, sets


def test_every_step_is_selectable_and_each_set_fits_one_device_command():
    all_steps, limits, sets = _parse()
    assert set(limits) == all_steps  # every step can be named in STEPS, every name is a step
    assert {"issue18", "issue18b", "issue18c"} <= set(sets)
    for name, steps in sets.items():
        assert set(steps) <= all_steps, name
        assert sum(limits[s] for s in steps) <= PER_COMMAND_S, (name, sum(limits[s] for s in steps))
    assert sets["issue18"][0] == "gpu_tests"  # the correctness checks before the figures


@pytest.mark.parametrize("args, env, message", [
    (["issue19"], {}, "unknown step set 'issue19'"),
    ([], {"STEPS": "mtcnn bogus"}, "unknown step 'bogus'"),
    ([], {"STEPS": " "}, "STEPS names no step"),
    ([], {"STEPS": "*"}, "unknown step '\\*'"),
])
def test_a_wrong_step_or_set_stops_before_anything_runs(tmp_path, args, env, message):
    out = tmp_path / "out"
    run = subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, cwd=tmp_path,
                         env={**os.environ, "OUT": str(out), **env}, timeout=60)
    assert run.returncode == 2 and re.search(message, run.stderr), run.stderr
    assert not out.exists()  # nothing measured, nothing written
