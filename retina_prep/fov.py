"""Field-of-view (FOV) masks: arrays in, boolean ``(H, W)`` masks out.

True means inside the field of view. Nothing here reads files.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .errors import MaskError

__all__ = ["binarize_mask", "erode_mask", "estimate_fov", "fov_diameter", "fill_holes"]


def binarize_mask(array, *, path=None) -> np.ndarray:
    """Turn a decoded mask image into a boolean ``(H, W)`` mask.

    Accepts what mask files decode to: ``(H, W)``, ``(H, W, C)`` (RGB or
    RGBA, channels are combined by their maximum; alpha is ignored) and a
    leading frame axis ``(1, H, W[, C])`` as GIF readers return (the first
    frame is used). A pixel above half the mask's maximum is inside, so 0/1,
    0/255 and 0/65535 masks all work.

    Raises
    ------
    MaskError
        If the mask is empty (no pixel inside) or has an unusable shape.
    """
    m = np.asarray(array)
    if m.ndim == 4 or (m.ndim == 3 and m.shape[0] < m.shape[-1] and m.shape[-1] > 4):
        m = m[0]  # frame axis: (N, H, W[, C])
    if m.ndim == 3:
        if m.shape[-1] in (2, 4):  # gray+alpha or RGBA: drop alpha
            m = m[..., :-1]
        m = m.max(axis=-1)
    if m.ndim != 2 or m.size == 0:
        raise MaskError(f"mask has unusable shape {np.shape(array)}", path)
    m = m.astype(np.float64, copy=False) if m.dtype == np.bool_ else m
    top = float(np.max(m))
    if not top > 0:
        raise MaskError("mask is empty (no pixel inside the field of view)", path)
    return m > top / 2


def _disk(radius: int) -> np.ndarray:
    d = 2 * int(radius) + 1
    return cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (d, d))


def erode_mask(mask, px: float) -> np.ndarray:
    """Erode a boolean mask by ``px`` pixels with a round structuring element.

    Only the FOV margin is eroded: the image rectangle's edge is not treated
    as background, so a FOV that touches the image border keeps its pixels
    there. ``px = 0`` returns a copy.

    Raises
    ------
    MaskError
        If nothing is left after erosion.
    """
    m = np.asarray(mask, dtype=bool)
    px = float(px)
    if px < 0 or not math.isfinite(px):
        raise ValueError(f"erosion must be >= 0 pixels, got {px}")
    r = int(round(px))
    if r == 0:
        return m.copy()
    # OpenCV's default erode border value is +inf: the border never erodes.
    out = cv2.erode(m.astype(np.uint8), _disk(r)).astype(bool)
    if not out.any():
        raise MaskError(f"mask is empty after eroding it by {r} px")
    return out


def fill_holes(mask) -> np.ndarray:
    """Fill every hole of a boolean mask (background not connected to the border)."""
    m = np.asarray(mask, dtype=bool)
    h, w = m.shape
    padded = np.zeros((h + 2, w + 2), np.uint8)
    padded[1:-1, 1:-1] = m
    flood = padded.copy()
    ffmask = np.zeros((h + 4, w + 4), np.uint8)
    cv2.floodFill(flood, ffmask, (0, 0), 1)
    holes = flood == 0
    return (padded.astype(bool) | holes)[1:-1, 1:-1]


def _largest_component(m: np.ndarray) -> np.ndarray:
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m.astype(np.uint8), connectivity=8)
    if n <= 1:
        return np.zeros_like(m, dtype=bool)
    best = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    return labels == best


def estimate_fov(image, *, threshold: float | None = None) -> np.ndarray:
    """Estimate the field-of-view mask of a fundus photograph.

    The brightest channel is smoothed and thresholded between the background
    level and the typical brightness of the disc; the largest connected
    region is kept and its holes are filled, so vessels and dark lesions
    never punch holes in it.

    Parameters
    ----------
    image : (H, W) or (H, W, C) array_like
        Any dtype; not modified.
    threshold : float, optional
        Fixed threshold on the brightest channel, in the image's units.
        By default it is chosen per image.

    Returns
    -------
    (H, W) bool ndarray

    Raises
    ------
    MaskError
        If no field of view is found.
    """
    img = np.asarray(image)
    v = img.max(axis=-1) if img.ndim == 3 else img
    v = v.astype(np.float32)
    h, w = v.shape
    k = max(3, (min(h, w) // 200) | 1)
    v = cv2.medianBlur(v, k if k <= 5 else 5) if k > 1 else v
    if threshold is None:
        lo = float(np.percentile(v, 1))
        # the disc: brightness typical of the brighter half of the image
        hi = float(np.percentile(v, 75))
        if not hi > lo:
            raise MaskError("cannot estimate a field of view: the image is uniform")
        threshold = lo + 0.15 * (hi - lo)
    m = v > threshold
    r = max(1, int(round(min(h, w) / 300)))
    m = cv2.morphologyEx(m.astype(np.uint8), cv2.MORPH_OPEN, _disk(r)).astype(bool)
    m = fill_holes(_largest_component(m))
    if m.sum() < 0.01 * h * w:
        raise MaskError("cannot estimate a field of view: no bright disc found")
    return m


def fov_diameter(mask) -> float:
    """Diameter of the field of view in pixels.

    The largest of the bounding box's sides and the diameter of the circle
    of equal area, so flat cuts at the top and bottom or a disc crossing the
    image border do not shrink it much.
    """
    m = np.asarray(mask, dtype=bool)
    ys, xs = np.nonzero(m)
    if ys.size == 0:
        raise MaskError("mask is empty (no pixel inside the field of view)")
    bbox = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1)
    return float(max(bbox, 2.0 * math.sqrt(ys.size / math.pi)))
