"""Knowledge scale: knowledge transfer learning (KTL), Sect. 3.3, eqs. 18-20.

The stem of HSNet is the stem of Inception-ResNet-V1 (facenet-pytorch's
``conv2d_1a`` ... ``conv2d_4b``). With KTL it starts from the face-recognition
weights theta_recog (VGGFace2) and stays frozen: no gradients and no BatchNorm
statistic updates (eq. 19); everything after it is He-initialised (eq. 18) and trained.

Where the weights come from (``stem_weights``):

* ``"vggface2"``: facenet-pytorch's own file, from its cache
  (``$TORCH_HOME/checkpoints/20180402-114759-vggface2.pt``) or downloaded where
  there is network;
* a local file, or an ``s3://bucket/key`` URI (read with boto3): a whole
  InceptionResnetV1 state dict (with or without ``logits.*``) or a stem-only one.
"""

from __future__ import annotations

import hashlib
import io
import os
import socket
import tempfile
from collections import OrderedDict
from pathlib import Path

import torch
from facenet_pytorch.models import inception_resnet_v1 as irv1
from torch import nn

from ..errors import HSNetError
from ..params import VGGFACE2
from ..tracking import SCHEME, mask_text, mask_uri

STEM_LAYERS = ("conv2d_1a", "conv2d_2a", "conv2d_2b", "maxpool_3a", "conv2d_3b", "conv2d_4a",
               "conv2d_4b")
VGGFACE2_URL = ("https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/"
                "20180402-114759-vggface2.pt")
DOWNLOAD_TIMEOUT_S = 30


class StemWeightsError(HSNetError):
    """The KTL stem weights could not be had; the message says how to provide them."""


HOW_TO_PROVIDE = (
    "Provide the VGGFace2 InceptionResnetV1 weights in one of these ways: copy "
    "20180402-114759-vggface2.pt (facenet-pytorch's release file) to {cache}; or point "
    "model.stem_weights at a local .pt file or an s3:// URI (params.yaml; hsnet train: --set "
    "model.stem_weights=PATH; hsnet reproduce ablation: --stem-weights PATH); or train without "
    "knowledge transfer (model.ktl: false)."
)


def stem_of(model: irv1.InceptionResnetV1) -> nn.Sequential:
    """The stem modules of an InceptionResnetV1, in order, under their facenet-pytorch names."""
    return nn.Sequential(OrderedDict((name, getattr(model, name)) for name in STEM_LAYERS))


def vggface2_cache_path() -> Path:
    """Where facenet-pytorch caches (and looks for) the VGGFace2 weights."""
    return Path(irv1.get_torch_home()) / "checkpoints" / os.path.basename(VGGFACE2_URL)


def _how_to() -> str:
    return HOW_TO_PROVIDE.format(cache=vggface2_cache_path())


def _fetch_vggface2() -> Path:
    path = vggface2_cache_path()
    if path.exists():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    old = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT_S)
    try:
        # facenet-pytorch's downloader writes to a temporary file and moves it in place.
        irv1.download_url_to_file(VGGFACE2_URL, str(path), progress=False)
    except Exception as exc:  # no network, proxy, HTTP error: all mean the same to the user
        raise StemWeightsError(
            f"KTL needs the VGGFace2 weights: they are not in facenet-pytorch's cache ({path}) "
            f"and downloading {VGGFACE2_URL} failed ({type(exc).__name__}: {exc}). " + _how_to()
        ) from exc
    finally:
        socket.setdefaulttimeout(old)
    return path


def _fetch_s3(uri: str) -> Path:
    import importlib.util

    if importlib.util.find_spec("boto3") is None:  # pragma: no cover - boto3 is in the 'pipeline' extra
        raise StemWeightsError(f"reading {mask_uri(uri)} needs boto3: pip install 'hsnet[pipeline]'")
    from ..s3 import S3Error, client, errors, split_uri

    try:
        bucket, key = split_uri(uri)
    except S3Error:
        bucket = key = ""
    if not key or "@" in bucket:  # s3://KEY:SECRET@bucket/...: credentials come from the environment only
        raise StemWeightsError(f"stem weights URI {mask_uri(uri)!r} is not of the form s3://bucket/key (the "
                               "credentials go in AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY, never in the URI)")
    fd, tmp = tempfile.mkstemp(suffix=".pt", prefix="hsnet-stem-")
    os.close(fd)
    try:
        client().download_file(bucket, key, tmp)
    except errors() as exc:
        os.unlink(tmp)
        raise StemWeightsError(
            f"could not read the stem weights {mask_uri(uri)} ({mask_text(str(exc))}). Check the URI, the credentials "
            "(AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY in the environment) and, for MinIO, "
            "AWS_ENDPOINT_URL. " + _how_to()) from exc
    return Path(tmp)


