"""The batched MTCNN (hsnet.data.mtcnn) against facenet-pytorch's own detector, image by image.

The expectation is facenet-pytorch's ``MTCNN.detect`` run on each photo alone (its per-box
Python loop): same number of faces, boxes within 1 px, probabilities within 1e-3.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from hsnet.data.crop import Detector
from hsnet.data.mtcnn import (BatchedMTCNN, StridedMaxPool, area_resize, crop_resize_boxes, summed_area_tables,
                              with_strided_pools)

skimage_data = pytest.importorskip("skimage.data")
facenet = pytest.importorskip("facenet_pytorch")


@pytest.fixture(scope="module")
def mtcnn():
    torch.set_num_threads(1)
    return facenet.MTCNN(keep_all=True, device="cpu").eval()


def reference(mtcnn, image: np.ndarray) -> np.ndarray:
    """facenet-pytorch's boxes and probabilities for one photo, (k, 5), most probable first;
    none for a photo its pyramid can't hold (facenet-pytorch raises on those)."""
    if min(image.shape[:2]) < mtcnn.min_face_size:
        return np.zeros((0, 5))
    boxes, probs = mtcnn.detect(Image.fromarray(image))
    if boxes is None:
        return np.zeros((0, 5))
    found = np.concatenate([np.asarray(boxes, np.float64), np.asarray(probs, np.float64)[:, None]], 1)
    return found[np.argsort(-found[:, 4], kind="stable")]


def assert_same(found: np.ndarray, expected: np.ndarray, name: str) -> None:
    found = found[np.argsort(-found[:, 4], kind="stable")]
    assert found.shape == expected.shape, f"{name}: {len(found)} faces, facenet-pytorch found {len(expected)}"
    if len(found):
        assert np.abs(found[:, :4] - expected[:, :4]).max() <= 1.0, name
        assert np.abs(found[:, 4] - expected[:, 4]).max() <= 1e-3, name


def mixed_photos() -> dict[str, np.ndarray]:
    """Photos of different sizes: faces, several faces, no face, and ones too small for a face."""
    astro = skimage_data.astronaut()
    rng = np.random.default_rng(0)
    canvas = np.full((762, 562, 3), 150, np.uint8)  # KDEF's portrait format, the face off centre
    canvas[200:200 + 400, 100:100 + 400] = np.asarray(Image.fromarray(astro).resize((400, 400)))
    two = np.concatenate([astro, astro[:, ::-1]], axis=1)  # 512 x 1024, two faces
    return {
        "astronaut": astro,
        "astronaut_mirror": np.ascontiguousarray(astro[:, ::-1]),
        "astronaut_small": np.asarray(Image.fromarray(astro).resize((160, 160))),
        "astronaut_cut": np.ascontiguousarray(astro[30:330, 100:500]),  # the face near the top edge
        "kdef_like": canvas,
        "two_faces": np.ascontiguousarray(two),
        "coffee": skimage_data.coffee(),  # no face
        "grey": np.full((512, 512, 3), 127, np.uint8),
        "noise": rng.integers(0, 255, (200, 300, 3), dtype=np.uint8),
        "tiny": rng.integers(0, 255, (12, 16, 3), dtype=np.uint8),  # below min_face_size
        "thin": rng.integers(0, 255, (19, 400, 3), dtype=np.uint8),
    }


def test_astronaut_matches_facenet_pytorch(mtcnn):
    image = skimage_data.astronaut()
    expected = reference(mtcnn, image)
    assert len(expected) == 1 and expected[0, 4] > 0.99  # the test photo has one clear face
    assert_same(BatchedMTCNN(mtcnn=mtcnn)([image])[0], expected, "astronaut")


def test_mixed_folder_in_one_batch_matches_facenet_pytorch(mtcnn):
    photos = mixed_photos()
    found = BatchedMTCNN(mtcnn=mtcnn)(list(photos.values()))
    assert len(found) == len(photos)
    faces = {}
    for (name, image), boxes in zip(photos.items(), found):
        expected = reference(mtcnn, image)
        assert_same(boxes, expected, name)
        faces[name] = len(boxes)
    assert faces["two_faces"] >= 2 and faces["astronaut_cut"] >= 1 and faces["kdef_like"] >= 1
    assert faces["tiny"] == faces["thin"] == faces["grey"] == 0


