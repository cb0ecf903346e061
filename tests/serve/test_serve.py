"""hsnet serve (KServe V1 and V2) against a real MLflow registry: photos in, faces and expressions out,
the same figures as hsnet predict, limits, bad images per photo, a new production version on reload."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from serve_helpers import b64, encode, get, post, start_server

from hsnet.data.datasets import FERG_CLASSES
from hsnet.evaluate import evaluate
from hsnet.predict import Classifier, predict
from hsnet.registry import promote, register

pytestmark = pytest.mark.slow


def _register(checkpoint, data, name, out):
    """A tracked evaluation of ``checkpoint``, then its registration (what the pipeline does)."""
    evaluate(checkpoint, data, out, progress=False)
    return register(checkpoint, out / "metrics.json", "sample", name=name)


def _same_faces(got: list[dict], expected: list[dict]):
    assert len(got) == len(expected)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g["box"], e["box"], atol=0.5)
        assert g["expression"] == e["expression"]
        np.testing.assert_allclose([g["probabilities"][c] for c in FERG_CLASSES],
                                   [e["probabilities"][c] for c in FERG_CLASSES], atol=2e-4)


def test_registry_model_v1_v2_limits_and_reload(use_mlflow_server, trained, photos, tmp_path):
    name = "hsnet-sample-kserve"
    first = _register(trained["checkpoint"], trained["data"], name, tmp_path / "eval1")
    assert promote(name)["production"] == first["version"] == 1
    # the astronaut (512x512) fits, the 1200x1000 photo is over the per-image limit
    server = start_server(f"models:/{name}@production", tmp_path / "serve.log", HSNET_SERVE_MAX_IMAGE_PIXELS=1_000_000)
    try:
        url = server.url
        assert get(url + "/v2/health/live") == (200, {"live": True})
        assert get(url + "/v1/models/hsnet") == (200, {"name": "hsnet", "ready": True})

        instances = [{"b64": b64(photos["astronaut"])}, {"b64": b64(photos["no_face"])}, {"b64": b64(photos["broken"])},
                     {"b64": b64(photos["big"])}, "not base64!", {"image": "wrong key"}]
        status, v1 = post(url + "/v1/models/hsnet:predict", {"instances": instances})
        assert status == 200, v1
        assert (v1["model_name"], v1["model_version"], v1["model_uri"]) == ("hsnet", "1", f"models:/{name}/1")
        astronaut, no_face, broken, big, text, wrong = v1["predictions"]
        assert astronaut["size"] == [512, 512] and len(astronaut["faces"]) == 1
        x1, y1, x2, y2 = astronaut["faces"][0]["box"]
        assert 150 < (x1 + x2) / 2 < 290 and 40 < (y1 + y2) / 2 < 200  # her face, not the flag or the suit
        # the same record as hsnet predict's for the same photo and checkpoint
        expected = predict([photos["dir"] / "astronaut.jpg"], trained["checkpoint"], device="cpu",
                           progress=False)["results"][0]
        _same_faces(astronaut["faces"], expected["faces"])
        assert no_face == {"faces": [], "size": [320, 240]}
        assert broken["faces"] == [] and "image 2" in broken["error"]  # truncated: refused at open or decode
        assert "not a readable image" in broken["error"] or "can't be decoded" in broken["error"]
        assert big["faces"] == [] and "1,200,000 pixels" in big["error"] and "max_image_pixels" in big["error"]
        assert "image 4" in text["error"] and "base64" in text["error"]
        assert "image 5" in wrong["error"] and "b64" in wrong["error"]

        # V2 (Open Inference Protocol): the same records, as JSON text in a BYTES output
        status, v2 = post(url + "/v2/models/hsnet/infer", {"id": "r1", "inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [2], "data": [b64(photos["astronaut"]),
                                                                          b64(photos["no_face"])]}]})
        assert status == 200, v2
        assert (v2["model_name"], v2["model_version"], v2["id"]) == ("hsnet", "1", "r1")
        assert v2["parameters"]["model_uri"] == f"models:/{name}/1"
        (out,) = v2["outputs"]
        assert (out["name"], out["datatype"], out["shape"]) == ("records", "BYTES", [2])
        records = [json.loads(r) for r in out["data"]]
        _same_faces(records[0]["faces"], astronaut["faces"])
        assert records[1] == no_face

        # face crops in (today's pyfunc contract): each image classified as it is
        crop = sorted((trained["data"] / "images").rglob("*.png"))[0]
        status, v1 = post(url + "/v1/models/hsnet:predict", {"instances": [{"b64": b64(crop.read_bytes())}],
                                                             "parameters": {"crops": True}})
        from PIL import Image

        local = Classifier.from_checkpoint(trained["checkpoint"], device="cpu").probabilities(
            [np.asarray(Image.open(crop).convert("RGB"))])[0]
        (rec,) = v1["predictions"]
        np.testing.assert_allclose([rec["probabilities"][c] for c in FERG_CLASSES], local, atol=2e-4)
        assert rec["expression"] == FERG_CLASSES[int(local.argmax())]

        # a new production version, reloaded through KServe's repository API: answered by it
        ckpt = torch.load(trained["checkpoint"], weights_only=True)
        gen = torch.Generator().manual_seed(7)
        for key, value in ckpt["model"].items():
            if value.is_floating_point() and "running" not in key:
                value.add_(torch.randn(value.shape, generator=gen) * 1e-2)
        torch.save(ckpt, tmp_path / "v2.pt")
        assert _register(tmp_path / "v2.pt", trained["data"], name, tmp_path / "eval2")["version"] == 2
        assert promote(name, force=True)["production"] == 2
        status, _ = post(url + "/v1/models/hsnet:predict", {"instances": [{"b64": b64(photos["astronaut"])}]})
        assert status == 200 and _["model_version"] == "1"  # no reload yet: still version 1
        status, loaded = post(url + "/v2/repository/models/hsnet/load", {})
        assert status == 200, loaded
        status, v1 = post(url + "/v1/models/hsnet:predict", {"instances": [{"b64": b64(photos["astronaut"])}]})
        assert (v1["model_version"], v1["model_uri"]) == ("2", f"models:/{name}/2")
        expected = predict([photos["dir"] / "astronaut.jpg"], tmp_path / "v2.pt", device="cpu",
                           progress=False)["results"][0]
        _same_faces(v1["predictions"][0]["faces"], expected["faces"])
    finally:
        server.stop()


def test_request_limits_are_4xx_naming_the_limit(trained, photos, tmp_path):
    """A checkpoint file served with small limits: count, body and pixel budget refuse the request (413)."""
    astro = {"b64": b64(photos["astronaut"])}  # 512x512 = 262,144 pixels, about 100 kB as base64
    server = start_server(str(trained["checkpoint"]), tmp_path / "serve.log", HSNET_SERVE_MAX_IMAGES=3,
                          HSNET_SERVE_MAX_REQUEST_BYTES=400_000, HSNET_SERVE_MAX_REQUEST_PIXELS=600_000)
    try:
        url = server.url + "/v1/models/hsnet:predict"
        status, body = post(url, {"instances": [astro] * 2})
        assert status == 200 and body["model_version"].startswith("sha256:")
        assert [len(p["faces"]) for p in body["predictions"]] == [1, 1]

        status, body = post(url, {"instances": [{"b64": b64(encode(photos["astronaut_image"].resize((64, 64))))}] * 4})
        assert status == 413 and "4 images" in body["error"] and "max_images (HSNET_SERVE_MAX_IMAGES)" in body["error"]
        status, body = post(url, {"instances": [astro] * 3})  # 786,432 pixels
        assert status == 413 and "786,432 pixels" in body["error"] and "max_request_pixels" in body["error"]
        status, body = post(url, {"instances": [{"b64": "A" * 500_000}]})
        assert status == 413 and "max_request_bytes (HSNET_SERVE_MAX_REQUEST_BYTES)" in body["error"]
        status, body = post(server.url + "/v2/models/hsnet/infer", {"inputs": [
            {"name": "image", "datatype": "BYTES", "shape": [3], "data": [astro["b64"]] * 3}]})
        assert status == 413 and "max_request_pixels" in body["error"]
        status, body = post(url, {"instances": "not a list"})
        assert status == 400 and "instances" in body["error"]
        # the server is still there and answers good requests
        status, body = post(url, {"instances": [astro]})
        assert status == 200 and len(body["predictions"][0]["faces"]) == 1
    finally:
        server.stop()
