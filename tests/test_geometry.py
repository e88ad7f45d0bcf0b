"""Crop to the FOV, resize, and map back: against slicing, warpAffine and round trips."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retina_prep.geometry import (
    Transform,
    fov_square,
    fov_transform,
    points_to_original,
    points_to_output,
    to_original,
    warp,
)


def _disc(h, w, cy, cx, r):
    y, x = np.mgrid[0:h, 0:w]
    return (y - cy) ** 2 + (x - cx) ** 2 <= r * r


def test_square_of_a_disc_cut_by_the_frame():
    m = _disc(100, 160, 50, 80, 60)  # cut at top and bottom
    x0, y0, side = fov_square(m)
    assert side == 121 and x0 == 20 and y0 == 50 - 60  # centred on the disc, reaching outside


def test_crop_is_slicing_with_fill():
    rng = np.random.default_rng(0)
    m = _disc(100, 160, 50, 80, 60)
    img = rng.integers(0, 255, (100, 160, 3)).astype(np.uint8)
    t = fov_transform(m)
    got = warp(img, t, fill=7)
    x0, y0, side = t.crop
    ref = np.full((side, side, 3), 7, np.uint8)
    for yy in range(side):
        for xx in range(side):
            sy, sx = y0 + yy, x0 + xx
            if 0 <= sy < 100 and 0 <= sx < 160:
                ref[yy, xx] = img[sy, sx]
    np.testing.assert_array_equal(got, ref)
    assert t.output_size == (side, side)


@pytest.mark.parametrize("size", [37, 64, 200])
def test_matrix_is_what_resize_does(size):
    """The recorded matrix is the map cv2.resize applies: warping the original with it
    (bilinear) gives the resized crop, away from the padded border."""
    import cv2

    rng = np.random.default_rng(1)
    m = _disc(90, 120, 45, 60, 40)
    img = cv2.GaussianBlur(rng.uniform(0, 255, (90, 120)).astype(np.float32), (0, 0), 3)
    t = fov_transform(m, size=size)
    got = warp(img, t, interpolation="linear")
    ref = cv2.warpAffine(img, t.array, (size, size), flags=cv2.INTER_LINEAR)
    inner = slice(2, size - 2)
    np.testing.assert_allclose(got[inner, inner], ref[inner, inner], atol=1e-3)


@settings(max_examples=30, deadline=None)
@given(h=st.integers(40, 120), w=st.integers(40, 120), size=st.sampled_from([32, 64, 128, 257]),
       fy=st.floats(0.3, 0.7), fx=st.floats(0.3, 0.7), fr=st.floats(0.3, 0.8))
def test_points_round_trip_and_centre(h, w, size, fy, fx, fr):
    m = _disc(h, w, fy * h, fx * w, fr * min(h, w))
    if not m.any():
        return
    t = fov_transform(m, size=size)
    rng = np.random.default_rng(h * w)
    p = rng.uniform(-10, 130, (20, 2))
    np.testing.assert_allclose(points_to_original(points_to_output(p, t), t), p, atol=1e-9)
    x0, y0, side = t.crop
    centre = [[x0 + (side - 1) / 2, y0 + (side - 1) / 2]]
    np.testing.assert_allclose(points_to_output(centre, t), [[(size - 1) / 2] * 2], atol=1e-9)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 1000), size=st.sampled_from([48, 96, 160, 300]))
def test_label_round_trip_differs_only_at_edges(seed, size):
    """A label map cut and resized with nearest neighbour, then restored, equals the original
    except at pixels within one output pixel (in original pixels) of a label edge."""
    import cv2

    rng = np.random.default_rng(seed)
    h, w = rng.integers(60, 140, 2)
    m = _disc(h, w, h / 2, w / 2, 0.45 * min(h, w))
    labels = (cv2.GaussianBlur(rng.uniform(0, 1, (h, w)), (0, 0), 4) > 0.5) & m
    t = fov_transform(m, size=size)
    small = warp(labels, t)
    assert small.dtype == np.bool_ and small.shape == (size, size)
    back = to_original(small, t)
    reach = int(np.ceil(0.5 / t.scale + 0.5))  # nearest there and back: within this of the pixel
    k = np.ones((2 * reach + 1, 2 * reach + 1), np.uint8)
    edge = cv2.dilate(labels.view(np.uint8), k) != cv2.erode(labels.view(np.uint8), k)
    x0, y0, side = t.crop
    covered = np.zeros((h, w), bool)
    covered[max(y0, 0):y0 + side, max(x0, 0):x0 + side] = True
    assert not ((back != labels) & ~edge & covered).any()


def test_probability_map_round_trip_is_close():
    import cv2

    rng = np.random.default_rng(3)
    m = _disc(300, 340, 150, 170, 140)
    prob = cv2.GaussianBlur(rng.uniform(0, 1, (300, 340)).astype(np.float32), (0, 0), 8)
    t = fov_transform(m, size=128)
    back = to_original(warp(prob, t), t)
    inner = cv2.erode(m.view(np.uint8), np.ones((9, 9), np.uint8)) > 0
    assert np.abs(back - prob)[inner].max() < 0.01


def test_record_round_trip_and_errors():
    t = fov_transform(_disc(50, 60, 25, 30, 20), size=32)
    assert Transform.from_dict(t.to_dict()) == t
    with pytest.raises(ValueError, match="geometry"):
        Transform.from_dict({"matrix": [[1, 0]]})
    with pytest.raises(ValueError, match="empty"):
        fov_transform(np.zeros((5, 5), bool))
    with pytest.raises(ValueError, match="transform is for"):
        warp(np.zeros((10, 10)), t)
    with pytest.raises(ValueError, match="output is"):
        to_original(np.zeros((10, 10)), t)


@pytest.mark.parametrize("size", [17, 50, 61, 150])
def test_nearest_samples_the_pixel_under_each_output_centre(size):
    """Nearest neighbour is centre-aligned: output pixel j shows the original pixel under its
    centre, x = (j + 0.5) / s - 0.5 rounded half up (OpenCV's plain INTER_NEAREST is not)."""
    rng = np.random.default_rng(size)
    m = np.ones((47, 53), bool)
    labels = rng.integers(0, 7, (47, 53)).astype(np.uint8)
    t = fov_transform(m, crop=False, size=size)
    got = warp(labels, t, interpolation="nearest")
    ys = np.floor((np.arange(size) + 0.5) * 47 / size).astype(int)
    xs = np.floor((np.arange(size) + 0.5) * 53 / size).astype(int)
    np.testing.assert_array_equal(got, labels[np.ix_(ys, xs)])
