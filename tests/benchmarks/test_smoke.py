"""Each benchmark script at its smallest size, so that they keep working (they are not tests of speed)."""

from __future__ import annotations

import json

import pytest
import torch

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("name", ["model", "input_pipeline", "crop", "validate", "predict", "gpu"])
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
