"""Photos for the serving tests."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from serve_helpers import encode


@pytest.fixture(scope="session")
def photos(tmp_path_factory):
    """scikit-image's astronaut (a public-domain NASA portrait, one face), a photo without a face,
    broken bytes and a photo over the test server's pixel limit (1200x1000)."""
    from skimage import data

    d = tmp_path_factory.mktemp("serve-photos")
    astronaut = Image.fromarray(data.astronaut())
    astronaut.save(d / "astronaut.jpg", quality=95)
    yy, xx = np.mgrid[0:240, 0:320]
    sky = Image.fromarray(np.stack([xx % 256, yy % 256, (xx + yy) % 256], -1).astype(np.uint8))
    sky.save(d / "no_face.png")
    big = Image.new("RGB", (1200, 1000), (90, 120, 200))
    return {"dir": d, "astronaut": (d / "astronaut.jpg").read_bytes(), "no_face": (d / "no_face.png").read_bytes(),
            "broken": (d / "astronaut.jpg").read_bytes()[:300], "big": encode(big, "PNG"),
            "astronaut_image": astronaut}
