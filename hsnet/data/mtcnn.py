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

Differences from ``detect_face``, none of which changes a result it returns:

* images of different sizes go through one call (P-Net runs per size, the later stages once);
* an image too small for the pyramid (shorter side under ``min_face_size``) has no boxes
  instead of crashing the batch;
* a batch where some images have no candidates is fine (``MTCNN.detect`` crashes on it);
* landmarks are not computed (nothing here uses them).
"""

from __future__ import annotations

import numpy as np
import torch
from torchvision.ops.boxes import batched_nms

RNET_SIZE, ONET_SIZE = 24, 48


def _facenet():
    from facenet_pytorch.models.utils import detect_face as fd

    return fd


class BatchedMTCNN:
    """Faces in a list of RGB uint8 (H, W, 3) arrays: per image an array (k, 5) of x1, y1, x2, y2, prob.

    ``mtcnn``: a facenet-pytorch ``MTCNN`` whose networks, thresholds, scale factor and
    ``min_face_size`` are used unchanged; by default a new one on ``device``.
    """

    def __init__(self, device: str | torch.device = "cpu", min_face_size: int = 20, mtcnn=None):
        if mtcnn is None:
            from facenet_pytorch import MTCNN

            mtcnn = MTCNN(keep_all=True, device=device, min_face_size=min_face_size).eval()
        self.mtcnn = mtcnn
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, images: list[np.ndarray]) -> list[np.ndarray]:
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
            raw = torch.as_tensor(np.stack([images[i] for i in idx]), device=self.device).permute(0, 3, 1, 2)
            table = torch.zeros((len(idx), 3, h + 1, w + 1), dtype=acc, device=self.device)
            table[:, :, 1:, 1:] = raw.to(acc).cumsum(2, dtype=acc).cumsum(3, dtype=acc)
            tables.append(table.reshape(-1))
            for j, i in enumerate(idx):
                base[i] = offset + j * 3 * (h + 1) * (w + 1)
            offset += table.numel()
            found = self._pnet(raw.to(dtype), h, w)
            if found is not None:
                boxes, inds = found
                boxes_all.append(boxes)
                inds_all.append(torch.as_tensor(idx, device=self.device)[inds])
        empty = [np.zeros((0, 5)) for _ in range(n)]
        if not boxes_all:
            return empty
        flat = torch.cat(tables)
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
            crops, valid = crop_resize_boxes(flat, base, hw, boxes, inds, RNET_SIZE)
            out = m.rnet(((crops - 127.5) * 0.0078125).to(dtype))
            score = out[1][:, 1]
            ipass = (score > m.thresholds[1]) & valid
            boxes = torch.cat((boxes[ipass, :4], score[ipass].unsqueeze(1)), 1)
            inds, mv = inds[ipass], out[0][ipass]
            pick = batched_nms(boxes[:, :4], boxes[:, 4], inds, 0.7)
            boxes, inds, mv = boxes[pick], inds[pick], mv[pick]
            boxes = fd.rerec(fd.bbreg(boxes, mv))

        # O-Net likewise
        if len(boxes):
            crops, valid = crop_resize_boxes(flat, base, hw, boxes, inds, ONET_SIZE)
            out = m.onet(((crops - 127.5) * 0.0078125).to(dtype))
            score = out[2][:, 1]
            ipass = (score > m.thresholds[2]) & valid
            boxes = torch.cat((boxes[ipass, :4], score[ipass].unsqueeze(1)), 1)
            inds, mv = inds[ipass], out[0][ipass]
            boxes = fd.bbreg(boxes, mv)
            pick = fd.batched_nms_numpy(boxes[:, :4], boxes[:, 4], inds, 0.7, "Min")
            boxes, inds = boxes[pick], inds[pick]

        boxes, inds = boxes.cpu().numpy().astype(np.float64), inds.cpu().numpy()
        return [boxes[inds == i].reshape(-1, 5) for i in range(n)]

    def _pnet(self, imgs: torch.Tensor, h: int, w: int):
        """P-Net over the scale pyramid of equal-size images (N, 3, h, w) float: candidate boxes
        (k, 9) (x1, y1, x2, y2, score, 4 regression offsets) and their image's index in ``imgs``,
        after NMS within each scale and image; None when the pyramid is empty or nothing passed."""
        fd, m = _facenet(), self.mtcnn
        scale, minl, scales = 12.0 / m.min_face_size, min(h, w) * 12.0 / m.min_face_size, []
        while minl >= 12:
            scales.append(scale)
            scale, minl = scale * m.factor, minl * m.factor
        boxes, inds = [], []
        for scale in scales:
            im_data = fd.imresample(imgs, (int(h * scale + 1), int(w * scale + 1)))
            reg, probs = m.pnet((im_data - 127.5) * 0.0078125)
            b, i = fd.generateBoundingBox(reg, probs[:, 1], scale, m.thresholds[0])
            pick = batched_nms(b[:, :4], b[:, 4], i, 0.5)
            boxes.append(b[pick])
            inds.append(i[pick])
        if not boxes:
            return None
        boxes, inds = torch.cat(boxes), torch.cat(inds)
        return (boxes, inds) if len(boxes) else None


def crop_resize_boxes(flat: torch.Tensor, base: torch.Tensor, hw: torch.Tensor, boxes: torch.Tensor,
                      inds: torch.Tensor, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every box cut from its image and area-resized to ``size`` x ``size``: float (k, 3, size, size).

    ``flat``: the images' summed-area tables (3, h+1, w+1 each) in one buffer, image b's from
    ``base[b]``; ``hw``: (n, 2) image heights and widths; ``boxes``: (k, >=4) x1, y1, x2, y2 in
    pixels, cut as facenet-pytorch's ``pad`` does (truncated, clipped to the image, 1-based
    ends). Also returns which boxes are non-empty (facenet-pytorch skips the others).
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
    # adaptive average pooling's windows: [floor(i*n/s), ceil((i+1)*n/s))
    rs = y0[:, None] + (i * bh[:, None]) // size
    re = y0[:, None] + ((i + 1) * bh[:, None] + size - 1) // size
    cs = x0[:, None] + (i * bw[:, None]) // size
    ce = x0[:, None] + ((i + 1) * bw[:, None] + size - 1) // size
    row = (w + 1)[:, None, None]  # (k, 1, 1)
    start = base[inds][:, None] + torch.arange(3, device=boxes.device)[None, :] * ((h + 1) * (w + 1))[:, None]

    def at(r, c):  # (k, 3, size, size) table values at rows r (k, size) and columns c (k, size)
        pos = r[:, :, None] * row + c[:, None, :]
        return flat[start[:, :, None, None] + pos[:, None]]

    total = at(re, ce) - at(rs, ce) - at(re, cs) + at(rs, cs)
    kh = (re - rs).to(torch.float32)[:, None, :, None]
    kw = (ce - cs).to(torch.float32)[:, None, None, :]
    return total.to(torch.float32) / kh / kw, valid
