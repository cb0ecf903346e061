"""The built-in sample dataset: synthetic cartoon faces drawn procedurally, no downloads.

Six characters (face shape, skin tone, hair, eye colour differ) show the seven basic
expressions through eyebrow angle and height, eye openness, mouth curve, width and
openness; position, scale, rotation, lighting, background and noise are jittered, and
expression parameters are jittered too, so neighbouring classes (fear/surprise,
anger/disgust) overlap a little and the task is learnable but not trivial.

Written in the FERG-DB layout (``{character}/{character}_{emotion}/{character}_{emotion}_{n}.png``)
so the ``ferg`` importer reads it. Every image comes from its own random stream seeded by
(seed, character, emotion, n), and PNGs are stored uncompressed, so the files are
byte-identical on every run and machine for a given seed.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from ..errors import HSNetError
from ..io import check_writable
from .datasets import FERG_CHARACTERS, FERG_CLASSES

# character: (face width, face height, skin RGB, hair RGB, hair style, eye RGB)
CHARACTERS = {
    "aia": (0.62, 0.74, (241, 194, 160), (40, 30, 25), "bob", (60, 40, 20)),
    "bonnie": (0.70, 0.70, (255, 220, 190), (230, 180, 60), "pigtails", (40, 90, 160)),
    "jules": (0.58, 0.80, (190, 140, 100), (20, 20, 20), "spiky", (30, 30, 30)),
    "malcolm": (0.68, 0.78, (160, 110, 80), (90, 90, 90), "bald", (50, 30, 10)),
    "mery": (0.64, 0.72, (225, 175, 150), (150, 40, 30), "long", (30, 110, 60)),
    "ray": (0.72, 0.68, (120, 80, 60), (60, 40, 100), "flat", (20, 20, 20)),
}
assert tuple(CHARACTERS) == FERG_CHARACTERS

# emotion: (brow tilt [+ = inner ends down], brow lift, eye openness, mouth curve [+ = smile],
#           mouth openness, mouth width)
EXPRESSIONS = {
    "anger": (0.9, -0.05, 0.55, -0.35, 0.10, 0.45),
    "disgust": (0.5, -0.08, 0.35, -0.55, 0.05, 0.55),
    "fear": (-0.6, 0.15, 1.10, -0.15, 0.45, 0.60),
    "joy": (0.0, 0.05, 0.65, 0.85, 0.30, 0.75),
    "neutral": (0.0, 0.0, 0.75, 0.0, 0.0, 0.50),
    "sadness": (-0.8, 0.02, 0.50, -0.70, 0.0, 0.50),
    "surprise": (0.0, 0.25, 1.20, 0.05, 0.85, 0.40),
}
assert tuple(EXPRESSIONS) == FERG_CLASSES
JITTER = (0.125, 0.025, 0.075, 0.10, 0.05, 0.04)  # std of each expression parameter
POSE = {"scale": (0.9, 1.0), "shift": 0.015, "rotate": 5.0}  # face scale, centre shift (std), rotation (deg)


def _rng(seed: int, *key) -> np.random.Generator:
    digest = hashlib.sha256(repr((seed,) + key).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def draw_face(character: str, emotion: str, rng: np.random.Generator, size: int = 112) -> Image.Image:
    """One sample image (RGB, ``size`` x ``size``)."""
    fw, fh, skin, hair, style, eye_rgb = CHARACTERS[character]
    tilt, lift, eye_open, curve, mouth_open, mouth_w = (
        v + j * rng.standard_normal() for v, j in zip(EXPRESSIONS[emotion], JITTER))
    s = size * 2  # draw at twice the size, then rotate and downsample (anti-aliasing)
    bg = tuple(int(c) for c in rng.integers(40, 230, 3))
    img = Image.new("RGB", (s, s), bg)
    scale = s * rng.uniform(*POSE["scale"])
    cx = s / 2 + rng.normal(0, s * POSE["shift"])
    cy = s / 2 + rng.normal(0, s * POSE["shift"])
    face = _Face(ImageDraw.Draw(img), cx, cy, fw * scale / 2, fh * scale / 2, s)
    face.head(style, skin, hair)
    face.eyes(max(eye_open, 0.12), tilt, lift, eye_rgb, hair if style != "bald" else None)
    face.nose(skin)
    face.mouth(curve, max(mouth_open, 0.0), mouth_w)
    return _photograph(img, rng, size, bg)


class _Face:
    """Drawing in face coordinates: (0, 0) the centre, +-1 the face's half width / height."""

    def __init__(self, d: ImageDraw.ImageDraw, cx: float, cy: float, w: float, h: float, s: int):
        self.d, self.cx, self.cy, self.w, self.h, self.s = d, cx, cy, w, h, s

    def box(self, x, y, rx, ry):
        cx, cy, w, h = self.cx, self.cy, self.w, self.h
        return [cx + (x - rx) * w, cy + (y - ry) * h, cx + (x + rx) * w, cy + (y + ry) * h]

    def point(self, x, y):
        return (self.cx + x * self.w, self.cy + y * self.h)

    def head(self, style: str, skin, hair) -> None:
        d, box = self.d, self.box
        if style == "long":
            d.rectangle(box(0, 0.35, 1.12, 0.75), fill=hair)
        if style == "pigtails":
            d.ellipse(box(-1.1, -0.1, 0.28, 0.35), fill=hair)
            d.ellipse(box(1.1, -0.1, 0.28, 0.35), fill=hair)
        d.ellipse(box(0, 0, 1, 1), fill=skin, outline=tuple(int(c * 0.7) for c in skin), width=3)
        if style in ("bob", "long", "pigtails"):
            d.chord(box(0, -0.55, 1.02, 0.55), 180, 360, fill=hair)
        elif style == "spiky":
            for k in range(7):
                x = -0.8 + k * 0.27
                d.polygon([self.point(x - 0.15, -0.72), self.point(x, -1.22), self.point(x + 0.15, -0.72)],
                          fill=hair)
            d.chord(box(0, -0.62, 0.95, 0.4), 180, 360, fill=hair)
        elif style == "flat":
            d.rectangle(box(0, -0.82, 0.85, 0.18), fill=hair)
        # bald: nothing

    def eyes(self, eye_open: float, tilt: float, lift: float, eye_rgb, hair) -> None:
        d, box = self.d, self.box
        brow_y, eye_y = -0.32 - lift, -0.12
        brow = tuple(int(c * 0.8) for c in hair) if hair is not None else (60, 40, 30)
        for side in (-1, 1):
            ex = side * 0.38
            # eyes: white, iris, pupil; height by openness
            ry = 0.11 * eye_open
            d.ellipse(box(ex, eye_y, 0.2, ry), fill=(250, 250, 250), outline=(30, 30, 30), width=2)
            iris = min(0.1, ry * 0.95)
            d.ellipse(box(ex, eye_y, 0.1, iris), fill=eye_rgb)
            d.ellipse(box(ex, eye_y, 0.045, min(0.045, iris)), fill=(10, 10, 10))
            # eyebrows: inner end lower when tilt > 0 (anger), higher when tilt < 0 (sadness, fear)
            inner = self.point(side * 0.12, brow_y + 0.1 * tilt)
            outer = self.point(side * 0.6, brow_y - 0.1 * tilt)
            d.line([inner, outer], fill=brow, width=max(3, int(self.s * 0.02)))

    def nose(self, skin) -> None:
        self.d.line([self.point(0, -0.02), self.point(-0.06, 0.2), self.point(0.02, 0.22)],
                    fill=tuple(int(c * 0.75) for c in skin), width=2)

    def mouth(self, curve: float, mouth_open: float, mouth_w: float) -> None:
        """A curve through the corners and the centre; open mouths are filled polygons."""
        my, half = 0.5, mouth_w / 2
        pts_top, pts_bottom = [], []
        for k in range(17):
            t = -1 + k / 8
            x = t * half
            y = my + curve * 0.12 * (1 - t * t)  # smile: centre below the corners (y grows down)
            pts_top.append(self.point(x, y - 0.02))
            pts_bottom.append(self.point(x, y + mouth_open * 0.22 * (1 - t * t) + 0.02))
        if mouth_open > 0.08:
            self.d.polygon(pts_top + pts_bottom[::-1], fill=(90, 20, 30), outline=(60, 10, 20))
            if curve > 0.3:  # teeth in a smile
                self.d.polygon(pts_top[3:14] + [(p[0], p[1] + 0.05 * self.h) for p in pts_top[13:2:-1]],
                               fill=(245, 245, 240))
        else:
            self.d.line(pts_top, fill=(120, 30, 40), width=max(3, int(self.s * 0.018)))


