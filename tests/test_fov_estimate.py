"""FOV estimation on synthetic discs with known ground truth, and on DRIVE."""

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retina_prep.fov import estimate_fov, fill_holes, fov_diameter
from retina_prep.io import read_image, read_mask
from retina_prep.synthetic import synthetic_fundus

CASES = {
    "black background": dict(background=0),
    "gray background": dict(background=18),
    "HRF-like flat cuts": dict(shape=(1168, 1752), cut=0.8, radius=0.55),
    "tab at the rim": dict(notch="tab"),
    "notch in the rim": dict(notch="notch"),
    "off centre, crossing the border": dict(center=(0.5, 0.62), radius=0.5),
    "dark, low contrast": dict(gain=0.25, background=6),
    "dark on a grey background": dict(gain=0.3, background=18),
    "text in a corner": dict(text=True, background=8),
    "small, 500 px": dict(shape=(500, 500)),
    "large, 3000x4000": dict(shape=(3000, 4000), radius=0.47),
    "16-bit": dict(dtype=np.uint16, background=10),
    "strongly uneven": dict(strength=1.2, background=10),
}


def _case(kw):
    """The synthetic fundus of a case: ``shape`` (default DRIVE's) and synthetic_fundus options."""
    kw = dict(kw)
    return synthetic_fundus(kw.pop("shape", (584, 565)), seed=3, noise=2.0, **kw)


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


@pytest.mark.parametrize("name", list(CASES))
def test_synthetic_difficulties(name):
    s = _case(CASES[name])
    est = estimate_fov(s.image)
    assert iou(est, s.mask) >= 0.99, name
    # one filled region
    n, _ = cv2.connectedComponents(est.astype(np.uint8))
    assert n == 2 and np.array_equal(fill_holes(est), est)


def test_jpeg_noise():
    s = synthetic_fundus((584, 565), seed=4, background=10, noise=2.0)
    ok, buf = cv2.imencode(".jpg", s.image, [cv2.IMWRITE_JPEG_QUALITY, 60])
    est = estimate_fov(cv2.imdecode(buf, cv2.IMREAD_UNCHANGED))
    assert iou(est, s.mask) >= 0.99


def test_grayscale_input_and_vessels_do_not_punch_holes():
    s = synthetic_fundus((400, 400), seed=5, background=5)
    gray = s.image[..., 0]
    est = estimate_fov(gray)
    assert iou(est, s.mask) >= 0.99
    assert est[s.vessels].all()


def test_drive_iou_from_images_alone(drive):
    ious = []
    for img_path in sorted(drive.glob("*/images/*.tif")):
        truth = read_mask(img_path.parent.parent / "mask" / f"{img_path.stem}_mask.gif")
        ious.append(iou(estimate_fov(read_image(img_path)), truth))
    assert len(ious) == 40
    assert min(ious) >= 0.99, sorted(ious)[:3]


def test_crop_inside_the_fov_is_all_fov():
    s = synthetic_fundus((400, 400), seed=6, radius=0.9, background=0)
    crop = s.image[60:340, 60:340]
    assert estimate_fov(crop).all()


# gray images only with light padding: the green channel of a fundus spans about 40-130
@pytest.mark.parametrize("colour, gray", [(90, False), (128, False), (200, False), (255, False),
                                          (200, True), (255, True)])
def test_padding_that_is_not_dark_is_background(colour, gray):
    """A disc padded with grey or white (exports, scans, preprocessed sets): once taken for a crop
    inside the FOV (the whole image, with full confidence). The padding is background, and so
    is its JPEG-noisy version; with a crossing of the border too."""
    from retina_prep.fov import estimate_fov

    for kw in ({}, dict(center=(0.5, 0.6), radius=0.5)):
        s = synthetic_fundus((480, 640), seed=3, background=0, **kw)
        img = s.image.copy()
        img[~s.mask] = colour
        img = cv2.imdecode(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 80])[1],
                           cv2.IMREAD_UNCHANGED)
        if gray:
            img = img[..., 1]
        est = estimate_fov(img, details=True)
        assert not est.whole_image
        assert iou(est.mask, s.mask) >= 0.98, (colour, gray, kw, iou(est.mask, s.mask))


