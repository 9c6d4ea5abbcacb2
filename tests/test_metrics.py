from pathlib import Path

import numpy as np
import pytest

from polyrnn.data.instance import Instance
from polyrnn.evaluation.metrics import instance_iou, summarize


def sq(x, y, s):
    return np.array([[x, y], [x + s, y], [x + s, y + s], [x, y + s]], float)


def inst(polys, ignore=(), cls="a"):
    return Instance(
        image_path=Path("x.jpg"),
        image_size=(60, 40),
        class_name=cls,
        box=(0, 0, 10, 10),
        polygons=list(polys),
        ignore_polygons=list(ignore),
    )


def test_square_vs_shifted_square():
    assert instance_iou([sq(10, 10, 10)], inst([sq(15, 10, 10)])) == pytest.approx(50 / 150)


def test_multi_part_ground_truth_counts_every_part():
    gt = inst([sq(0, 0, 10), sq(30, 0, 10)])
    assert instance_iou([sq(0, 0, 10)], gt) == pytest.approx(0.5)
    assert instance_iou([sq(0, 0, 10), sq(30, 0, 10)], gt) == 1.0


def test_ignore_band_is_not_counted():
    gt = inst([sq(10, 10, 10)], ignore=[sq(8, 8, 14)])
    assert instance_iou([sq(9, 9, 12)], gt) == 1.0  # all differences fall in the band


def test_summary_class_mean():
    s = summarize([1.0, 0.0, 0.5], ["a", "a", "b"])
    assert s["mean_iou"] == pytest.approx(0.5)
    assert s["class_mean_iou"] == pytest.approx(0.5)
    assert s["per_class"]["a"] == {"iou": 0.5, "count": 2}
    with pytest.raises(ValueError):
        summarize([1.0], [])