def _photograph(img: Image.Image, rng: np.random.Generator, size: int, bg) -> Image.Image:
    """Rotate, downsample, blur, light from a random side and add sensor noise."""
    img = img.rotate(rng.uniform(-POSE["rotate"], POSE["rotate"]), resample=Image.BICUBIC, fillcolor=bg)
    img = img.resize((size, size), Image.LANCZOS).filter(ImageFilter.GaussianBlur(rng.uniform(0, 0.6)))
    arr = np.asarray(img, dtype=np.float32)
    # lighting: a linear gradient in a random direction, then sensor noise
    angle = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    light = 1 + rng.uniform(0.1, 0.35) * (np.cos(angle) * xx + np.sin(angle) * yy) * 2
    arr = arr * light[..., None] * rng.uniform(0.8, 1.15) + rng.normal(0, rng.uniform(2, 8), arr.shape)
    return Image.fromarray(np.clip(arr + 0.5, 0, 255).astype(np.uint8), "RGB")


# the built-in sample as data.dvc records it (hsnet data sample's defaults): 6 characters x 7
# expressions x PER_CLASS photos of SIZE px, drawn with SEED
PER_CLASS, SIZE, SEED = 30, 112, 0


def generate(out: str | os.PathLike, *, per_class: int = PER_CLASS, size: int = SIZE, seed: int = SEED,
             characters=FERG_CHARACTERS) -> int:
    """Write ``per_class`` images per character and emotion under ``out``; returns the count.

    Existing files with the same name are overwritten (atomically, so never half-written); a
    folder holding other files (another draw's, or a real data set) is refused: its images would
    be imported with this draw's.
    """
    out = Path(out)
    names = {f"{c}/{c}_{e}/{c}_{e}_{i}.png" for c in characters for e in FERG_CLASSES
             for i in range(1, per_class + 1)}
    other = sorted(rel for rel in (p.relative_to(out).as_posix() for p in out.rglob("*") if not p.is_dir())
                   if rel not in names and not rel.rsplit("/", 1)[-1].startswith(".")) if out.is_dir() else []
    if other:
        raise HSNetError(f"--out {out} holds {len(other)} file(s) that this draw doesn't write (e.g. "
                         f"{', '.join(other[:3])}): another draw's or another data set's, which import would "
                         "read with it. Give an empty or new folder")
    check_writable(out, "--out")
    n = 0
    for character in characters:
        for emotion in FERG_CLASSES:
            folder = out / character / f"{character}_{emotion}"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(1, per_class + 1):
                img = draw_face(character, emotion, _rng(seed, character, emotion, i), size)
                path = folder / f"{character}_{emotion}_{i}.png"
                tmp = path.with_name(f".{path.name}.tmp")
                img.save(tmp, format="PNG", compress_level=0)
                os.replace(tmp, path)
                n += 1
    return n
