"""The MLflow pyfunc of a trained HSNet: face images in, expression and class probabilities out,
and the decoding of images that clients send (shared with the model server, :mod:`hsnet.serve`).

Input: a DataFrame with an ``image`` column (MLflow type ``binary``); each cell is an
encoded image (PNG/JPEG bytes; base64 text from the REST API is decoded too) or an RGB
uint8 array (H, W, 3). Output: one row per image with ``expression``, ``confidence`` and
``prob_<class>`` for every class. Resizing, normalisation and the class names travel
inside the model (the checkpoint's metadata), so ``mlflow.pyfunc.load_model(
"models:/hsnet-rafdb@production")`` and ``mlflow models serve`` need nothing else.

Each image is taken as a face crop (``hsnet predict`` and ``hsnet serve`` find the faces in a
photo first) and fed as training fed its faces: a centre square at the model's ``crop.size``,
then resized to its input size (:meth:`hsnet.predict.Classifier.to_tensor`). For a model trained
on MTCNN's boxes, give a square crop of the box plus the model's margin for the same input.

Limits (:class:`Limits`, settable by environment variables in the serving container): images
per request, pixels per image and pixels per request are checked from the image headers
before anything is decoded, so a small request of huge images can't exhaust memory. A request
over a limit is refused as a whole with :class:`InputRefused`, which ``mlflow models serve``
answers with HTTP 400 and the message naming the limit. Encoded images are turned upright by
their EXIF orientation, as ``hsnet predict`` does for files.
"""

from __future__ import annotations

import base64
import binascii
import io
import re

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import BAD_REQUEST

from .errors import HSNetError
from .limits import Limits

INPUT_COLUMN = "image"
FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF")  # what clients may send; others are refused unread




class InputRefused(HSNetError, MlflowException):
    """A request or an image is refused; the message names the image or the limit.

    An :class:`~mlflow.exceptions.MlflowException` with BAD_REQUEST, so that ``mlflow models
    serve`` answers HTTP 400 with this message (any other exception becomes a 400 whose message
    hides ours); ``status`` is what the model server answers (413 for a limit)."""

    def __init__(self, message: str, status: int = 400):
        MlflowException.__init__(self, message, error_code=BAD_REQUEST)
        self.status = status


def as_bytes(value, row: int) -> bytes:
    """An encoded image from a cell: bytes as they are, text as base64. Bytes that are base64 text
    (``mlflow models serve`` hands the ``instances`` and ``inputs`` forms' base64 to the model as
    the bytes of the text) are decoded too. An encoded image is never all base64 characters: JPEG
    starts with 0xFF, PNG with 0x89, TIFF with 'II*' or 'MM' and a zero byte, BMP's header has zero
    bytes, and a WebP's compressed data is binary (its 'VP8 ' chunk name has a space)."""
    if isinstance(value, (bytes, bytearray, memoryview)) and _BASE64.fullmatch(bytes(value)):
        value = bytes(value).decode("ascii")
    if isinstance(value, str):
        try:
            return base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise InputRefused(f"image {row}: a text value must be a base64-encoded image") from exc
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise InputRefused(f"image {row}: expected an encoded image (bytes or base64 text), got {type(value).__name__}")


_BASE64 = re.compile(rb"(?:[A-Za-z0-9+/]{4})+(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?|[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=")


def open_encoded(data: bytes, row: int, limits: Limits):
    """The image in ``data``, opened (its header read, nothing decoded); :class:`InputRefused`
    when it is not an image of an accepted format or has more pixels than the limit."""
    from PIL import Image, UnidentifiedImageError

    from .io import DECODE_ERRORS

    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)
    except UnidentifiedImageError as exc:
        raise InputRefused(f"image {row}: not a readable image (accepted: {', '.join(FORMATS)})") from exc
    except DECODE_ERRORS as exc:
        raise InputRefused(f"image {row}: not a readable image ({type(exc).__name__}: {str(exc)[:200]})") from exc
    pixels = img.width * img.height
    if pixels > limits.max_image_pixels:
        img.close()
        raise InputRefused(f"image {row}: {img.width}x{img.height} = {pixels:,} pixels is over the limit of "
                           f"{limits.max_image_pixels:,} pixels per image, {Limits.flag('max_image_pixels')}",
                           status=413)
    return img


