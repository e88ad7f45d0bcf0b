"""Builders of small dataset trees for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retina_prep.io import write_image
from retina_prep.synthetic import synthetic_fundus

SHAPE = (120, 110)


def make_image(path: Path, seed: int = 0, shape=SHAPE) -> np.ndarray:
    s = synthetic_fundus(shape, seed=seed, background=5)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(path.with_suffix(".png") if path.suffix.lower() not in (".png", ".tif") else path,
                s.image)
    return s.mask


def make_mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    u = mask.astype(np.uint8) * 255
    if path.suffix.lower() == ".gif":
        import imageio.v3 as iio

        iio.imwrite(path, u)
    else:
        write_image(path, u)


def make_drive(root: Path, n_train: int = 2, n_test: int = 2) -> Path:
    """A DRIVE-shaped tree: {training,test}/{images,mask,1st_manual}."""
    for split, first, fmt in [("training", 21, "{:02d}_training"), ("test", 1, "{:02d}_test")]:
        count = n_train if split == "training" else n_test
        for i in range(first, first + count):
            stem = fmt.format(i)
            m = make_image(root / split / "images" / f"{stem}.tif", seed=i)
            make_mask(root / split / "mask" / f"{stem}_mask.gif", m)
            make_mask(root / split / "1st_manual" / f"{i:02d}_manual1.gif", m)
    return root


def disc(shape, r) -> np.ndarray:
    """A centred disc of radius ``r`` as a boolean ``shape`` mask."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < r**2


def iou(a, b) -> float:
    return (a & b).sum() / (a | b).sum()
