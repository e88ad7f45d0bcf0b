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
    args = ap.parse_args()
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


if __name__ == "__main__":
    main()
