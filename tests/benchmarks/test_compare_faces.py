"""benchmarks.mtcnn.compare_faces, the benchmark's check that detectors found the same faces,
against hand-made boxes."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.mtcnn import compare_faces

FACE = [100.0, 100.0, 200.0, 220.0, 0.999]
OTHER = [100.5, 300.0, 190.0, 400.0, 0.95]  # x1 within 1 px of FACE's: a sort by x1 could pair them wrongly


def photos(*faces_per_photo):
    return [np.array(f, np.float64).reshape(-1, 5) for f in faces_per_photo]


def test_the_same_faces_in_another_order_are_the_same():
    shifted = [v + 0.4 for v in FACE[:4]] + [FACE[4] - 5e-4]
    result = compare_faces(photos([FACE, OTHER], []), photos([OTHER, shifted], []))
    assert result["same"] and result["photos_differing"] == 0
    assert result["max_box_diff_px"] == pytest.approx(0.4) and result["max_prob_diff"] == pytest.approx(5e-4)


@pytest.mark.parametrize("change, kind", [((0, 1.5), "box 1.5 px away"), ((4, -0.05), "probability 0.05 lower")])
def test_a_face_moved_or_less_probable_differs(change, kind):
    moved = list(FACE)
    moved[change[0]] += change[1]
    result = compare_faces(photos([FACE, OTHER]), photos([moved, OTHER]))
    assert not result["same"], kind
    assert result["photos_differing"] == 1 and result["photos_with_other_face_counts"] == 0


def test_a_missing_or_extra_face_differs_and_is_counted():
    result = compare_faces(photos([FACE], [FACE, OTHER], []), photos([FACE, OTHER], [FACE], [OTHER]))
    assert not result["same"]
    assert result["photos_differing"] == result["photos_with_other_face_counts"] == 3
    assert [d["photo"] for d in result["differences"]] == [0, 1, 2]


def test_different_numbers_of_photos_are_an_error():
    with pytest.raises(ValueError, match="2 photos against 1"):
        compare_faces(photos([FACE], []), photos([FACE]))


def test_as_many_faces_but_one_elsewhere_differs():
    elsewhere = [400.0, 50.0, 480.0, 150.0, 0.99]  # overlaps neither face
    result = compare_faces(photos([FACE, OTHER]), photos([FACE, elsewhere]))
    assert not result["same"] and result["photos_differing"] == 1
    assert result["photos_with_other_face_counts"] == 0
