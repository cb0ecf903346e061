"""The MLflow pyfunc of a trained HSNet: face images in, expression and class probabilities out.

Input: a DataFrame with an ``image`` column (MLflow type ``binary``); each cell is an
encoded image (PNG/JPEG bytes; base64 text from the REST API is decoded too) or an RGB
uint8 array (H, W, 3). Output: one row per image with ``expression``, ``confidence`` and
``prob_<class>`` for every class. Resizing, normalisation and the class names travel
inside the model (the checkpoint's metadata), so ``mlflow.pyfunc.load_model(
"models:/hsnet-rafdb@production")`` and ``mlflow models serve`` need nothing else.

The images are classified as they are: give face crops (``hsnet predict`` finds the faces
in a photo first).
"""

from __future__ import annotations

import base64
import binascii
import io

import mlflow.pyfunc
import numpy as np
import pandas as pd

INPUT_COLUMN = "image"


def decode_image(value, row: int) -> np.ndarray:
    """One cell of the input column as an (H, W, 3) uint8 array."""
    from PIL import Image, UnidentifiedImageError

    from .errors import HSNetError
    from .io import MAX_IMAGE_PIXELS, to_rgb
    from .predict import as_rgb_array

    if isinstance(value, Image.Image):
        return np.asarray(to_rgb(value))
    if isinstance(value, str):
        try:
            value = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise HSNetError(f"row {row}: a text cell must be a base64-encoded image") from exc
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            with Image.open(io.BytesIO(bytes(value))) as img:
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    raise HSNetError(f"row {row}: {img.width}x{img.height} pixels is over the limit "
                                     f"of {MAX_IMAGE_PIXELS:,}")
                img.load()
                return np.asarray(to_rgb(img))
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise HSNetError(f"row {row}: the bytes are not a readable image ({exc})") from exc
    if isinstance(value, (np.ndarray, list)):
        return as_rgb_array(value)
    raise HSNetError(f"row {row}: expected image bytes or an RGB uint8 array, got {type(value).__name__}")


class HSNetModel(mlflow.pyfunc.PythonModel):
    """Loads the checkpoint artifact into a :class:`hsnet.predict.Classifier`."""

    def load_context(self, context):
        from .predict import Classifier

        self.classifier = Classifier.from_checkpoint(context.artifacts["checkpoint"])

    def predict(self, context, model_input: pd.DataFrame, params=None):
        # The DataFrame hint tells MLflow to pass the input as it comes (arrays and lists work
        # too) and to check it against the logged signature only.
        if isinstance(model_input, pd.DataFrame):
            cells = model_input[INPUT_COLUMN] if INPUT_COLUMN in model_input else model_input.iloc[:, 0]
        elif isinstance(model_input, np.ndarray) and model_input.ndim == 4:
            cells = list(model_input)
        else:
            cells = model_input
        images = [decode_image(v, i) for i, v in enumerate(list(cells))]
        probs = self.classifier.probabilities(images)
        classes = self.classifier.classes
        top = probs.argmax(1) if len(probs) else np.zeros(0, dtype=int)
        out = pd.DataFrame({"expression": [classes[k] for k in top],
                            "confidence": probs[np.arange(len(top)), top].astype(np.float64)})
        for j, c in enumerate(classes):
            out[f"prob_{c}"] = probs[:, j].astype(np.float64)
        return out


def signature(classes: list[str]):
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, Schema

    outputs = [ColSpec("string", "expression"), ColSpec("double", "confidence")]
    outputs += [ColSpec("double", f"prob_{c}") for c in classes]
    return ModelSignature(inputs=Schema([ColSpec("binary", INPUT_COLUMN)]), outputs=Schema(outputs))