def test_sample_images_match_facenet_pytorch(mtcnn, tmp_path):
    from hsnet.data.sample import generate

    generate(tmp_path, per_class=1)
    files = sorted(tmp_path.rglob("*.png"))
    assert len(files) >= 20
    images = [np.asarray(Image.open(f).convert("RGB")) for f in files]
    found = BatchedMTCNN(mtcnn=mtcnn)(images)
    for f, image, boxes in zip(files, images, found):
        assert_same(boxes, reference(mtcnn, image), f.name)
    with_face = sum(len(b) > 0 for b in found)
    assert 0 < with_face < len(files)  # the cartoon faces: most found, some not (both paths tested)


def test_a_batch_gives_each_photo_what_it_gets_alone(mtcnn):
    photos = list(mixed_photos().values())[:6]
    detector = BatchedMTCNN(mtcnn=mtcnn)
    together = detector(photos)
    for image, boxes in zip(photos, together):
        alone = detector([image])[0]
        assert boxes.shape == alone.shape
        np.testing.assert_allclose(boxes, alone, atol=1e-3)


def test_box_crops_equal_area_resizing_of_each_box():
    """The one-operation crop equals facenet-pytorch's slice-and-interpolate(area) per box."""
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, (3, 37, 53), dtype=np.uint8), rng.integers(0, 256, (3, 64, 41), dtype=np.uint8)]
    flat, base, offset = [], [], 0
    for img in images:
        t = torch.zeros((3, img.shape[1] + 1, img.shape[2] + 1), dtype=torch.int32)
        t[:, 1:, 1:] = torch.from_numpy(img).int().cumsum(1).cumsum(2)
        flat.append(t.reshape(-1))
        base.append(offset)
        offset += t.numel()
    hw = torch.tensor([img.shape[1:] for img in images])
    # boxes inside, over the edges, smaller and larger than the output, one empty (right of the image)
    boxes = torch.tensor([[3.7, 2.2, 30.9, 29.5], [-5.0, -8.0, 20.0, 17.0], [40.0, 30.0, 70.0, 60.0],
                          [10.0, 10.0, 14.0, 13.0], [0.0, 0.0, 53.0, 37.0], [60.0, 5.0, 80.0, 25.0],
                          [1.0, 50.0, 40.0, 64.0]])
    inds = torch.tensor([0, 0, 0, 1, 0, 0, 1])
    crops, valid = crop_resize_boxes(torch.cat(flat), torch.tensor(base), hw, boxes, inds, 24)
    assert valid.tolist() == [True, True, True, True, True, False, True]
    normalized, _ = crop_resize_boxes(torch.cat(flat), torch.tensor(base), hw, boxes, inds, 24, normalize=True)
    assert torch.equal(normalized, (crops - 127.5) * 0.0078125)  # R-Net's input as detect_face makes it
    for k in range(len(boxes)):
        if not valid[k]:
            continue
        x, y, ex, ey = boxes[k].trunc().int().tolist()
        h, w = images[inds[k]].shape[1:]
        x, y, ex, ey = max(x, 1), max(y, 1), min(ex, w), min(ey, h)
        region = torch.from_numpy(images[inds[k]]).float()[None, :, y - 1:ey, x - 1:ex]
        expected = torch.nn.functional.interpolate(region, size=(24, 24), mode="area")[0]
        torch.testing.assert_close(crops[k], expected, atol=1e-4, rtol=0)


def test_detector_uses_the_batched_path_and_keeps_tiny_images_apart(mtcnn):
    """crop's Detector: the same boxes as facenet-pytorch, a tiny image in the batch gives none."""
    astro = skimage_data.astronaut()
    detector = Detector("cpu")
    assert isinstance(detector.batched, BatchedMTCNN) and detector.batched.mtcnn is detector.mtcnn
    tiny = np.zeros((8, 8, 3), np.uint8)
    found = detector([astro, tiny])
    assert_same(found[0], reference(mtcnn, astro), "astronaut")
    assert found[1].shape == (0, 5)


