"""Inference speed: ``hsnet predict`` latency per photo (p50, p95) on a 640x480 photo with one
face, throughput on a folder of photos against a naive per-image, per-face loop, and the
MLflow pyfunc against the checkpoint for the classification of one face.

The model is HSNet at RaFD's 100x100 input with random weights (speed does not depend on
them); the photos are scikit-image's astronaut (public domain) on 640x480 canvases.

    python -m benchmarks.predict [--smoke]
"""

from __future__ import annotations

import io
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .common import parser, percentile, save


def make_checkpoint(path: Path, input_size: int = 100) -> Path:
    from hsnet.data.datasets import FERG_CLASSES
    from hsnet.model import HSNet
    from hsnet.checkpoint import FORMAT
    from hsnet.device import NORMALIZATION
    from hsnet.params import Params

    torch.manual_seed(0)
    model = HSNet(7, ktl=False)
    meta = {"dataset": "sample", "classes": list(FERG_CLASSES), "input_size": input_size,
            "model": {"dib": True, "fgal": True, "ktl": False}, "normalization": NORMALIZATION,
            "data_version": "sha256:benchmark", "params": Params().to_dict(), "mlflow_run_id": None}
    torch.save({"format": FORMAT, "meta": meta, "model": model.state_dict(),
                "state": {"epoch": 1, "best_epoch": 1, "best_acc": 0.0, "history": [], "stale": 0}}, path)
    return path


def make_photos(root: Path, n: int) -> list[Path]:
    from skimage import data

    face = Image.fromarray(data.astronaut())
    rng = np.random.default_rng(1)
    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        canvas = Image.new("RGB", (640, 480), tuple(int(c) for c in rng.integers(60, 200, 3)))
        side = int(rng.integers(260, 420))
        canvas.paste(face.resize((side, side)), (int(rng.integers(0, 640 - side)), int(rng.integers(0, 480 - side))))
        paths.append(root / f"photo{i:03d}.jpg")
        canvas.save(paths[-1], quality=90)
    return paths


def naive(paths, clf, detector) -> int:
    """Per photo: decode, detect; per face: crop, classify alone (the loop a user writes first)."""
    from hsnet.data.crop import square_crop
    from hsnet.io import open_rgb

    faces = 0
    for p in paths:
        img = open_rgb(p)
        boxes = detector([np.asarray(img)])[0]
        for box in boxes[boxes[:, 4] >= 0.9]:
            clf.probabilities([square_crop(img, box, clf.input_size, clf.margin)])
            faces += 1
    return faces


def main(argv=None) -> dict:
    args = parser(__doc__).parse_args(argv)
    from hsnet.data.crop import Detector
    from hsnet.predict import MIN_FACE_SIZE, Classifier, predict

    repeat, n_folder = (3, 4) if args.smoke else (30, 64)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        ckpt = make_checkpoint(tmp / "model.pt")
        clf = Classifier.from_checkpoint(ckpt, device="cpu")
        photos = make_photos(tmp / "photos", n_folder)
        one = photos[0]
        predict([one], str(ckpt), classifier=clf, progress=False)  # warm-up
        lat = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            s = predict([one], str(ckpt), classifier=clf, progress=False)
            lat.append((time.perf_counter() - t0) * 1000)
        assert s["faces"] == 1, s
        t0 = time.perf_counter()
        s = predict([tmp / "photos"], str(ckpt), classifier=clf, progress=False)
        batched = len(photos) / (time.perf_counter() - t0)
        naive_rates = {}
        for label, detector in (("mtcnn_defaults", Detector("cpu")),  # min face 20, as facenet-pytorch ships it
                                ("same_settings", Detector("cpu", min_face_size=MIN_FACE_SIZE))):
            t0 = time.perf_counter()
            faces = naive(photos, clf, detector)
            naive_rates[label] = len(photos) / (time.perf_counter() - t0)

        # one face: the checkpoint's Classifier against the MLflow pyfunc (encoded PNG in, as over REST)
        import mlflow
        import pandas as pd

        from hsnet import registry

        os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{tmp / 'mlflow.db'}"
        cwd = os.getcwd()
        os.chdir(tmp)
        try:  # the model as register logs it (registering needs an evaluation: not what is timed here)
            logged = registry.log_model(torch.load(ckpt, weights_only=True), run_name="benchmark-predict",
                                        params={}, tags={"step": "benchmark"})
            pyfunc = mlflow.pyfunc.load_model(logged["model_uri"])
        finally:
            os.chdir(cwd)
        crop = Image.open(one).convert("RGB").resize((100, 100))
        buf = io.BytesIO()
        crop.save(buf, format="PNG")
        frame = pd.DataFrame({"image": [buf.getvalue()]})
        arr = np.asarray(crop)

        def p50(fn):
            fn()
            times = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t0) * 1000)
            return percentile(times, 0.5)

        result = {
            "photo": "640x480, one face", "threads": torch.get_num_threads(),
            "latency_ms_p50": percentile(lat, 0.5), "latency_ms_p95": percentile(lat, 0.95),
            "folder_photos": len(photos), "folder_faces": s["faces"], "batched_photos_s": batched,
            "naive_photos_s": naive_rates["mtcnn_defaults"], "naive_faces": faces,
            "naive_same_settings_photos_s": naive_rates["same_settings"],
            "throughput_ratio": batched / naive_rates["mtcnn_defaults"],
            "throughput_ratio_same_settings": batched / naive_rates["same_settings"],
            "classify_one_face_ms_checkpoint": p50(lambda: clf.probabilities([arr])),
            "classify_one_face_ms_pyfunc": p50(lambda: pyfunc.predict(frame)),
        }
    print(result)
    save("predict" + ("-smoke" if args.smoke else ""), result, args.out)
    return result


if __name__ == "__main__":
    main()
