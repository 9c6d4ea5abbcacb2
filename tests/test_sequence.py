import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from polyrnn.data.augment import hflip, hflip_box
from polyrnn.data.crop import CropBox
from polyrnn.data.sequence import (
    canonical_start,
    polygon_to_cells,
    polygon_to_tokens,
    smooth_targets,
    tokens_to_polygon,
)
from polyrnn.geometry import mask_iou, rasterize, signed_area

D = 28
polygons = st.lists(st.tuples(st.floats(-2, 30), st.floats(-2, 30)), min_size=3, max_size=60).map(
    lambda pts: np.array(pts, dtype=np.float64)
)


@settings(max_examples=300, deadline=None)
@given(polygons, st.integers(3, 70))
def test_quantisation_invariants(poly, max_len):
    cells = polygon_to_cells(poly, D, max_len=max_len)
    assert cells.dtype == np.int64 and cells.ndim == 2 and cells.shape[1] == 2
    assert ((cells >= 0) & (cells < D)).all()
    assert len(cells) <= max(max_len, 0) or len(cells) < 3
    if len(cells) >= 3:
        # no repeated cell anywhere, so no consecutive repeats either
        assert len(np.unique(cells, axis=0)) == len(cells)
        assert signed_area(cells) >= 0
        if len(cells) > 3:
            prev, nxt = np.roll(cells, 1, 0), np.roll(cells, -1, 0)
            a, b = cells - prev, nxt - cells
            cross = a[:, 0] * b[:, 1] - a[:, 1] * b[:, 0]
            if len(cells) < max_len:  # capping may leave collinear points; uncapped never does
                assert (cross != 0).all()


def test_quantise_square_drops_collinear_and_orients():
    # a square traced anticlockwise on screen with many points on its edges
    edge = np.linspace(2.2, 20.2, 10)
    pts = np.concatenate(
        [
            np.column_stack([np.full(10, 2.2), edge]),
            np.column_stack([edge, np.full(10, 20.2)]),
            np.column_stack([np.full(10, 20.2), edge[::-1]]),
            np.column_stack([edge[::-1], np.full(10, 2.2)]),
        ]
    )
    cells = polygon_to_cells(pts, D)
    assert len(cells) == 4
    assert signed_area(cells) > 0
    assert {tuple(c) for c in cells} == {(2, 2), (20, 2), (20, 20), (2, 20)}


@settings(max_examples=100, deadline=None)
@given(st.floats(0.0, 400), st.floats(0.0, 300), st.floats(20, 200), st.floats(20, 200), st.integers(0, 1000))
def test_tokens_round_trip_and_random_start(x, y, w, h, seed):
    t = np.linspace(0, 2 * np.pi, 40, endpoint=False)
    poly = np.column_stack([x + w / 2 + w / 2 * np.cos(t), y + h / 2 + h / 2 * np.sin(t)])
    crop = CropBox.around((x, y, w, h), context=0.15)
    tokens = polygon_to_tokens(poly, crop)
    assert tokens[-1] == D * D and (tokens[:-1] < D * D).all()
    cells = crop.tokens_to_cells(tokens[:-1])
    assert canonical_start(cells) == 0
    back = tokens_to_polygon(tokens, crop)
    assert len(back) == len(tokens) - 1
    # re-quantising the decoded polygon gives the same tokens
    assert np.array_equal(polygon_to_tokens(back, crop), tokens)
    rng = np.random.default_rng(seed)
    rotated = polygon_to_tokens(poly, crop, rng=rng)
    assert sorted(rotated[:-1]) == sorted(tokens[:-1])
    k = int(np.flatnonzero(tokens == rotated[0])[0])
    assert np.array_equal(np.roll(tokens[:-1], -k), rotated[:-1])


def test_grid_polygon_is_close_to_truth():
    t = np.linspace(0, 2 * np.pi, 80, endpoint=False)
    poly = np.column_stack([200 + 80 * np.cos(t), 150 + 60 * np.sin(t)])
    crop = CropBox.around((120, 90, 160, 120))
    grid_poly = tokens_to_polygon(polygon_to_tokens(poly, crop), crop)
    iou = mask_iou(rasterize([grid_poly], 300, 400), rasterize([poly], 300, 400))
    assert iou > 0.9


def test_flip_keeps_orientation():
    img = np.zeros((100, 200, 3), np.uint8)
    poly = np.array([[20, 20], [90, 25], [80, 70], [30, 60]], dtype=float)
    box = (20.0, 20.0, 70.0, 50.0)
    flipped_img, (fpoly,) = hflip(img, [poly])
    assert signed_area(fpoly) < 0  # mirroring reverses the raw polygon
    fbox = hflip_box(box, 200)
    assert fbox == (110.0, 20.0, 70.0, 50.0)
    crop = CropBox.around(fbox)
    cells = crop.tokens_to_cells(polygon_to_tokens(fpoly, crop)[:-1])
    assert signed_area(cells) > 0


def test_tiny_object_degenerates_to_end_token():
    crop = CropBox.around((0, 0, 280, 280))
    tokens = polygon_to_tokens(np.array([[100, 100], [101, 100], [101, 101]], float), crop)
    assert list(tokens) == [D * D]


def test_smooth_targets():
    tokens = np.array([0, 14 * D + 14, D * D])
    tg = smooth_targets(tokens, D)
    assert tg.shape == (3, D * D + 1)
    np.testing.assert_allclose(tg.sum(1), 1.0, rtol=1e-6)
    centre = tg[1, : D * D].reshape(D, D)
    assert centre.argmax() == 14 * D + 14
    assert centre[14, 16] > 0 and centre[14, 17] == 0 and centre[16, 16] == 0  # radius 2
    assert tg[2, D * D] == 1.0 and tg[0, D * D] == 0.0
    assert tg[0, 0] > tg[0, 1] > tg[0, 2] > 0  # corner: mass renormalised inside the grid