@pytest.mark.parametrize("shape", [(600, 800), (1600, 2000), (900, 1200)])
@pytest.mark.parametrize("falloff", ["flat", "to 30 at the edge"])
def test_crisp_disc_is_found_exactly(shape, falloff):
    """The edge is placed on the blurred image at 0.3 of the way to the disc's level some way
    inside: on a crisp disc that put a ring of pure background (up to 2.6 px wide at 4000 px)
    inside the mask, and a disc dimmed steeply to its edge lost its last 1-2 px (and a digital
    circle its four one-pixel tips to the opening). Each pixel near the edge is now decided by
    its own level: a crisp disc comes out exactly, dim edge or not, centred on a pixel or not."""
    h, w = shape
    yy, xx = np.mgrid[:h, :w]
    dy = 0 if shape == (900, 1200) else 0.2  # (900, 1200): centred on a pixel, integer radius
    r = np.hypot(xx - w // 2 + 2 * dy, yy - h // 2 - dy)
    radius = 0.45 * min(h, w) if dy else 420
    truth = r <= radius
    level = 1.0 if falloff == "flat" else (30 + 170 * (1 - (r / radius) ** 3)) / 200
    img = np.zeros((h, w, 3), np.uint8)
    for c, k in enumerate((200, 100, 40)):
        img[..., c] = np.where(truth, np.round(k * level), 0)
    est = estimate_fov(img)
    assert np.array_equal(est, truth), ((est & ~truth).sum(), (truth & ~est).sum())


def test_crisp_disc_normalizes_flat_with_an_estimated_mask(tmp_path):
    """Known truth end to end: a constant disc without a mask file is 128 everywhere inside, for
    both orders (a background pixel in the mask left a halo of up to 43 gray levels)."""
    from click.testing import CliRunner

    from retina_prep.cli.main import cli
    from retina_prep.io import write_image

    h, w = 600, 800
    yy, xx = np.mgrid[:h, :w]
    truth = np.hypot(xx - 400, yy - 300) <= 280
    img = np.zeros((h, w, 3), np.uint8)
    img[truth] = (250, 125, 62)
    write_image(tmp_path / "in" / "a.png", img)
    write_image(tmp_path / "in" / "b.png", img[::-1])
    for order in ("0", "1"):
        r = CliRunner().invoke(cli, ["normalize", str(tmp_path / "in"), "-o",
                                     str(tmp_path / order), "--order", order, "-j", "2"])
        assert r.exit_code == 0, r.output
        out = read_image(tmp_path / order / "a.png")
        assert (out[truth] == 128).all() and (out[~truth] == 0).all(), order


@pytest.mark.parametrize("black_level", [10, 20, 30])
def test_dim_photograph_over_a_black_level_is_not_a_crop(black_level):
    """A dim photograph (gain 0.34) whose camera adds a black level of 20 to every pixel: its
    frame is not dark next to the dim disc, and the background fills most of the image, so the
    frame was 'as bright as the image's median' and the whole image was taken as FOV (IoU 0.30,
    confidence 1.0). The frame must also be near the image's brighter part (75th percentile)."""
    s = synthetic_fundus((400, 600), seed=336, background=2, strength=0.75, noise=3.3,
                         radius=0.41, gain=0.34, cut=0.77)
    img = np.clip(s.image.astype(int) + black_level, 0, 255).astype(np.uint8)
    assert iou(estimate_fov(img), s.mask) >= 0.99


def test_textured_crop_is_not_padding():
    """Crops inside the FOV keep the whole image: their frame is not one colour."""
    s = synthetic_fundus((600, 600), seed=4, background=0)
    assert estimate_fov(s.image[200:400, 200:400]).all()
    assert estimate_fov(s.image[200:400, 200:400, 1]).all()


# ---------------------------------------------------------------- real cameras (issue: dark
# sectors, discs crossing borders, rims that are not there)

HARD = {
    "dark quarter at 7 %": dict(dark_sector=0.07),
    "dark quarter at 10 %, grey background": dict(dark_sector=0.10, background=8),
    "dark quarter at 5 %, 1620x1080": dict(shape=(1080, 1620), dark_sector=0.05, radius=0.48),
    "vignetting to the edge and a dark quarter": dict(vignette=0.6, dark_sector=0.1),
    "crosses 1 border": dict(center=(0.5, 0.62), radius=0.5),
    "crosses 2 borders": dict(center=(0.35, 0.65), radius=0.55),
    "crosses 3 borders (right 60 % of an HRF image)": dict(shape=(1168, 1051), center=(0.5, 0.167),
                                                           radius=0.706),
    "crosses 3 borders, dark": dict(shape=(1168, 1051), center=(0.5, 0.167), radius=0.706,
                                    gain=0.4, background=5),
    "flat cuts and a dark quarter": dict(shape=(1168, 1752), cut=0.8, radius=0.55, dark_sector=0.08),
}


@pytest.mark.parametrize("name", list(HARD))
def test_hard_cameras(name):
    from retina_prep.fov import estimate_fov

    s = _case(HARD[name])
    est = estimate_fov(s.image, details=True)
    assert iou(est.mask, s.mask) >= 0.99, name
    assert not est.low_confidence, est.confidence
    # nothing of the dark quarter is lost beyond the blur of its edge
    assert (s.mask & ~est.mask).sum() < 0.005 * s.mask.sum()


def test_dark_quarter_is_filled_up_to_the_circle():
    from retina_prep.fov import estimate_fov

    s = synthetic_fundus((584, 565), seed=3, noise=2.0, dark_sector=0.07)
    est = estimate_fov(s.image, details=True)
    assert est.filled > 0.1 * s.mask.sum() and est.circle is not None
    cx, cy, r = est.circle
    true_r = 0.46 * 565
    assert abs(r - true_r) < 2


def test_unfillable_dark_part_gives_low_confidence():
    """A square field of view (no circle to fit) with a dark quarter: the mask cannot be trusted."""
    from retina_prep.fov import estimate_fov

    rng = np.random.default_rng(0)
    img = np.zeros((500, 500), np.float32)
    img[50:450, 50:450] = 170
    img[250:450, 250:450] = 12
    img = np.clip(img + rng.normal(0, 2, img.shape), 0, 255).astype(np.uint8)
    est = estimate_fov(img, details=True)
    assert est.low_confidence


def test_flat_cuts_stay_straight():
    from retina_prep.fov import estimate_fov, trim_rim

    s = synthetic_fundus((1168, 1752), seed=3, noise=2.0, cut=0.8, radius=0.55)
    est = estimate_fov(s.image, details=True)
    m = trim_rim(s.image, est.mask)
    # rows of the top cut: the first FOV row in each column over the straight part is one row
    cols = np.nonzero(s.mask.any(axis=0))[0]
    mid = cols[len(cols) // 3: 2 * len(cols) // 3]
    tops = np.array([np.argmax(m[:, c]) for c in mid])
    assert tops.max() - tops.min() <= 1


# ---------------------------------------------------------------- rim trimming


def _ring_pixels(mask):
    from retina_prep.fov import margin_distance

    return int((mask & (margin_distance(mask) < 1)).sum())


@pytest.mark.parametrize("kw", [dict(vignette=0.7), dict(vignette=0.9, strength=1.2),
                                dict(gain=0.25, background=6, vignette=0.5), {}])
def test_smooth_falloff_is_not_a_rim(kw):
    from retina_prep.fov import trim_rim

    s = synthetic_fundus((584, 565), seed=3, noise=2.0, **kw)
    trimmed, info = trim_rim(s.image, s.mask, return_info=True)
    # at most 1 px dropped on average around the margin
    assert info["rim_dropped"] <= _ring_pixels(s.mask)
    assert info["rim_dropped"] == int((s.mask & ~trimmed).sum())


@pytest.mark.parametrize("width", [3, 4, 5])
def test_a_real_ring_is_removed(width):
    from retina_prep.fov import margin_distance, trim_rim

    s = synthetic_fundus((584, 565), seed=3, noise=2.0, rim=width)
    trimmed, info = trim_rim(s.image, s.mask, return_info=True)
    d = margin_distance(s.mask)
    ring = s.mask & (d < width - 1)
    assert trimmed[ring].mean() < 0.05  # the ring is gone
    assert trimmed[s.mask & (d >= 8)].all()  # nothing deeper than the cap is touched
    assert info["rim_depth_max"] <= 6  # capped at about 1 % of the FOV diameter


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000))
def test_fov_diameter_matches_a_numpy_reference(seed):
    rng = np.random.default_rng(seed)
    h, w = rng.integers(5, 60, 2)
    m = rng.random((h, w)) < rng.uniform(0.01, 0.9)
    m[rng.integers(0, h), rng.integers(0, w)] = True
    ys, xs = np.nonzero(m)
    want = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1, 2 * np.sqrt(ys.size / np.pi))
    assert fov_diameter(m) == pytest.approx(want)
    assert fov_diameter(m.astype(np.uint8) * 255) == pytest.approx(want)


def test_one_name_for_the_estimate():
    from retina_prep.fov import FovEstimate, estimate_fov
    from retina_prep.fov.estimate import fov_estimate

    s = synthetic_fundus((220, 230), seed=4)
    est = estimate_fov(s.image, details=True)
    assert isinstance(est, FovEstimate)
    np.testing.assert_array_equal(est.mask, estimate_fov(s.image))
    with pytest.warns(DeprecationWarning, match="details=True"):
        old = fov_estimate(s.image)
    np.testing.assert_array_equal(old.mask, est.mask)
