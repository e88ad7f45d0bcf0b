"""FOV masks as arrays: binarizing, eroding, filling holes, estimating, the diameter."""


import numpy as np
import pytest

from retina_prep.errors import MaskError
from retina_prep.fov import binarize_mask, erode_mask, estimate_fov, fill_holes, fov_diameter
from retina_prep.synthetic import synthetic_fundus

from .helpers import disc, iou

# ------------------------------------------------------------ mask reading

@pytest.mark.parametrize("scale", [1, 255])
def test_binarize_values(scale):
    m = disc((20, 30), 8).astype(np.uint8) * scale
    assert np.array_equal(binarize_mask(m), m > 0)


def test_binarize_layouts():
    m = disc((20, 30), 8)
    u = m.astype(np.uint8) * 255
    assert np.array_equal(binarize_mask(u[None]), m)  # frame axis
    assert np.array_equal(binarize_mask(np.dstack([u, u, u])), m)  # RGB
    assert np.array_equal(binarize_mask(np.dstack([u, u, u])[None]), m)  # frames of RGB
    rgba = np.dstack([u, u, u, np.full_like(u, 255)])
    assert np.array_equal(binarize_mask(rgba), m)  # an opaque alpha changes nothing


def test_binarize_transparency(tmp_path):
    """A FOV saved as transparency: white (or black) everywhere, transparent outside. The colour
    alone made it all FOV (or empty); transparent pixels are outside."""
    from retina_prep.io import read_mask

    m = disc((20, 30), 8)
    a = m.astype(np.uint8) * 255
    for colour in (255, 0):
        rgba = np.dstack([np.full_like(a, colour)] * 3 + [a])
        assert np.array_equal(binarize_mask(rgba), m), colour
        la = np.dstack([np.full_like(a, colour), a])
        assert np.array_equal(binarize_mask(la), m), colour
    # colour and transparency together: inside only where both say so
    half = m.copy()
    half[:, :15] = False
    rgba = np.dstack([a, a, a, half.astype(np.uint8) * 255])
    assert np.array_equal(binarize_mask(rgba), m & half)
    # through a PNG file, as an image editor writes it
    import cv2

    cv2.imwrite(str(tmp_path / "fov.png"), np.dstack([np.full_like(a, 255)] * 3 + [a]))
    assert np.array_equal(read_mask(tmp_path / "fov.png"), m)


def test_binarize_empty():
    with pytest.raises(MaskError, match="empty"):
        binarize_mask(np.zeros((5, 5), np.uint8))


# ------------------------------------------------------------ fov

def test_erode_mask_only_at_margin():
    m = np.zeros((30, 30), bool)
    m[:, :20] = True  # touches the image border on three sides
    e = erode_mask(m, 3)
    assert e[:, :17].all() and not e[:, 17:].any()
    assert np.array_equal(erode_mask(m, 0), m)
    with pytest.raises(MaskError):
        erode_mask(disc((20, 20), 3), 10)
    with pytest.raises(ValueError):
        erode_mask(m, -1)


def test_fill_holes():
    m = disc((30, 30), 10)
    holed = m.copy()
    holed[15, 10:20] = False
    assert np.array_equal(fill_holes(holed), m)


@pytest.mark.parametrize("bg", [0, 15])
@pytest.mark.parametrize("shape", [(300, 280), (584, 565), (1200, 1300)])
def test_estimate_fov_on_synthetic(shape, bg):
    s = synthetic_fundus(shape, seed=2, background=bg, noise=2.0)
    est = estimate_fov(s.image)
    assert iou(est, s.mask) > 0.98
    assert np.array_equal(fill_holes(est), est)


def test_estimate_fov_does_not_mutate():
    s = synthetic_fundus((100, 100), seed=1)
    s.image.setflags(write=False)
    estimate_fov(s.image)


def test_estimate_fov_uniform_image():
    with pytest.raises(MaskError):
        estimate_fov(np.zeros((50, 50, 3), np.uint8))


def test_fov_diameter_cutdisc():
    m = disc((200, 300), 120)  # cut at top and bottom
    assert fov_diameter(m) == pytest.approx(240, abs=2)
