"""Each benchmark script at its smallest size, so that they keep working (they are not tests of speed)."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", ["model", "input_pipeline", "crop", "validate", "predict", "gpu", "device_data",
                                  "concurrent", "mtcnn", "serve", "serve_uploads", "step_overheads"])
def test_benchmark_runs(name, tmp_path, monkeypatch):
    import importlib

    monkeypatch.setenv("HSNET_CACHE_DIR", str(tmp_path / "cache"))
    module = importlib.import_module(f"benchmarks.{name}")
    result = module.main(["--smoke", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / f"{name}-smoke.json").read_text())
    assert saved["machine"]["torch"] == torch.__version__
    if name == "gpu":
        budget = saved["launch_budget"]
        rows = {(r["model"].split()[0], r["adam"]): r for r in budget["rows"]}
        assert len(rows) == 6 and budget["host_us_per_op"] > 0
        for model in ("HSNet", "baseline"):  # fewer launches: foreach < for-loop, fused <= foreach
            assert (rows[model, "fused"]["launching_ops"] <= rows[model, "foreach"]["launching_ops"]
                    < rows[model, "for-loop"]["launching_ops"])
        # the frozen stem and fewer layers: HSNet's step dispatches far fewer ops than the baseline's
        assert rows["HSNet", "fused"]["ops"] < rows["baseline", "fused"]["ops"] / 2
        assert rows["HSNet", "fused"]["us_per_launch_at_target"] == pytest.approx(
            32 / 5000 * 1e6 / rows["HSNet", "fused"]["launching_ops"])
        assert result["gpu"] == {"skipped": "no CUDA GPU"} if not torch.cuda.is_available() else \
            result["gpu"]["train_img_s"] > 0
    if name == "model":
        assert {r["model"] for r in saved["rows"]} == {"facenet IRV1 eager", "HSNet module eager", "hsnet train path"}
        assert all(r["train_img_s"] > 0 for r in saved["rows"]) and saved["matmul_gflop_s"] > 0
    elif name == "input_pipeline":
        assert saved["rows"][0]["pipeline_img_s"] > 0 and saved["rows"][0]["ratio"] > 0
    elif name == "crop":
        assert saved["rows"][0]["batched_faces"] == saved["rows"][0]["one_at_a_time_faces"] == 4
    elif name == "validate":
        assert saved["images"] == 300 and saved["cold_s"] > 0 and saved["warm_s"] > 0
    elif name == "predict":
        assert saved["folder_faces"] == 4 and saved["latency_ms_p50"] > 0
    elif name == "device_data":
        assert [r["data"] for r in saved["rows"]] == ["host", "device"] and all(r["train_img_s"] > 0 for r in saved["rows"])
    elif name == "concurrent":
        assert [r["concurrent"] for r in saved["rows"]] == [1, 2]
        assert all(len(r["per_run_img_s"]) == r["concurrent"] and r["aggregate_img_s"] > 0 for r in saved["rows"])
    elif name == "serve":  # good requests answered, hostile ones refused by name, on both servers
        assert all(r["error_rate"] == 0 and r["requests"] > 0 for r in saved["serve"].values())
        hostile = saved["serve_hostile"]["by_kind"]
        assert hostile["good"]["error_rate"] == 0 and set(hostile["40_images"]["status"]) == {"413"}
        assert set(saved["pyfunc_hostile"]["by_kind"]["8x_8000x8000_png"]["status"]) == {"400"}
    elif name == "serve_uploads":  # 4 bodies of 1 MiB at once against a budget of 2.5: answered or a clean 503
        budget, lifted = saved["servers"]["budget"]["status"], saved["servers"]["lifted"]["status"]
        assert set(budget) == {"200", "503"} and sum(budget.values()) == 4, budget
        assert lifted == {"200": 4}, lifted
    elif name == "step_overheads":
        assert len(saved["rows"]) == 3 and all(r["before_s"] > 0 and r["after_s"] > 0 for r in saved["rows"])
    elif name == "mtcnn":
        row = saved["rows"][0]
        assert row["faces"] == 2 and row["hsnet batched photos_s"] > 0 and row["speedup_batched"] > 0
        assert row["faces facenet/hsnet"]["same"] and row["faces facenet/hsnet"]["max_box_diff_px"] <= 1


def test_device_data_profile_names_where_a_step_goes(tmp_path):
    """--profile: per training step (24 images in batches of 8: 3 steps), the operations by own CPU time."""
    from benchmarks import device_data

    device_data.main(["--smoke", "--profile", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "device_data-profile-smoke.json").read_text())
    assert saved["steps"] == 3 and saved["cpu_self_us_per_step"] > 0
    names = [op["name"] for op in saved["ops"]]
    assert "aten::convolution_backward" in names  # the model's backward runs in every step
    cpu = [op["cpu_self_us_per_step"] for op in saved["ops"]]
    assert cpu == sorted(cpu, reverse=True) and sum(cpu) <= saved["cpu_self_us_per_step"] * 1.0001


def test_device_data_runs_the_whole_step(tmp_path):
    """--compile whole-step: both data paths through hsnet.step's whole-step path (no graph on a CPU)."""
    from benchmarks import device_data

    device_data.main(["--smoke", "--compile", "whole-step", "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "device_data-smoke-compile-whole-step.json").read_text())
    assert [(r["data"], r["compile"]) for r in saved["rows"]] == [("host", "whole-step"), ("device", "whole-step")]
    assert all(r["train_img_s"] > 0 for r in saved["rows"])


def test_bytes_moved_reads_the_sizes_dvc_recorded(tmp_path):
    """Per step: data inputs read, outputs written (code apart); train's tensor cache from the crops' manifest."""
    from benchmarks import bytes_moved

    (tmp_path / "params.yaml").write_text("datasets:\n  sample: {input_size: 80, train: {epochs: 3}}\n")
    crops = tmp_path / "data" / "processed" / "sample"
    crops.mkdir(parents=True)
    (crops / "manifest.csv").write_text("path,label\n" + "".join(f"{i}.png,0\n" for i in range(5)))
    (tmp_path / "dvc.lock").write_text("""schema: '2.0'
stages:
  crop@sample:
    deps:
    - {path: data/raw/sample, size: 1000, nfiles: 10}
    - {path: hsnet/data/crop.py, size: 7}
    outs:
    - {path: data/processed/sample, size: 300, nfiles: 6}
  train@sample:
    deps:
    - {path: data/processed/sample, size: 300, nfiles: 6}
    outs:
    - {path: runs/sample/train, size: 50, nfiles: 2}
""")
    result = bytes_moved.main(["--smoke", "--repo", str(tmp_path), "--out", str(tmp_path / "out")])
    crop, train = result["steps"]
    assert (crop["read_bytes"], crop["read_files"], crop["code_bytes"], crop["written_bytes"]) == (1000, 10, 7, 300)
    assert (train["read_bytes"], train["written_bytes"], train["written_files"]) == (300, 50, 2)
    assert train["tensor_cache_written_bytes"] == 5 * 3 * 80 * 80
    assert train["tensor_cache_read_bytes_all_epochs"] == 3 * 5 * 3 * 80 * 80
    assert (result["read_bytes"], result["written_bytes"]) == (1300, 350)
    assert json.loads((tmp_path / "out" / "bytes_moved-smoke.json").read_text())["steps"][0]["step"] == "crop@sample"
