"""MTCNN with batched R-Net and O-Net stages: facenet-pytorch's detector without the per-box loop.

facenet-pytorch's ``detect_face`` cuts every candidate box out of its image and resizes it
(``interpolate(mode="area")``, an adaptive average pool) one box at a time in Python before
R-Net (24x24) and O-Net (48x48). Here the candidate boxes of all images of a batch, whatever
their sizes, are cut and resized in one tensor operation: each image's summed-area table
(an integer cumulative sum, exact) goes into one flat buffer, and every output pixel of every
box is the sum over its pooling window read from four corners of that table, divided by the
window's size. The windows are adaptive average pooling's own (start ``floor(i*n/s)``, end
``ceil((i+1)*n/s)``), so each crop equals facenet-pytorch's up to float rounding, and the same
P/R/O-Net weights (facenet-pytorch's :class:`~facenet_pytorch.MTCNN`) see the same inputs.

Where a CPU spends its time (docs/performance.md, "Batched MTCNN") three more things are done
differently, each with bit-for-bit the same values:

* P-Net's image pyramid is read from the same summed-area table: each level's area resize is
  two row gathers and two column gathers of the table (its windows are separable), the integer
  window sums divided by the window's height and then its width, which is what
  ``adaptive_avg_pool2d`` computes (integer sums of at most 2^24 are exact in float32), at a
  fraction of its cost. Each image size's windows are computed once.
* MTCNN's normalisation ``(x - 127.5) * 0.0078125`` is folded into that division
  (:func:`_normalized`), for the pyramid levels and the R-Net/O-Net crops alike.
* The networks run facenet-pytorch's own ``forward`` on a shallow copy of each network whose
  ``MaxPool2d`` layers are replaced by :class:`StridedMaxPool` (the maximum of strided slices,
  rows then columns; a window that ``ceil_mode`` lets run over the edge takes the maximum of what
  it covers): the same maxima, without PyTorch's CPU pooling kernel, which took about a third of
  the detector's time. The weights are the same tensors.

R-Net and O-Net get their crops channels-last, the layout their convolutions are fastest on
(P-Net's are fastest contiguous); that one changes the convolutions' rounding (outputs differ
from the contiguous layout's by about 1e-7).

Differences from ``detect_face``, none of which changes a result it returns:

* images of different sizes go through one call (P-Net runs per size, the later stages once);
* an image too small for the pyramid (shorter side under ``min_face_size``) has no boxes
  instead of crashing the batch;
* a batch where some images have no candidates is fine (``MTCNN.detect`` crashes on it);
* landmarks are not computed (nothing here uses them);
* the NMS after R-Net and after O-Net runs image by image (:func:`nms_per_image`), on the boxes
  as the image alone has them: ``detect_face``'s batch mode shifts each image's boxes by its
  index times the largest coordinate (the coordinate trick of
  :func:`~torchvision.ops.batched_nms`), which lets a face cut by one image's top-left border
  (negative coordinates) suppress a face in another image's bottom-right corner, and rounds the
  shifted coordinates in float32 (1/512 px at image 7 of 4,000 px photos), which flips pairs
  of boxes at the threshold; either way a photo's faces would depend on the other photos of its
  batch. P-Net's NMS keeps the trick (its boxes are inside their images; a photo of a batch can
  still differ from the photo alone on a pair of candidates within about 1e-5 of the IoU
  threshold, which R-Net and O-Net then judge again).

On a GPU the networks run in full fp32 (:func:`hsnet.device.full_fp32`), whatever TF32 setting
the process has: cuDNN's TF32 convolutions (PyTorch's default) moved boxes by pixels against
facenet-pytorch's in fp32 (docs/performance.md, section 8), so with TF32 on the results would
depend on the device. facenet-pytorch's own detector at PyTorch's defaults uses TF32 there.
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from torchvision.ops.boxes import batched_nms, nms

from ..device import full_fp32
from ..params import MTCNN_MIN_FACE_SIZE

RNET_SIZE, ONET_SIZE = 24, 48


def _facenet():
    from facenet_pytorch.models.utils import detect_face as fd

    return fd


class StridedMaxPool(nn.Module):
    """``nn.MaxPool2d(kernel, stride, padding=0, dilation=1, ceil_mode)`` as the maximum of
    ``kernel`` strided slices along the rows, then along the columns: the same values (a maximum
    is exact), where PyTorch's CPU kernel is several times slower on MTCNN's small feature maps."""

    def __init__(self, kernel: int, stride: int, ceil_mode: bool):
        super().__init__()
        self.kernel, self.stride, self.ceil_mode = kernel, stride, ceil_mode

    def _out(self, n: int) -> int:
        k, s = self.kernel, self.stride
        if not self.ceil_mode:
            return (n - k) // s + 1
        out = -(-(n - k) // s) + 1
        return out - 1 if (out - 1) * s >= n else out  # the last window must start inside (PyTorch's rule)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        oh, ow = self._out(h), self._out(w)
        if oh < 1 or ow < 1:
            raise ValueError(f"max pooling {self.kernel}x{self.kernel}: input {h}x{w} is smaller than the window")
        return self._along(self._along(x, -2, oh), -1, ow)

    def _along(self, x: torch.Tensor, dim: int, out: int) -> torch.Tensor:
        """Maxima of the ``out`` windows along ``dim``; a window running over the edge (ceil_mode)
        is the maximum of the values it covers (PyTorch's -inf padding), without copying ``x``."""
        k, s, n = self.kernel, self.stride, x.shape[dim]
        first = x.narrow(dim, 0, (out - 1) * s + 1)[(..., slice(None, None, s)) + (slice(None),) * (-1 - dim)]
        acc = None
        for j in range(1, k):
            count = min(out, (n - j + s - 1) // s)  # windows whose j-th element is inside
            if count <= 0:
                continue
            other = x.narrow(dim, j, (count - 1) * s + 1)[(..., slice(None, None, s)) + (slice(None),) * (-1 - dim)]
            if acc is None:
                if count == out:
                    acc = torch.maximum(first, other)
                    continue
                acc = first.clone()
            part = acc.narrow(dim, 0, count)
            torch.maximum(part, other, out=part)
        return first.contiguous() if acc is None else acc


def _pool_equivalent(layer: nn.Module) -> nn.Module:
    """:class:`StridedMaxPool` for a square, unpadded, undilated ``nn.MaxPool2d``; else the layer itself."""
    if not isinstance(layer, nn.MaxPool2d) or layer.return_indices:
        return layer
    k, s, p, d = (v if isinstance(v, int) else (v[0] if len(set(v)) == 1 else None)
                  for v in (layer.kernel_size, layer.stride or layer.kernel_size, layer.padding, layer.dilation))
    if None in (k, s) or p != 0 or d != 1:
        return layer
    return StridedMaxPool(k, s, layer.ceil_mode)


def with_strided_pools(net: nn.Module) -> nn.Module:
    """A shallow copy of ``net`` (the same parameter tensors, the same ``forward``) whose direct
    ``MaxPool2d`` children are :class:`StridedMaxPool`; ``net`` itself is left as it is."""
    fast = copy.copy(net)
    fast._modules = {name: _pool_equivalent(layer) for name, layer in net._modules.items()}
    return fast


def summed_area_tables(raw: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """(N, 3, h+1, w+1) integer sums over [0, y) x [0, x) of uint8 images (N, h, w, 3)."""
    n, h, w, _ = raw.shape
    table = torch.zeros((n, 3, h + 1, w + 1), dtype=dtype, device=raw.device)
    inner = table[:, :, 1:, 1:]
    inner.copy_(raw.permute(0, 3, 1, 2))
    inner.cumsum_(2)
    inner.cumsum_(3)
    return table


class AreaWindows(NamedTuple):
    """Adaptive average pooling's windows from (h, w) to ``size``: row starts/ends (exclusive),
    column starts/ends, and the window heights (size[0], 1) and widths (size[1],) as float32."""

    size: tuple[int, int]
    rs: torch.Tensor
    re: torch.Tensor
    cs: torch.Tensor
    ce: torch.Tensor
    kh: torch.Tensor
    kw: torch.Tensor


def area_windows(h: int, w: int, size: tuple[int, int], device=None) -> AreaWindows:
    def starts_ends(n, s):  # [floor(i*n/s), ceil((i+1)*n/s))
        i = torch.arange(s, device=device)
        return (i * n) // s, ((i + 1) * n + s - 1) // s

    (rs, re), (cs, ce) = starts_ends(h, size[0]), starts_ends(w, size[1])
    return AreaWindows(tuple(size), rs, re, cs, ce, (re - rs).to(torch.float32)[:, None], (ce - cs).to(torch.float32))


def area_resize(tables: torch.Tensor, size: tuple[int, int], windows: AreaWindows | None = None,
                normalize: bool = False) -> torch.Tensor:
    """``interpolate(images, size, mode="area")`` of the images whose summed-area tables
    (N, C, h+1, w+1) are given, float32 (N, C, *size): the same values, bit for bit, as long as a
    window's sum is exact in float32 (at most 2^24, e.g. windows of up to 65,793 pixels of 0-255).
    ``windows``: :func:`area_windows` for these sizes, where the caller keeps them. ``normalize``:
    MTCNN's input ``(x - 127.5) * 0.0078125`` instead, also bit for bit (see :func:`_normalized`)."""
    h, w = tables.shape[-2] - 1, tables.shape[-1] - 1
    win = windows or area_windows(h, w, size, tables.device)
    rows = tables.index_select(2, win.re)
    rows -= tables.index_select(2, win.rs)
    shape = rows.shape[:-1] + (win.size[1],)
    sums = torch.gather(rows, 3, win.ce.expand(shape))
    sums -= torch.gather(rows, 3, win.cs.expand(shape))
    return _normalized(sums, win.kh, win.kw) if normalize else torch.div(sums, win.kh).div_(win.kw)


def _normalized(sums: torch.Tensor, kh: torch.Tensor, kw: torch.Tensor) -> torch.Tensor:
    """``(sums / kh / kw - 127.5) * 0.0078125`` in float32, in three passes instead of five, with the
    same result bit for bit: scaling by 0.0078125 = 2^-7 is exact and commutes with rounding (no
    value here comes near float32's subnormals), so ``(x - 127.5) * 2^-7 == x * 2^-7 - 0.99609375``
    and ``(s / kw) * 2^-7 == s / (kw * 128)``."""
    out = torch.div(sums, kh)  # the integer sums converted to float32 and divided in one pass
    out /= kw * 128.0
    out -= 0.99609375
    return out


class BatchedMTCNN:
    """Faces in a list of RGB uint8 (H, W, 3) arrays: per image an array (k, 5) of x1, y1, x2, y2, prob.

    ``mtcnn``: a facenet-pytorch ``MTCNN`` whose networks, thresholds, scale factor and
    ``min_face_size`` are used unchanged; by default a new one on ``device``.
    """

    def __init__(self, device: str | torch.device = "cpu", min_face_size: int = MTCNN_MIN_FACE_SIZE, mtcnn=None):
        if mtcnn is None:
            from facenet_pytorch import MTCNN

            mtcnn = MTCNN(keep_all=True, device=device, min_face_size=min_face_size).eval()
        self.mtcnn = mtcnn
        self.device = torch.device(device)
        self.pnet, self.rnet, self.onet = (with_strided_pools(net) for net in (mtcnn.pnet, mtcnn.rnet, mtcnn.onet))
        self._pyramids: dict[tuple[int, int], list[tuple[float, AreaWindows]]] = {}

    def __call__(self, images: list[np.ndarray]) -> list[np.ndarray]:
        with full_fp32():
            return self._detect(images)

    @torch.inference_mode()
    def _detect(self, images: list[np.ndarray]) -> list[np.ndarray]:
        fd, m = _facenet(), self.mtcnn
        n = len(images)
        if n == 0:
            return []
        dtype = next(m.pnet.parameters()).dtype
        sizes = [img.shape[:2] for img in images]
        groups: dict[tuple[int, int], list[int]] = {}
        for i, hw in enumerate(sizes):
            groups.setdefault(tuple(hw), []).append(i)

        # the summed-area tables of all images in one flat buffer: table(b)[c, y, x] = sum over [0, y) x [0, x)
        wide = any(h * w * 255 >= 2 ** 31 for h, w in sizes)
        acc = torch.int64 if wide else torch.int32
        tables, base = [], torch.zeros(n, dtype=torch.int64)
        offset = 0
        boxes_all, inds_all = [], []
        for (h, w), idx in groups.items():
            raw = torch.as_tensor(np.stack([images[i] for i in idx]), device=self.device)
            table = summed_area_tables(raw, acc)
            tables.append(table.reshape(-1))
            for j, i in enumerate(idx):
                base[i] = offset + j * 3 * (h + 1) * (w + 1)
            offset += table.numel()
            found = self._pnet(table, dtype)
            if found is not None:
                boxes, inds = found
                boxes_all.append(boxes)
                inds_all.append(torch.as_tensor(idx, device=self.device)[inds])
        empty = [np.zeros((0, 5)) for _ in range(n)]
        if not boxes_all:
            return empty
        flat = torch.cat(tables) if len(tables) > 1 else tables[0]
        base = base.to(self.device)
        hw = torch.as_tensor(sizes, dtype=torch.int64, device=self.device)  # (n, 2): h, w
        boxes, inds = torch.cat(boxes_all), torch.cat(inds_all)

        # NMS within each image, then P-Net's box regression (as detect_face)
        pick = batched_nms(boxes[:, :4], boxes[:, 4], inds, 0.7)
        boxes, inds = boxes[pick], inds[pick]
        regw, regh = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
        boxes = torch.stack([boxes[:, 0] + boxes[:, 5] * regw, boxes[:, 1] + boxes[:, 6] * regh,
                             boxes[:, 2] + boxes[:, 7] * regw, boxes[:, 3] + boxes[:, 8] * regh, boxes[:, 4]], 1)
        boxes = fd.rerec(boxes)

        # R-Net on every candidate of every image at once
        if len(boxes):
            crops, valid = crop_resize_boxes(flat, base, hw, boxes, inds, RNET_SIZE, normalize=True)
            out = self.rnet(crops.to(dtype))
            score = out[1][:, 1]
            ipass = (score > m.thresholds[1]) & valid
            boxes = torch.cat((boxes[ipass, :4], score[ipass].unsqueeze(1)), 1)
            inds, mv = inds[ipass], out[0][ipass]
            pick = nms_per_image(boxes[:, :4], boxes[:, 4], inds, 0.7)
            boxes, inds, mv = boxes[pick], inds[pick], mv[pick]
            boxes = fd.rerec(fd.bbreg(boxes, mv))

        # O-Net likewise
        if len(boxes):
            crops, valid = crop_resize_boxes(flat, base, hw, boxes, inds, ONET_SIZE, normalize=True)
            out = self.onet(crops.to(dtype))
            score = out[2][:, 1]
            ipass = (score > m.thresholds[2]) & valid
            boxes = torch.cat((boxes[ipass, :4], score[ipass].unsqueeze(1)), 1)
            inds, mv = inds[ipass], out[0][ipass]
            boxes = fd.bbreg(boxes, mv)
            pick = nms_per_image(boxes[:, :4], boxes[:, 4], inds, 0.7, "Min")
            boxes, inds = boxes[pick], inds[pick]

        boxes, inds = boxes.cpu().numpy().astype(np.float64), inds.cpu().numpy()
        return [boxes[inds == i].reshape(-1, 5) for i in range(n)]

    def _pyramid(self, h: int, w: int) -> list[tuple[float, AreaWindows]]:
        """MTCNN's scales for (h, w) images (as ``detect_face`` computes them) and each level's
        area windows, kept per image size (a dataset's photos mostly share one)."""
        levels = self._pyramids.get((h, w))  # (threads share the detector: no check-then-read)
        if levels is None:
            m = self.mtcnn
            scale, minl, levels = 12.0 / m.min_face_size, min(h, w) * 12.0 / m.min_face_size, []
            while minl >= 12:
                levels.append((scale, area_windows(h, w, (int(h * scale + 1), int(w * scale + 1)), self.device)))
                scale, minl = scale * m.factor, minl * m.factor
            if len(self._pyramids) >= 64:  # many sizes: keep the memory bounded
                self._pyramids.clear()
            self._pyramids[(h, w)] = levels
        return levels

    def _pnet(self, tables: torch.Tensor, dtype: torch.dtype):
        """P-Net over the scale pyramid of equal-size images given by their summed-area tables
        (N, 3, h+1, w+1): candidate boxes (k, 9) (x1, y1, x2, y2, score, 4 regression offsets) and
        their image's index, after NMS within each scale and image (in facenet-pytorch's order:
        by scale, then as its NMS keeps them); None when the pyramid is empty or nothing passed."""
        fd, m = _facenet(), self.mtcnn
        h, w = tables.shape[2] - 1, tables.shape[3] - 1
        pyramid = self._pyramid(h, w)
        boxes, inds, levels = [], [], []
        for level, (scale, windows) in enumerate(pyramid):
            im_data = area_resize(tables, windows.size, windows, normalize=True)
            reg, probs = self.pnet(im_data.to(dtype))
            b, i = fd.generateBoundingBox(reg, probs[:, 1], scale, m.thresholds[0])
            boxes.append(b)
            inds.append(i)
            levels.append(torch.full_like(i, level))
        if not boxes:
            return None
        boxes, inds, levels = torch.cat(boxes), torch.cat(inds), torch.cat(levels)
        if not len(boxes):
            return None
        # NMS within each scale and image in one call; its picks (by score) put back in scale
        # order, which is the order of facenet-pytorch's per-scale calls
        pick = batched_nms(boxes[:, :4], boxes[:, 4], inds * len(pyramid) + levels, 0.5)
        pick = pick[torch.sort(levels[pick], stable=True).indices]
        return boxes[pick], inds[pick]


def nms_per_image(boxes: torch.Tensor, scores: torch.Tensor, inds: torch.Tensor, threshold: float,
                  method: str = "Union") -> torch.Tensor:
    """Non-maximum suppression within each image of a batch (``inds``), on each image's boxes as
    they are: what ``detect_face`` computes for that image alone (torchvision's ``nms``, or
    facenet-pytorch's ``nms_numpy`` for the ``"Min"`` overlap after O-Net). The indices kept,
    image by image, each image's by falling score."""
    keep = []
    for i in torch.unique(inds).tolist():
        where = torch.nonzero(inds == i).flatten()
        if method == "Min":
            k = _facenet().nms_numpy(boxes[where].cpu().numpy(), scores[where].cpu().numpy(), threshold, "Min")
            k = torch.as_tensor(k, dtype=torch.long, device=boxes.device)
        else:
            k = nms(boxes[where], scores[where], threshold)
        keep.append(where[k])
    return torch.cat(keep) if keep else torch.zeros(0, dtype=torch.long, device=boxes.device)


def crop_resize_boxes(flat: torch.Tensor, base: torch.Tensor, hw: torch.Tensor, boxes: torch.Tensor,
                      inds: torch.Tensor, size: int, normalize: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Every box cut from its image and area-resized to ``size`` x ``size``: float (k, 3, size, size),
    channels-last in memory (what R-Net's and O-Net's convolutions are fastest on).

    ``flat``: the images' summed-area tables (3, h+1, w+1 each) in one buffer, image b's from
    ``base[b]``; ``hw``: (n, 2) image heights and widths; ``boxes``: (k, >=4) x1, y1, x2, y2 in
    pixels, cut as facenet-pytorch's ``pad`` does (truncated, clipped to the image, 1-based
    ends). Also returns which boxes are non-empty (facenet-pytorch skips the others).
    ``normalize``: MTCNN's ``(crop - 127.5) * 0.0078125`` instead (:func:`_normalized`).
    """
    b = boxes[:, :4].trunc().to(torch.int64)
    h, w = hw[inds, 0], hw[inds, 1]
    x0 = b[:, 0].clamp(min=1) - 1
    y0 = b[:, 1].clamp(min=1) - 1
    x1 = torch.minimum(b[:, 2], w)
    y1 = torch.minimum(b[:, 3], h)
    valid = (x1 > x0) & (y1 > y0)
    bw, bh = (x1 - x0).clamp(min=1), (y1 - y0).clamp(min=1)
    x0, y0 = torch.minimum(x0, w - 1), torch.minimum(y0, h - 1)  # empty boxes: any in-bounds window
    bw, bh = torch.minimum(bw, w - x0), torch.minimum(bh, h - y0)
    i = torch.arange(size, device=boxes.device)
    # adaptive average pooling's windows: [floor(i*n/s), ceil((i+1)*n/s)); starts then ends
    rows = y0[:, None] + torch.cat([(i * bh[:, None]) // size, ((i + 1) * bh[:, None] + size - 1) // size], 1)
    cols = x0[:, None] + torch.cat([(i * bw[:, None]) // size, ((i + 1) * bw[:, None] + size - 1) // size], 1)
    # one gather of the four corners of every window, channels last: (k, 2*size, 2*size, 3)
    start = base[inds][:, None] + torch.arange(3, device=boxes.device) * ((h + 1) * (w + 1))[:, None]  # (k, 3)
    pos = rows[:, :, None] * (w + 1)[:, None, None] + cols[:, None, :]
    index = pos[..., None] + start[:, None, None, :]
    corners = flat.index_select(0, index.reshape(-1)).view(index.shape)  # (faster than flat[index])
    s = size
    total = corners[:, s:, s:] - corners[:, :s, s:]
    total -= corners[:, s:, :s]
    total += corners[:, :s, :s]
    kh = (rows[:, s:] - rows[:, :s]).to(torch.float32)[:, :, None, None]
    kw = (cols[:, s:] - cols[:, :s]).to(torch.float32)[:, None, :, None]
    out = _normalized(total, kh, kw) if normalize else torch.div(total, kh).div_(kw)  # sum / kh / kw
    return out.permute(0, 3, 1, 2), valid
