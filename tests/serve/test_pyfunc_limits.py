"""The MLflow pyfunc (issue 13 item 7): pixel limits per image and per request checked from the headers
(refused by name, HTTP 400 from `mlflow models serve`), and EXIF orientation applied as hsnet predict does."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from serve_helpers import b64, encode

from hsnet.predict import Classifier
from hsnet.pyfunc import HSNetModel, InputRefused, Limits


@pytest.fixture(scope="module")
def pyfunc(trained):
    model = HSNetModel()
    model.classifier = Classifier.from_checkpoint(trained["checkpoint"], device="cpu")
    model.limits = Limits(max_images=4, max_image_pixels=500_000, max_request_pixels=1_000_000)
    return model


def _png(size, color=(120, 90, 60), **kw) -> bytes:
    return encode(Image.new("RGB", size, color), "PNG", **kw)


def test_limits_refuse_by_name_before_decoding(pyfunc):
    ok = pyfunc.predict(None, pd.DataFrame({"image": [_png((600, 600)), _png((80, 80))]}))
    assert len(ok) == 2

    with pytest.raises(InputRefused, match=r"image 1: 8000x8000 = 64,000,000 pixels .* max_image_pixels "
                                           r"\(HSNET_SERVE_MAX_IMAGE_PIXELS\)") as err:
        pyfunc.predict(None, pd.DataFrame({"image": [_png((80, 80)), _png((8000, 8000))]}))
    assert err.value.get_http_status_code() == 400  # what `mlflow models serve` answers
    with pytest.raises(InputRefused, match=r"1,080,000 pixels, over the limit of 1,000,000 pixels per request, "
                                           r"max_request_pixels"):
        pyfunc.predict(None, pd.DataFrame({"image": [_png((600, 600))] * 3}))
    with pytest.raises(InputRefused, match=r"5 images in one request is over the limit of 4, max_images"):
        pyfunc.predict(None, pd.DataFrame({"image": [_png((8, 8))] * 5}))
    with pytest.raises(InputRefused, match=r"image 0: not a readable image \(accepted: JPEG, PNG"):
        pyfunc.predict(None, pd.DataFrame({"image": [b"%PDF-1.4 not an image"]}))
    with pytest.raises(InputRefused, match="image 0: 1000x1000 = 1,000,000 pixels"):  # arrays count too
        pyfunc.predict(None, pd.DataFrame({"image": [np.zeros((1000, 1000, 3), np.uint8)]}))


def test_exif_orientation_is_applied(pyfunc, trained):
    """A face stored rotated with an EXIF orientation tag scores as the upright face (as hsnet predict reads it)."""
    face = Image.open(sorted((trained["data"] / "images").rglob("*.png"))[0]).convert("RGB")
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view": the pixels are stored turned 90 degrees counter-clockwise
    stored = face.transpose(Image.Transpose.ROTATE_90)
    upright = encode(face, "PNG")
    rotated = encode(stored, "PNG", exif=exif.tobytes())
    untagged = encode(stored, "PNG")
    out = pyfunc.predict(None, pd.DataFrame({"image": [upright, rotated, untagged]}))
    probs = out[[c for c in out.columns if c.startswith("prob_")]].to_numpy()
    np.testing.assert_allclose(probs[1], probs[0], atol=1e-6)
    assert np.abs(probs[2] - probs[0]).max() > 1e-4  # without the tag the model sees another image

    from hsnet.io import open_rgb  # and hsnet predict's reader agrees with the pyfunc's decoding

    path = trained["base"] / "rotated-exif.png"
    path.write_bytes(rotated)
    assert np.array_equal(np.asarray(open_rgb(path)), np.asarray(face))


@pytest.mark.slow
def test_mlflow_models_serve_answers_400_naming_the_limit(local_mlflow, trained, tmp_path):
    from servers import Server, free_port, models_serve_env

    from hsnet.evaluate import evaluate
    from hsnet.registry import register

    evaluate(trained["checkpoint"], trained["data"], tmp_path / "eval", progress=False)
    name = register(trained["checkpoint"], tmp_path / "eval" / "metrics.json", "sample")["name"]
    port = free_port()
    env = models_serve_env(HSNET_SERVE_MAX_IMAGE_PIXELS="500000")
    server = Server(["mlflow", "models", "serve", "-m", f"models:/{name}/1", "--env-manager", "local",
                     "-h", "127.0.0.1", "-p", str(port), "-w", "1"], f"http://127.0.0.1:{port}", "/ping", env,
                    tmp_path / "serve.log")

    def invoke(images):
        body = {"dataframe_split": {"columns": ["image"], "data": [[b64(i)] for i in images]}}
        req = urllib.request.Request(server.url + "/invocations", data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.status, json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    try:
        status, body = invoke([_png((8000, 8000))] * 8)  # the request: 8 x 64 MP in a few hundred kB
        assert status == 400 and "64,000,000 pixels" in body["message"] and "max_image_pixels" in body["message"]
        status, body = invoke([_png((80, 80))])
        assert status == 200 and len(body["predictions"]) == 1
    finally:
        server.stop()