def _stem_keys(reference: nn.Module) -> dict[str, torch.Size]:
    return {k: v.shape for k, v in reference.state_dict().items()}


def read_stem_state_dict(source: str | os.PathLike, reference: nn.Sequential) -> tuple[dict, str]:
    """The stem tensors from ``source``, keyed as in ``reference`` (a stem built by :func:`stem_of`),
    and the sha256 of the file they were read from (which weights a run used, whatever its name).

    Raises :class:`StemWeightsError` with what to do when the file is missing,
    unreadable or not an InceptionResnetV1 state dict.
    """
    source = os.fspath(source)
    cleanup = None
    if source == VGGFACE2:
        path = _fetch_vggface2()
    elif source.startswith("s3://"):
        path = cleanup = _fetch_s3(source)
    elif SCHEME.match(source):  # https://..., gs://...: not a path (read as one, its error printed it whole)
        raise StemWeightsError(f"stem weights {mask_uri(source)}: only a local file, an s3:// URI or "
                               f"{VGGFACE2!r} is read; download it first, or copy it to S3. " + _how_to())
    else:
        path = Path(source).expanduser()
        if not path.is_file():
            raise StemWeightsError(f"stem weights file {path} does not exist. " + _how_to())
    try:
        data = Path(path).read_bytes()  # read once: the weights loaded and the hash recorded are of one file
        digest = hashlib.sha256(data).hexdigest()
        state = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:
        raise StemWeightsError(
            f"stem weights file {path} ({source}) is not a PyTorch state dict that can be loaded "
            f"safely ({type(exc).__name__}: {str(exc).splitlines()[0][:200]}). " + _how_to()
        ) from exc
    finally:
        if cleanup is not None:
            cleanup.unlink(missing_ok=True)
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise StemWeightsError(f"stem weights file {path} holds a {type(state).__name__}, "
                               "not a state dict. " + _how_to())
    expected = _stem_keys(reference)
    found = {}
    for key, tensor in state.items():
        for prefix in ("", "module.", "stem."):  # whole model, DataParallel, HSNet checkpoints
            if key.startswith(prefix) and key[len(prefix):] in expected:
                found[key[len(prefix):]] = tensor
                break
    for key in expected:  # old files (like facenet-pytorch's) may lack BN step counters
        if key.endswith("num_batches_tracked") and key not in found:
            found[key] = reference.state_dict()[key].clone()
    missing = sorted(set(expected) - set(found))
    if missing:
        raise StemWeightsError(
            f"stem weights file {path} is not an InceptionResnetV1 state dict: {len(missing)} of "
            f"{len(expected)} stem tensors are missing (e.g. {missing[0]}). " + _how_to())
    wrong = [k for k, shape in expected.items() if found[k].shape != shape]
    if wrong:
        raise StemWeightsError(
            f"stem weights file {path}: {wrong[0]} has shape {tuple(found[wrong[0]].shape)}, "
            f"InceptionResnetV1's stem needs {tuple(expected[wrong[0]])}. " + _how_to())
    return found, digest


def load_stem(stem: nn.Sequential, source: str | os.PathLike) -> str:
    """Copy theta_recog into ``stem`` (eq. 18); the sha256 of the weights file."""
    state, digest = read_stem_state_dict(source, stem)
    stem.load_state_dict(state, strict=True)
    return digest


def freeze(stem: nn.Module) -> None:
    """Eq. 19: theta_s stays theta_recog: no gradients (BN statistics: see HSNet.train)."""
    stem.requires_grad_(False)
    stem.eval()


def he_init(module: nn.Module) -> None:
    """Eq. 18: He initialisation (He et al. 2015, fan-in, ReLU gain) of everything after the stem:
    the convolutions and the classifiers' FC layers (zero biases); BatchNorm at weight 1, bias 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
            nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
