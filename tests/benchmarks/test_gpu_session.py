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


STUB_PYTHON = """#!/usr/bin/env bash
# python3's stand-in: a benchmark writes one JSON into its --out, hsnet evaluate its four files
out=""; prev=""
for a in "$@"; do [ "$prev" = "--out" ] && out=$a; prev=$a; done
case " $* " in
  *" -m hsnet evaluate "*) mkdir -p "$out" && for f in metrics.json predictions.csv confusion_matrix.png comparison.md; do
      echo x > "$out/$f"; done ;;
  *" -m benchmarks."*) mkdir -p "$out" && mktemp "$out/benchmark-XXXXXX.json" > /dev/null ;;
esac
echo "python3 $*"
"""
DEVICE_FILES_BACK = 8  # the device tool brings back at most 8 files from its $OUT


@pytest.mark.parametrize("step_set", ["issue18", "issue18b", "issue18c"])
def test_on_the_device_tool_every_result_comes_back_in_two_files(tmp_path, step_set):
    """Run as the header says for the device tool (BRING_BACK=$OUT ... | tee $OUT/session.log), with
    python3 and nvidia-smi standing in: the tool's folder gets gpu_session.tgz and steps.txt (with
    session.log three of its 8 files), the archive holds every step's log and the files its
    commands wrote (attack session 13: without it, `issue18` left 9 files and `issue18b` 10 in
    $OUT, and the tool brings back 8); OUT is not written to."""
    import tarfile

    _, _, sets = _parse()
    bin_dir, work, back = tmp_path / "bin", tmp_path / "work", tmp_path / "back"
    bin_dir.mkdir()
    (bin_dir / "python3").write_text(STUB_PYTHON)
    (bin_dir / "nvidia-smi").write_text("#!/usr/bin/env bash\necho 'NVIDIA H200, 570.00, 143771 MiB'\n")
    for stub in bin_dir.iterdir():
        stub.chmod(0o755)
    (work / "data/processed/sample").mkdir(parents=True)
    (work / "data/processed/sample/manifest.csv").write_text("path,label,split\n")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "BRING_BACK": str(back),
           "OUT": str(tmp_path / "tools-out"), "TMPDIR": str(tmp_path)}
    env.pop("PYTHON", None)
    env.pop("STEPS", None)
    run = subprocess.run(["bash", str(SCRIPT), step_set], capture_output=True, text=True, cwd=work, env=env,
                         timeout=120)
    assert run.returncode == 0, run.stderr
    came_back = sorted(str(p.relative_to(back)) for p in back.rglob("*") if p.is_file())
    assert came_back == ["gpu_session.tgz", "steps.txt"] and len(came_back) + 1 <= DEVICE_FILES_BACK
    assert not (tmp_path / "tools-out").exists() and not (work / "benchmarks").exists()

    steps = sets[step_set]
    ended = (back / "steps.txt").read_text().splitlines()
    assert [line.split(":")[0].removeprefix("== ") for line in ended] == steps
    assert all(": rc=0 in " in line for line in ended)
    with tarfile.open(back / "gpu_session.tgz") as tar:
        packed = {name.removeprefix("./") for name in tar.getnames()}
    assert {"gpu_machine.txt", "steps.txt"} | {f"{s}.log" for s in steps} <= packed
    benchmarks = [s for s in steps if not s.startswith("sample_") and s != "gpu_tests"]
    assert len([n for n in packed if n.startswith("benchmark-")]) == len(benchmarks)
    if "sample_whole_step_evaluate" in steps:
        assert {f"sample_whole_step_eval/{f}" for f in ("metrics.json", "predictions.csv", "confusion_matrix.png",
                                                        "comparison.md")} <= packed
