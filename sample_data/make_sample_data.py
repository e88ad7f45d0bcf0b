"""Regenerate sample_data/ (run from the repository root).

    python sample_data/make_sample_data.py [--retina PATH/TO/retina.jpg]

* images/retina_cc0.png: scikit-image's ``skimage/data/retina.jpg`` (CC0 1.0,
  Haggstrom 2014, via Wikimedia Commons) resized from 1411x1411 to 584x584
  (DRIVE scale) with area interpolation. Its mask, mask/retina_cc0_mask.png,
  is estimated by retina-prep and was checked by eye.
* images/synthetic_01.png, synthetic_02.png: synthetic fundus images with a
  known, strongly uneven illumination field (retina_prep.synthetic), their
  true masks in mask/, vessel maps in vessels/ and illumination fields in truth/
  (16-bit PNG, field x 10000).
* figures/fov_hard_cases.png: the FOV estimate (rim trimmed, as `retina-prep mask
  --rim auto` does) on hard cases, as a contact sheet: synthetic discs and the
  sample photograph with a dark quarter and cut to its right 60 %.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from retina_prep.fov import estimate_fov
from retina_prep.io import read_image, write_image
from retina_prep.synthetic import synthetic_fundus

HERE = Path(__file__).resolve().parent


def _default_retina() -> Path:
    import skimage.data  # only needed to regenerate the real photograph

    return Path(skimage.data.__file__).parent / "retina.jpg"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--retina", type=Path, default=None, help="path to skimage's retina.jpg")
    ap.add_argument("--figure-only", action="store_true",
                    help="only figures/fov_hard_cases.png, from the shipped images/retina_cc0.png")
    args = ap.parse_args()
    if args.figure_only:
        photo = read_image(HERE / "images/retina_cc0.png")
        write_image(HERE / "figures/fov_hard_cases.png", hard_cases_figure(photo), overwrite=True)
        return
    for sub in ("images", "mask", "truth", "vessels"):
        (HERE / sub).mkdir(exist_ok=True)

    retina = read_image(args.retina or _default_retina())
    small = cv2.resize(retina, (584, 584), interpolation=cv2.INTER_AREA)
    write_image(HERE / "images/retina_cc0.png", small, overwrite=True)
    write_image(HERE / "mask/retina_cc0_mask.png", estimate_fov(small).astype(np.uint8) * 255,
                overwrite=True)

    for i, (seed, bg) in enumerate([(1, 0), (7, 14)], start=1):
        s = synthetic_fundus((584, 565), seed=seed, background=bg)
        write_image(HERE / f"images/synthetic_{i:02d}.png", s.image, overwrite=True)
        write_image(HERE / f"mask/synthetic_{i:02d}_mask.png", s.mask.astype(np.uint8) * 255,
                    overwrite=True)
        write_image(HERE / f"vessels/synthetic_{i:02d}.png", s.vessels.astype(np.uint8) * 255,
                    overwrite=True)
        field = np.clip(np.rint(s.illumination * 10000), 0, 65535).astype(np.uint16)
        write_image(HERE / f"truth/synthetic_{i:02d}_illumination.png", field, overwrite=True)
    write_image(HERE / "figures/fov_hard_cases.png", hard_cases_figure(small), overwrite=True)


def hard_cases_figure(photo: np.ndarray) -> np.ndarray:
    """The contact sheet of FOV estimates on hard cases (see the module docstring)."""
    from retina_prep.figures import contact_sheet, thumbnail
    from retina_prep.fov import trim_rim

    shape = (584, 565)
    cases = {
        "crosses_3_borders": synthetic_fundus((1168, 1051), seed=3, center=(0.5, 0.167),
                                              radius=0.706, noise=2.0).image,
        "dark_quarter_7pct": synthetic_fundus(shape, seed=3, dark_sector=0.07, noise=2.0).image,
        "dark_ring_4px": synthetic_fundus(shape, seed=3, rim=4, noise=2.0).image,
        "flat_cuts_dark_quarter": synthetic_fundus((1168, 1752), seed=3, cut=0.8, radius=0.55,
                                                   dark_sector=0.08, noise=2.0).image,
        "notch": synthetic_fundus(shape, seed=3, notch="notch", noise=2.0).image,
        "vignetting_to_edge": synthetic_fundus(shape, seed=3, vignette=0.6, noise=2.0).image,
        "scanned_slide_frame": synthetic_fundus((605, 700), seed=1, frame="slide", cut=0.85,
                                                radius=0.5).image,
        "glow_ring_outside": synthetic_fundus((1500, 1700), seed=1, frame="glow").image,
    }
    dark = photo.astype(np.float32)
    h, w = photo.shape[:2]
    y, x = np.ogrid[0:h, 0:w]
    ang = np.degrees(np.arctan2(y - h / 2, x - w / 2))
    dark[(ang > 0) & (ang < 90)] *= 0.07  # the lower-right quarter at 7 %
    cases["photo_dark_quarter"] = np.clip(dark, 0, 255).astype(np.uint8)
    cases["photo_right_60pct"] = photo[:, int(0.4 * w):]
    tiles = []
    for name, image in sorted(cases.items()):
        mask = trim_rim(image, estimate_fov(image))
        tiles.append((name, thumbnail(image, mask, width=240)))
    return contact_sheet(tiles, columns=3)


if __name__ == "__main__":
    main()
