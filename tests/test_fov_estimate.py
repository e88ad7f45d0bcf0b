"""FOV estimation on synthetic discs with known ground truth, and on DRIVE."""

import cv2
import numpy as np
import pytest

from retina_prep.fov import estimate_fov, fill_holes
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


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


@pytest.mark.parametrize("name", list(CASES))
def test_synthetic_difficulties(name):
    kw = dict(CASES[name])
    shape = kw.pop("shape", (584, 565))
    s = synthetic_fundus(shape, seed=3, noise=2.0, **kw)
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