def test_pyramid_levels_from_the_summed_area_table_equal_area_interpolation_bit_for_bit(mtcnn):
    """P-Net's input at every scale of MTCNN's pyramid: the summed-area-table resize against
    ``interpolate(mode="area")`` of the float image, as facenet-pytorch computes it (channels-last
    strides from its permute) and contiguous, and normalised, on photos of several shapes."""
    rng = np.random.default_rng(2)
    photos = [mixed_photos()["kdef_like"], rng.integers(0, 256, (2, 101, 77, 3), dtype=np.uint8),
              rng.integers(0, 256, (1, 1024, 681, 3), dtype=np.uint8)]
    for raw in photos:
        raw = torch.as_tensor(raw if raw.ndim == 4 else raw[None])
        image = raw.permute(0, 3, 1, 2).float()
        tables = summed_area_tables(raw, torch.int32)
        h, w = raw.shape[1:3]
        scale, levels = 12.0 / mtcnn.min_face_size, 0
        while min(h, w) * scale >= 12:
            size = (int(h * scale + 1), int(w * scale + 1))
            found = area_resize(tables, size)
            expected = torch.nn.functional.interpolate(image, size=size, mode="area")
            assert torch.equal(found, expected), size
            assert torch.equal(found, torch.nn.functional.interpolate(image.contiguous(), size=size, mode="area"))
            # P-Net's input as detect_face normalises it, in fewer passes
            assert torch.equal(area_resize(tables, size, normalize=True), (expected - 127.5) * 0.0078125), size
            scale, levels = scale * mtcnn.factor, levels + 1
        assert levels >= 4


@pytest.mark.parametrize("kernel,stride", [(2, 2), (3, 2), (3, 1), (2, 3)])
def test_strided_max_pool_equals_max_pool2d(kernel, stride):
    """The replacement pool on even, odd and minimal sizes, with and without ceil_mode (the last
    window over the edge), on values with ties and negative numbers."""
    rng = np.random.default_rng(3)
    for ceil_mode in (True, False):
        for h, w in [(kernel, kernel), (kernel + 1, kernel + 2), (22, 22), (23, 46), (57, 41)]:
            x = torch.from_numpy(rng.integers(-3, 4, (2, 5, h, w)).astype(np.float32))
            expected = torch.nn.MaxPool2d(kernel, stride, ceil_mode=ceil_mode)(x)
            assert torch.equal(StridedMaxPool(kernel, stride, ceil_mode)(x), expected), (h, w, ceil_mode)


def test_networks_with_strided_pools_are_facenet_pytorchs_with_the_same_weights(mtcnn):
    """The copies keep facenet-pytorch's parameter tensors and forward, give its outputs, and
    leave the MTCNN object they come from as it was."""
    torch.manual_seed(0)
    for net, shape in ((mtcnn.pnet, (2, 3, 61, 47)), (mtcnn.rnet, (5, 3, 24, 24)), (mtcnn.onet, (5, 3, 48, 48))):
        fast = with_strided_pools(net)
        assert any(isinstance(layer, StridedMaxPool) for layer in fast.children())
        assert not any(isinstance(layer, StridedMaxPool) for layer in net.children())
        assert all(a is b for a, b in zip(fast.parameters(), net.parameters()))
        x = torch.rand(shape) * 2 - 1
        with torch.no_grad():
            for a, b in zip(fast(x), net(x)):
                assert torch.equal(a, b)  # the same operations on the same values


def test_networks_run_in_full_fp32_and_the_tf32_settings_come_back(mtcnn):
    """On a GPU, cuDNN's TF32 convolutions (PyTorch's default; hsnet.device turns TF32 on for
    training) moved boxes by pixels from facenet-pytorch's fp32 ones (docs/performance.md,
    section 8). So the detector's networks run with TF32 off, also while threads share the
    detector, and the process's settings come back after."""
    from tf32 import restore, saved, tf32

    from hsnet.device import enable_tf32

    before, seen = saved(), []
    detector = BatchedMTCNN(mtcnn=mtcnn)
    hooks = [net.register_forward_pre_hook(lambda module, args: seen.append(tf32()))
             for net in (detector.pnet, detector.rnet, detector.onet)]
    try:
        enable_tf32()  # as after hsnet.device.pick_device on a GPU
        image = skimage_data.astronaut()
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(4) as pool:
            found = list(pool.map(lambda _: detector([image])[0], range(8)))
        assert all(len(f) == 1 for f in found)
        assert len(seen) >= 8 * 3 and set(seen) == {(False, False)}, set(seen)
        assert tf32() == (True, True)
    finally:
        for hook in hooks:
            hook.remove()
        restore(before)


