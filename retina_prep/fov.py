"""Field-of-view (FOV) masks: arrays in, boolean ``(H, W)`` masks out.

True means inside the field of view. Nothing here reads files.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .errors import MaskError

__all__ = [
    "binarize_mask", "erode_mask", "estimate_fov", "fov_diameter", "fill_holes",
    "margin_distance", "trim_rim", "feather_mask",
]


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


def _otsu(v: np.ndarray) -> float:
    """Otsu's threshold of a float image (256 bins between its 0.1 and 99.9 percentiles)."""
    lo, hi = np.percentile(v, [0.1, 99.9])
    if not hi > lo:
        raise MaskError("cannot estimate a field of view: the image is uniform")
    u8 = np.clip((v - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
    t, _ = cv2.threshold(u8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return lo + (t + 0.5) * (hi - lo) / 255.0


def _frame(v: np.ndarray) -> np.ndarray:
    h, w = v.shape
    b = max(1, int(round(0.02 * min(h, w))))
    return np.concatenate([v[:b].ravel(), v[-b:].ravel(), v[:, :b].ravel(), v[:, -b:].ravel()])


def _frame_is_bright(v: np.ndarray) -> bool:
    """True when the image's outer frame has almost no dark background (a crop inside the FOV).

    Dark means below 20 % of the image's bright level (99th percentile): a
    fundus background is near black next to the disc, and a photograph's frame
    is mostly background, even when the disc touches or crosses the border.
    The frame must also be at least 3/4 as bright as the image's median.
    """
    lo, hi = np.percentile(v, [1, 99])
    if not hi > lo:
        return False
    frame = _frame(v)
    few_dark = float(np.mean(frame <= 0.2 * hi)) < 0.25
    # and the frame is about as bright as the image (a grey background is not)
    return few_dark and float(np.median(frame)) > 0.75 * float(np.median(v))


def _rough_threshold(v: np.ndarray) -> float:
    """A threshold just above the background: it keeps dark parts of the disc.

    The background level and noise are read from the image's outer frame
    (median and MAD of the outermost 2% of rows and columns), which is
    background in fundus photographs even when the disc touches or crosses
    an edge. The disc level is the median above Otsu's threshold. The
    threshold is the larger of 4 noise sigmas and ROUGH_FRACTION of the
    background-to-disc contrast above the background level.
    """
    frame = _frame(v)
    bg = float(np.median(frame))
    sigma = max(1.4826 * float(np.median(np.abs(frame - bg))), 1e-3 * float(v.max()))
    above = v[v > max(_otsu(v), bg)]
    if above.size == 0:
        raise MaskError("cannot estimate a field of view: no bright disc on a dark background")
    disc = float(np.median(above))
    if not disc > bg + 2 * sigma:
        raise MaskError("cannot estimate a field of view: the disc is no brighter than the background")
    return bg + max(4.0 * sigma, ROUGH_FRACTION * (disc - bg))


#: The rough threshold's minimum height above the background, as a fraction
#: of the background-to-disc contrast.
ROUGH_FRACTION = 0.1


def _clean(m: np.ndarray, radius: int) -> np.ndarray:
    if radius > 0:
        m = cv2.morphologyEx(m.astype(np.uint8), cv2.MORPH_OPEN, _disk(radius)).astype(bool)
    return fill_holes(_largest_component(m))


#: Where the FOV edge is placed between the local background level (0) and
#: the local brightness of the disc just inside the edge (1).
EDGE_FRACTION = 0.3


def estimate_fov(image, *, edge_fraction: float = EDGE_FRACTION, threshold: float | None = None) -> np.ndarray:
    """Estimate the field-of-view mask of a fundus photograph from the image alone.

    1. The brightest channel (robust to colour casts; the red channel of a
       fundus image is rarely dark) is smoothed against noise and split by
       Otsu's threshold into a rough disc: the largest connected region,
       holes filled.
    2. Near the rough edge, the local background level and the local
       brightness of the disc just inside the edge are measured by masked
       convolution (so neither leaks into the other), and each pixel is
       thresholded at ``edge_fraction`` of the way from background to disc.
       This follows dark, low-contrast and unevenly lit rims, and backgrounds
       that are not black.
    3. The largest region is kept, small spurs are opened away and holes are
       filled: vessels and dark lesions never punch holes, text or logos in a
       corner are dropped.

    An image whose outer frame is mostly as bright as the disc (a crop
    inside the field of view, no background) gets the whole image as its FOV.

    Every size scales with the image, so the same call serves 500 px and
    4000 px images.

    Parameters
    ----------
    image : (H, W) or (H, W, C) array_like
        Any dtype; not modified.
    edge_fraction : float
        Position of the edge between background (0) and disc (1) levels.
    threshold : float, optional
        A fixed threshold on the brightest channel instead of steps 1-2.

    Returns
    -------
    (H, W) bool ndarray, one filled connected region.

    Raises
    ------
    MaskError
        If no field of view is found.
    """
    from .core import gaussian_kernel, masked_convolve  # core depends on nothing here

    img = np.asarray(image)
    v = img.max(axis=-1) if img.ndim == 3 else img
    v = v.astype(np.float32)
    h, w = v.shape
    s = min(h, w)
    v = cv2.GaussianBlur(v, (0, 0), max(0.7, s / 800))
    open_r = max(1, int(round(s / 300)))
    if threshold is not None:
        m = _clean(v > threshold, open_r)
    else:
        # levels vary slowly: measure them on a copy at most ~600 px wide
        f = min(1.0, 600.0 / s)
        small = cv2.resize(v, None, fx=f, fy=f, interpolation=cv2.INTER_AREA) if f < 1 else v
        ss = min(small.shape)
        if _frame_is_bright(small):
            # no dark background around the disc (a crop inside the FOV): the whole image is the FOV
            return np.ones((h, w), bool)
        rough = _clean(small > _rough_threshold(small), max(1, int(round(ss / 300))))
        if rough.sum() < 0.01 * rough.size or rough.all():
            raise MaskError("cannot estimate a field of view: no bright disc on a dark background")
        band = max(2, int(round(0.02 * ss)))
        inner = cv2.erode(rough.astype(np.uint8), _disk(band))
        outer = 1 - cv2.dilate(rough.astype(np.uint8), _disk(band))
        k = gaussian_kernel(max(2.0, 0.03 * ss))
        disc_level = masked_convolve(small, inner.astype(bool), k, min_weight=1e-3)
        bg_level = masked_convolve(small, outer.astype(bool), k, min_weight=1e-3)
        disc_level = np.where(np.isnan(disc_level), np.median(small[inner > 0]), disc_level)
        bg_level = np.where(np.isnan(bg_level), np.median(small[outer > 0]) if outer.any()
                            else small[~rough].mean(), bg_level)
        t = bg_level + edge_fraction * (disc_level - bg_level)
        if f < 1:
            t = cv2.resize(t, (w, h), interpolation=cv2.INTER_LINEAR)
            inner = cv2.resize(inner, (w, h), interpolation=cv2.INTER_NEAREST)
            outer = cv2.resize(outer, (w, h), interpolation=cv2.INTER_NEAREST)
        inner, outer = inner.astype(bool), outer.astype(bool)
        near = ~(inner | outer)
        m = inner | (near & (v > t))
        m = _clean(m, open_r)
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


def margin_distance(mask) -> np.ndarray:
    """Euclidean distance (pixels) of every FOV pixel to the nearest pixel outside it.

    Pixels touching the margin are at distance 0; pixels outside the mask
    get 0. The image rectangle's edge does not count as a margin.
    """
    m = np.asarray(mask, dtype=bool)
    padded = cv2.copyMakeBorder(m.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_REPLICATE)
    d = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    return np.where(m, d - 1.0, 0.0).astype(np.float32)


#: trim_rim: how deep the rim may be, as a fraction of the FOV diameter (11 px on DRIVE).
RIM_MAX_FRACTION = 0.02
#: trim_rim: a ring is part of the rim when its brightness departs from the
#: disc just inside by more than this fraction.
RIM_TOLERANCE = 0.05
_RIM_SECTORS = 72


def _group_medians(group: np.ndarray, values: np.ndarray, n_groups: int) -> np.ndarray:
    """Median of ``values`` (n, C) within each group id in ``range(n_groups)``; NaN for empty groups."""
    out = np.full((n_groups, values.shape[1]), np.nan, np.float64)
    ids = np.arange(n_groups)
    for c in range(values.shape[1]):
        order = np.lexsort((values[:, c], group))
        g, v = group[order], values[order, c].astype(np.float64)
        starts = np.searchsorted(g, ids, "left")
        counts = np.searchsorted(g, ids, "right") - starts
        has = counts > 0
        lo = starts[has] + (counts[has] - 1) // 2
        hi = starts[has] + counts[has] // 2
        out[has, c] = (v[lo] + v[hi]) / 2
    return out


def trim_rim(image, mask, *, tolerance: float = RIM_TOLERANCE, max_px: int | None = None) -> np.ndarray:
    """Drop the transition rim at the FOV margin, adapting to the image.

    The margin of a real FOV is a ring a few pixels wide that is darker (and
    on some cameras then brighter) than the retina just inside it. Every
    channel is checked; a ring is rim when any channel departs. The FOV is
    cut into 72 angular sectors around its centroid; in each, 1-px rings are
    compared, by their median brightness (robust to vessels), with the disc
    just inside the rim zone (rings ``max_px`` to ``2 * max_px``). Everything
    outside the innermost ring that departs by more than ``tolerance`` is
    dropped. Depths are smoothed across neighbouring sectors.

    Parameters
    ----------
    image : (H, W) or (H, W, C) array_like
    mask : (H, W) bool array_like
    tolerance : float
        Relative departure from the disc level that marks a rim ring.
    max_px : int, optional
        Deepest rim considered; default ``RIM_MAX_FRACTION`` of the FOV diameter.

    Returns
    -------
    (H, W) bool ndarray, a subset of ``mask``.
    """
    m = np.asarray(mask, dtype=bool)
    img = np.asarray(image)
    v = (img if img.ndim == 3 else img[..., None]).astype(np.float32)
    if max_px is None:
        max_px = max(2, int(round(RIM_MAX_FRACTION * fov_diameter(m))))
    d = margin_distance(m)
    ys, xs = np.nonzero(m & (d < 2 * max_px))
    if ys.size == 0:
        return m.copy()
    cy, cx = np.nonzero(m)
    angle = np.arctan2(ys - cy.mean(), xs - cx.mean())
    sector = ((angle + np.pi) / (2 * np.pi) * _RIM_SECTORS).astype(np.int64) % _RIM_SECTORS
    ring = d[ys, xs].astype(np.int64)
    vals = v[ys, xs]  # (n, C)
    # groups: (sector, ring) for the rings of the rim zone, (sector, max_px) for the reference
    group = sector * (max_px + 1) + np.minimum(ring, max_px)
    med = _group_medians(group, vals, _RIM_SECTORS * (max_px + 1)).reshape(
        _RIM_SECTORS, max_px + 1, -1)
    ref = med[:, max_px:max_px + 1, :]  # (S, 1, C)
    rings = med[:, :max_px, :]
    with np.errstate(invalid="ignore"):
        off = np.abs(rings - ref) > tolerance * np.maximum(ref, 1e-6)
    inconsistent = np.any(off & ~np.isnan(rings) & ~np.isnan(ref), axis=2)  # (S, max_px)
    # depth: one past the innermost inconsistent ring (0 when none)
    any_bad = inconsistent.any(axis=1)
    last_bad = max_px - 1 - np.argmax(inconsistent[:, ::-1], axis=1)
    depth = np.where(any_bad, last_bad + 1, 0)
    # smooth across neighbouring sectors (circular median of 5)
    padded = np.concatenate([depth[-2:], depth, depth[:2]])
    depth = np.array([int(np.median(padded[i:i + 5])) for i in range(_RIM_SECTORS)])
    out = m.copy()
    drop = ring < depth[sector]
    out[ys[drop], xs[drop]] = False
    if not out.any():
        raise MaskError("mask is empty after trimming its rim")
    return out


def feather_mask(mask, px: float) -> np.ndarray:
    """Turn a boolean FOV into a soft one: weights ramp from 1/px at the margin to 1 at px inside.

    ``weight = min(1, (d + 1) / px)`` inside the mask (``d``: distance to the
    margin, 0 for pixels touching it), 0 outside; ``px <= 1`` keeps the mask
    binary (as float32).
    """
    m = np.asarray(mask, dtype=bool)
    px = float(px)
    if not (math.isfinite(px) and px >= 0):
        raise ValueError(f"feather must be >= 0 pixels, got {px}")
    if px <= 1:
        return m.astype(np.float32)
    d = margin_distance(m)
    return np.where(m, np.minimum(1.0, (d + 1.0) / px), 0.0).astype(np.float32)
