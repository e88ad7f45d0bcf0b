"""Synthetic fundus-like images with known ground truth, for tests and sample data.

``image = 255 * reflectance * illumination`` inside a disc, a dark background
outside it. The illumination field, the vessel map and the FOV are returned,
so a test can check that normalization removes the field.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import DTypeLike

__all__ = ["SyntheticFundus", "synthetic_fundus", "illumination_field"]

_BASE = np.array([0.66, 0.38, 0.18])  # reflectance of the retina, R G B
_VESSEL_DARKENING = np.array([0.80, 0.55, 0.70])


@dataclass
class SyntheticFundus:
    image: np.ndarray  # (H, W, 3) uint8 (or uint16)
    mask: np.ndarray  # (H, W) bool, the true FOV
    illumination: np.ndarray  # (H, W) float, multiplies the reflectance
    vessels: np.ndarray  # (H, W) bool
    reflectance: np.ndarray  # (H, W, 3) float in [0, 1]


def illumination_field(shape: tuple[int, int], *, strength: float = 1.0, seed: int = 0) -> np.ndarray:
    """A smooth, strongly uneven illumination field, about 0.3 to 1.3.

    A linear ramp across the image, a bright blob off centre and a dark
    corner; ``strength`` scales the departure from 1.
    """
    h, w = shape
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    xn, yn = x / w - 0.5, y / h - 0.5
    angle = rng.uniform(0, 2 * np.pi)
    ramp = 0.55 * (np.cos(angle) * xn + np.sin(angle) * yn) * 2
    cx, cy = rng.uniform(-0.2, 0.2, 2)
    blob = 0.35 * np.exp(-((xn - cx) ** 2 + (yn - cy) ** 2) / (2 * 0.15**2))
    dark = -0.25 * np.exp(-((xn + 0.3) ** 2 + (yn - 0.3) ** 2) / (2 * 0.12**2))
    field = 1.0 + strength * (ramp + blob + dark)
    return np.clip(field, 0.15, None)


def _vessel_tree(shape: tuple[int, int], center: tuple[float, float], radius: float,
                 rng: np.random.Generator) -> np.ndarray:
    h, w = shape
    canvas = np.zeros((h, w), np.uint8)
    scale = min(h, w) / 565
    start = np.array(center) + np.array([-0.6 * radius, 0.0])  # "optic disc" left of centre
    for _ in range(10):
        pts = [start.copy()]
        ang = rng.uniform(0, 2 * np.pi)
        width = rng.uniform(2, 7) * scale
        p = start.copy()
        for _ in range(40):
            ang += rng.normal(0, 0.18)
            p = p + 0.045 * radius * np.array([np.cos(ang), np.sin(ang)])
            pts.append(p.copy())
        poly = np.round(np.array(pts)).astype(np.int32).reshape(-1, 1, 2)
        cv2.polylines(canvas, [poly], False, 1, max(1, int(round(width))), cv2.LINE_8)
    return canvas.astype(bool)


def synthetic_fundus(
    shape: tuple[int, int] = (584, 565),
    *,
    seed: int = 0,
    background: int = 0,
    strength: float = 1.0,
    vessels: bool = True,
    noise: float = 1.5,
    dtype: DTypeLike = np.uint8,
    center: tuple[float, float] | None = None,
    radius: float = 0.46,
    cut: float | None = None,
    notch: str | None = None,
    gain: float = 1.0,
    text: bool = False,
    dark_sector: float | None = None,
    vignette: float = 0.0,
    rim: int = 0,
    frame: str | None = None,
) -> SyntheticFundus:
    """Make a synthetic fundus photograph with known illumination and FOV.

    Parameters
    ----------
    shape : (H, W)
    seed : int
        Seed of the random vessels, field and noise.
    background : int
        Gray level of the background outside the FOV (8-bit units).
    strength : float
        How uneven the illumination is (0: perfectly even).
    vessels : bool
        Draw dark vessel-like curves.
    noise : float
        Standard deviation of Gaussian noise, 8-bit units.
    dtype : uint8 or uint16
    center : (fy, fx), optional
        Disc centre as fractions of the height and width (default: near the middle).
    radius : float
        Disc radius as a fraction of min(H, W); above 0.5 the disc crosses the border.
    cut : float, optional
        Flat cuts at the top and bottom, at ``cut * radius`` from the centre (HRF-like).
    notch : {"tab", "notch"}, optional
        A small square tab outside, or notch into, the rim at the upper right.
    gain : float
        Overall brightness (0.25 makes a dark, low-contrast photograph).
    text : bool
        Burn bright text into the lower-left corner (outside the FOV).
    dark_sector : float, optional
        Brightness factor (e.g. 0.07) of the lower-right quarter of the disc,
        with a soft transition, as in pathological or badly lit photographs.
    vignette : float
        Smooth fall-off towards the margin with no ring: the illumination is
        multiplied by ``1 - vignette * (r / R)**4``.
    rim : int
        Width in pixels of a dark transition ring at the margin (40 % of the
        brightness inside it), as DRIVE's masks include.
    frame : {"slide", "colour", "glow"}, optional
        What lies outside the FOV instead of ``background``: ``"slide"`` a
        scanned film slide's noisy grey-green frame (10 to 40 gray levels,
        brighter towards the corners, a darker strip along the top and bottom
        rows, film grain); ``"colour"`` an uneven bluish frame (15 to 45);
        ``"glow"`` a black background with a glow ring fading out from the disc
        (35 % of the disc's local level at the edge, over 4 % of the radius).
    """
    h, w = shape
    rng = np.random.default_rng(seed)
    if center is None:
        cy, cx = h / 2 + rng.uniform(-0.02, 0.02) * h, w / 2 + rng.uniform(-0.02, 0.02) * w
    else:
        cy, cx = center[0] * h, center[1] * w
    radius = radius * min(h, w)
    y, x = np.ogrid[0:h, 0:w]  # broadcast: no full-size coordinate arrays
    mask = (y - cy) ** 2 + (x - cx) ** 2 <= radius**2
    if cut is not None:
        mask &= np.abs(y - cy) <= cut * radius
    if notch is not None:
        side = 0.06 * radius
        px, py = cx + radius * np.cos(-np.pi / 4), cy + radius * np.sin(-np.pi / 4)
        square = (np.abs(x - px) <= side) & (np.abs(y - py) <= side)
        mask = mask | square if notch == "tab" else mask & ~square
    field = illumination_field(shape, strength=strength, seed=seed)
    r = np.sqrt((y - cy) ** 2 + (x - cx) ** 2) / radius
    if vignette:
        field = field * (1.0 - vignette * np.clip(r, 0, 1) ** 4)
    if dark_sector is not None:
        ang = np.degrees(np.arctan2(y - cy, x - cx))  # 0..90: lower right
        w_in = np.clip((np.minimum(ang, 90 - ang) + 10) / 20, 0, 1)  # soft over 20 degrees
        field = field * (1.0 - (1.0 - dark_sector) * w_in)
    if rim:
        depth = (1.0 - r) * radius  # pixels inside the circular margin
        field = np.where(depth < rim, field * 0.4, field)
    vmap = _vessel_tree(shape, (cx, cy), radius, rng) & mask if vessels else np.zeros(shape, bool)
    refl = np.broadcast_to(_BASE, (h, w, 3)).copy()
    refl[vmap] *= _VESSEL_DARKENING
    # float32 throughout: a 3000x4000 RGB image is made in about a second
    img = refl.astype(np.float32, copy=False) * (np.float32(255.0 * gain) * field[..., None]
                                                 .astype(np.float32))
    img += rng.standard_normal(img.shape, dtype=np.float32) * np.float32(noise)
    outside = ~mask
    img[outside] = np.float32(background) + rng.standard_normal(
        (int(outside.sum()), 3), dtype=np.float32) * np.float32(noise)
    if frame is not None:
        img[outside] = _frame(frame, shape, (cy, cx), radius, rng, field * gain)[outside]
    if text:
        canvas = np.zeros((h, w), np.uint8)
        fs = min(h, w) / 500
        cv2.putText(canvas, "OD 2024-01-01", (int(0.01 * w), int(0.97 * h)),
                    cv2.FONT_HERSHEY_SIMPLEX, fs, 1, max(1, int(2 * fs)))
        img[(canvas > 0) & ~mask] = 230
    scale = np.iinfo(dtype).max / 255.0
    img = np.clip(np.rint(img * scale), 0, np.iinfo(dtype).max).astype(dtype)
    return SyntheticFundus(img, mask, field, vmap, refl)


def _frame(kind: str, shape: tuple[int, int], centre: tuple[float, float], radius: float,
           rng: np.random.Generator, field: np.ndarray) -> np.ndarray:
    """(H, W, 3) float32 levels of a frame of ``kind`` (see :func:`synthetic_fundus`)."""
    h, w = shape
    cy, cx = centre
    y, x = np.ogrid[0:h, 0:w]
    corner = np.minimum(1.0, np.hypot((x - w / 2) / (w / 2), (y - h / 2) / (h / 2)) / 1.414)
    if kind == "slide":
        level = (10 + 30 * corner**2).astype(np.float32)
        band = max(2, int(round(0.03 * h)))
        level[:band] = 5
        level[-band:] = 5
        tint = np.array([0.85, 1.0, 0.75], np.float32)
        grain = 4.0
    elif kind == "colour":
        level = (15 + 30 * corner).astype(np.float32)
        tint = np.array([0.5, 0.8, 1.0], np.float32)
        grain = 2.0
    elif kind == "glow":
        r = np.hypot(x - cx, y - cy)
        level = 0.35 * 255 * _BASE[0] * field * np.exp(-np.clip(r - radius, 0, None) / (0.04 * radius))
        level = level.astype(np.float32)
        tint = np.array([1.0, 0.55, 0.25], np.float32)
        grain = 1.5
    else:
        raise ValueError(f"unknown frame {kind!r}")
    out = level[..., None] * tint
    out = np.broadcast_to(out, (h, w, 3)).astype(np.float32)
    return out + rng.standard_normal((h, w, 3), dtype=np.float32) * np.float32(grain)