@pytest.mark.parametrize("device", [
    "cpu",  # no TF32 here: the same code, so that the GPU run can't fail on the test's own mistakes
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="TF32 exists on a GPU only (benchmarks/gpu_session.sh)")),
])
def test_on_a_gpu_with_tf32_on_the_faces_are_facenet_pytorchs_fp32_ones(device):
    """The defect the H200 found: with TF32 on (as hsnet.device.pick_device leaves it) the detector on
    a GPU found other faces than facenet-pytorch's fp32 detector on 6 of 64 photos. Now the detector
    runs in full fp32 itself: the mixed folder on the GPU, TF32 on, against facenet-pytorch on the GPU
    with TF32 off."""
    from tf32 import restore, saved

    from hsnet.device import enable_tf32, full_fp32

    before = saved()
    try:
        ref = facenet.MTCNN(keep_all=True, device=device).eval()
        photos = mixed_photos()
        with full_fp32():
            expected = {name: reference(ref, image) for name, image in photos.items()}
        enable_tf32()
        found = BatchedMTCNN(device, mtcnn=ref)(list(photos.values()))
        assert len(found) == len(photos)
        for (name, _), boxes in zip(photos.items(), found):
            assert_same(boxes, expected[name], name)
    finally:
        restore(before)


def corner_faces(e: int) -> tuple[np.ndarray, np.ndarray]:
    """Two 500x500 photos: A, a small face (about 30 px) in the bottom-right corner; B, a large face
    (about 390 px) whose box starts ``e`` px or so left of and above the image (cut by the border)."""
    astro = skimage_data.astronaut()
    big = np.asarray(Image.fromarray(astro).resize((1536, 1536)))
    small = np.asarray(Image.fromarray(astro).resize((171, 171)))  # face box about [60, 21, 89, 57]
    a = np.full((500, 500, 3), 120, np.uint8)
    ox, oy = 495 - 89, 495 - 57
    a[oy:, ox:] = small[:500 - oy, :500 - ox]
    b = np.ascontiguousarray(big[186 + e:186 + e + 500, 543 + e:543 + e + 500])
    return a, b


@pytest.mark.parametrize("e", [40, 80])
def test_a_face_in_one_photo_is_not_suppressed_by_a_face_in_another_photo_of_the_batch(mtcnn, e):
    """Attack session 13. NMS "within each image" is done with the coordinate trick (torchvision's batched_nms for
    <= 1000 boxes, facenet-pytorch's batched_nms_numpy after O-Net): each image's boxes are shifted
    by index * (max coordinate + 1), which keeps images apart only for boxes with non-negative
    coordinates. A face cut by the top-left border has a box with negative x1, y1; shifted, it
    lands on the other photo's face in its bottom-right corner, and one of the two faces is
    suppressed. facenet-pytorch on each photo alone finds both; so does BatchedMTCNN on each alone.
    (hsnet predict on a GPU and crop with batches go through this path; the crop Detector too.)
    facenet-pytorch's own MTCNN.detect on the pair as one batch drops the same face: the fault is
    inherited from its batch mode, but hsnet's contract is per photo (tests/data/test_mtcnn.py,
    test_a_batch_gives_each_photo_what_it_gets_alone) and hsnet batches photos of any sizes."""
    a, b = corner_faces(e)
    expected = [reference(mtcnn, a), reference(mtcnn, b)]
    assert len(expected[0]) == 1 and len(expected[1]) == 1 and expected[1][0, 0] < 0  # the set-up holds
    found = BatchedMTCNN(mtcnn=mtcnn)([a, b])
    assert_same(found[0], expected[0], "A (face bottom-right), batched with B")
    assert_same(found[1], expected[1], "B (face over the top-left border), batched with A")
    found = Detector("cpu")([a, b])  # what predict (GPU) and crop (batch_size > 1 on a GPU) call
    assert_same(found[0], expected[0], "A through crop.Detector")
    assert_same(found[1], expected[1], "B through crop.Detector")
