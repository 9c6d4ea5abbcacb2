import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from polyrnn.data.crop import CropBox

finite = st.floats(-500, 1500, allow_nan=False)


@st.composite
def crops(draw):
    box = (draw(finite), draw(finite), draw(st.floats(1, 800)), draw(st.floats(1, 800)))
    return CropBox.around(
        box, context=draw(st.floats(0.1, 0.2)), grid_size=draw(st.sampled_from([14, 28, 56]))
    )


@settings(max_examples=200, deadline=None)
@given(crops(), st.lists(st.tuples(finite, finite), min_size=1, max_size=10))
def test_round_trips(crop, pts):
    xy = np.array(pts, dtype=np.float64)
    np.testing.assert_allclose(crop.crop_to_image(crop.image_to_crop(xy)), xy, rtol=1e-9, atol=1e-7)
    np.testing.assert_allclose(crop.grid_to_image(crop.image_to_grid(xy)), xy, rtol=1e-9, atol=1e-7)
    g = crop.image_to_grid(xy)
    np.testing.assert_allclose(crop.image_to_grid(crop.grid_to_image(g)), g, rtol=1e-9, atol=1e-7)


@settings(max_examples=200, deadline=None)
@given(crops(), st.lists(st.tuples(st.integers(0, 13), st.integers(0, 13)), min_size=1, max_size=10))
def test_cells_tokens_and_centres(crop, cells):
    c = np.array(cells, dtype=np.int64)
    tokens = crop.cells_to_tokens(c)
    assert np.array_equal(crop.tokens_to_cells(tokens), c)
    # a cell's centre maps back into that same cell
    assert np.array_equal(crop.image_to_cells(crop.cells_to_image(c)), c)


def test_window_is_centred_with_context():
    crop = CropBox.around((100, 50, 200, 100), context=0.15)
    assert crop.side == 230
    assert (crop.x0, crop.y0) == (85, -15)
    centre = crop.image_to_crop(np.array([[200.0, 100.0]]))
    np.testing.assert_allclose(centre, [[112.0, 112.0]], atol=0.6)


def test_crop_at_border_pads_with_zeros_and_keeps_context():
    img = np.full((100, 120, 3), 200, dtype=np.uint8)
    img[:, :10] = 50  # a stripe we must find at the right place in the crop
    crop = CropBox(x0=-30, y0=-30, side=112, crop_size=224)  # 2 crop pixels per image pixel
    out = crop.crop_image(img)
    assert out.shape == (224, 224, 3) and out.dtype == np.uint8
    assert (out[:58, :, :] == 0).all()  # rows above the image: padding (30 px -> 60 crop px, minus blur)
    assert (out[:, :58] == 0).all()
    assert (out[64:, 64:76] == 50).all()  # image columns 0..9 -> crop 60..79
    assert (out[64:, 84:] == 200).all()


def test_crop_exact_pixels_when_no_resize():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (300, 300), dtype=np.uint8)
    crop = CropBox(x0=10, y0=20, side=224)
    assert np.array_equal(crop.crop_image(img), img[20:244, 10:234])


def test_flipped_window():
    crop = CropBox.around((10, 20, 30, 40), context=0.15)
    f = crop.flipped(100)
    pt = np.array([[25.0, 30.0]])
    mirrored = np.array([[100 - 25.0, 30.0]])
    a, b = crop.image_to_crop(pt), f.image_to_crop(mirrored)
    assert b[0, 0] == pytest.approx(224 - a[0, 0]) and b[0, 1] == pytest.approx(a[0, 1])


def test_degenerate_box_rejected():
    with pytest.raises(ValueError, match="no extent"):
        CropBox.around((5, 5, 0, 0))
