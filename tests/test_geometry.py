import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polyrnn.geometry import (
    is_simple,
    mask_iou,
    mask_to_polygons,
    orient,
    rasterize,
    repair,
    signed_area,
    simplify,
)


def square(x, y, s):
    return np.array([[x, y], [x + s, y], [x + s, y + s], [x, y + s]], dtype=np.float64)


def test_rasterize_pixel_convention():
    # (2,2)-(6,6) covers exactly pixels with column and row in 2..5
    m = rasterize([square(2, 2, 4)], 10, 10)
    assert m.sum() == 16
    rows, cols = np.nonzero(m)
    assert rows.min() == 2 and rows.max() == 5 and cols.min() == 2 and cols.max() == 5


def test_iou_square_vs_shifted_square():
    a = rasterize([square(10, 10, 10)], 40, 40)
    b = rasterize([square(15, 10, 10)], 40, 40)  # overlap 5x10 = 50, union 150
    assert mask_iou(a, b) == pytest.approx(50 / 150)
    assert mask_iou(a, a) == 1.0


def test_iou_ignores_band():
    gt = rasterize([square(10, 10, 10)], 40, 40)
    pred = rasterize([square(10, 10, 12)], 40, 40)  # 44 extra pixels on two sides
    band = rasterize([square(9, 9, 14)], 40, 40) & ~rasterize([square(11, 11, 8)], 40, 40)
    assert mask_iou(pred, gt) < 1.0
    # within the band nothing counts; outside it pred and gt agree
    assert mask_iou(pred, gt, band) == 1.0


def test_multi_part_union():
    parts = [square(0, 0, 4), square(10, 10, 4)]
    m = rasterize(parts, 20, 20)
    assert m.sum() == 32
    assert mask_iou(rasterize(parts[:1], 20, 20), m) == pytest.approx(0.5)


def test_iou_shape_mismatch_is_clear():
    with pytest.raises(ValueError, match="shapes differ"):
        mask_iou(np.zeros((3, 3), bool), np.zeros((4, 4), bool))


def test_orientation_and_area():
    sq = square(0, 0, 2)
    assert signed_area(sq) == pytest.approx(4.0)  # (0,0)->(2,0)->(2,2): clockwise on screen, positive
    rev = sq[::-1]
    assert signed_area(rev) < 0
    fixed = orient(rev)
    assert signed_area(fixed) > 0 and np.array_equal(fixed[0], rev[0])


def test_simplify_keeps_raw_and_drops_noise():
    t = np.linspace(0, 2 * np.pi, 200, endpoint=False)
    circle = np.column_stack([50 + 30 * np.cos(t), 50 + 30 * np.sin(t)])
    raw = circle.copy()
    simple = simplify(circle, 1.0)
    assert np.array_equal(circle, raw)
    assert 8 < len(simple) < 60
    assert mask_iou(rasterize([simple], 100, 100), rasterize([circle], 100, 100)) > 0.97
    assert len(simplify(circle, 1000.0)) == 3


def test_repair_bowtie():
    bowtie = np.array([[0, 0], [10, 10], [10, 0], [0, 10]], dtype=float)
    assert not is_simple(bowtie)
    fixed = repair(bowtie)
    assert is_simple(fixed) and signed_area(fixed) == pytest.approx(25.0)
    sq = square(0, 0, 3)
    assert repair(sq) is sq or np.array_equal(repair(sq), sq)


def test_mask_to_polygons_round_trip():
    m = np.zeros((30, 30), bool)
    m[3:9, 4:15] = True
    m[20, 3:12] = True  # one pixel thin
    m[25, 25] = True
    polys = mask_to_polygons(m)
    assert len(polys) == 3
    assert mask_iou(rasterize(polys, 30, 30), m) == 1.0
    assert all(signed_area(p) > 0 for p in polys)


@settings(max_examples=50, deadline=None)
@given(st.integers(1, 20), st.integers(1, 20), st.integers(2, 15), st.integers(2, 15))
def test_rectangle_round_trip(x, y, w, h):
    m = np.zeros((40, 40), bool)
    m[y : y + h, x : x + w] = True
    polys = mask_to_polygons(m)
    assert mask_iou(rasterize(polys, 40, 40), m) == 1.0