def decode_opened(img, row: int):
    """An opened image decoded as upright 8-bit RGB (EXIF orientation applied, as for files)."""
    from PIL import ImageOps

    from .io import DECODE_ERRORS, to_rgb

    try:
        with img:
            upright = ImageOps.exif_transpose(img)
            upright.load()
            return to_rgb(upright)
    except DECODE_ERRORS as exc:
        raise InputRefused(f"image {row}: can't be decoded ({type(exc).__name__}: {str(exc)[:200]})") from exc


def check_count(n: int, limits: Limits) -> None:
    if n > limits.max_images:
        raise InputRefused(f"{n} images in one request is over the limit of {limits.max_images}, "
                           f"{Limits.flag('max_images')}; send them in smaller requests", status=413)


def check_budget(pixels: int, limits: Limits) -> None:
    if pixels > limits.max_request_pixels:
        raise InputRefused(f"the request's images hold {pixels:,} pixels, over the limit of "
                           f"{limits.max_request_pixels:,} pixels per request, {Limits.flag('max_request_pixels')}; "
                           "send fewer or smaller images per request", status=413)


def _array(value, row: int, limits: Limits) -> np.ndarray:
    from .predict import as_rgb_array

    try:
        arr = as_rgb_array(value)
    except HSNetError as exc:
        raise InputRefused(f"image {row}: {exc}") from exc
    pixels = arr.shape[0] * arr.shape[1]
    if pixels > limits.max_image_pixels:
        raise InputRefused(f"image {row}: {arr.shape[1]}x{arr.shape[0]} = {pixels:,} pixels is over the limit of "
                           f"{limits.max_image_pixels:,} pixels per image, {Limits.flag('max_image_pixels')}",
                           status=413)
    return arr


def decode_all(cells: list, limits: Limits) -> list[np.ndarray]:
    """Every cell decoded, after the request's limits are checked on the image headers alone."""
    from PIL import Image

    from .io import to_rgb

    check_count(len(cells), limits)
    items, pixels = [], 0
    try:
        for row, value in enumerate(cells):
            if isinstance(value, Image.Image):  # in-process callers
                items.append(("pil", value))
                pixels += value.width * value.height
            elif isinstance(value, (np.ndarray, list)):
                arr = _array(value, row, limits)
                items.append(("array", arr))
                pixels += arr.shape[0] * arr.shape[1]
            else:
                img = open_encoded(as_bytes(value, row), row, limits)
                items.append(("encoded", img))
                pixels += img.width * img.height
            check_budget(pixels, limits)
        return [np.asarray(to_rgb(v)) if kind == "pil" else v if kind == "array" else np.asarray(decode_opened(v, row))
                for row, (kind, v) in enumerate(items)]
    finally:
        for kind, v in items:
            if kind == "encoded":
                v.close()


class HSNetModel(mlflow.pyfunc.PythonModel):
    """Loads the checkpoint artifact into a :class:`hsnet.predict.Classifier`."""

    def load_context(self, context):
        from .predict import Classifier

        self.classifier = Classifier.from_checkpoint(context.artifacts["checkpoint"])
        self.limits = Limits.from_env()

    def predict(self, context, model_input: pd.DataFrame, params=None):
        # The DataFrame hint tells MLflow to pass the input as it comes (arrays and lists work
        # too) and to check it against the logged signature only.
        if isinstance(model_input, pd.DataFrame):
            cells = model_input[INPUT_COLUMN] if INPUT_COLUMN in model_input else model_input.iloc[:, 0]
        elif isinstance(model_input, np.ndarray) and model_input.ndim == 4:
            cells = list(model_input)
        else:
            cells = model_input
        limits = getattr(self, "limits", None) or Limits.from_env()
        images = decode_all(list(cells), limits)
        probs = self.classifier.probabilities(images)
        classes = self.classifier.classes
        top = probs.argmax(1) if len(probs) else np.zeros(0, dtype=int)
        out = pd.DataFrame({"expression": pd.Series([classes[k] for k in top], dtype=object),  # str, even empty
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
