"""The transition rim at the FOV margin: where the image shows one (a ring off the retina's
trend), and trimming it.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal, NamedTuple, overload

import cv2
import numpy as np
from numpy.typing import ArrayLike

from ..convolution import dtype_scale
from ..errors import MaskError
from .masks import _centroid, fov_diameter

#: trim_rim: the deepest rim trimmed, as a fraction of the FOV diameter (6 px on DRIVE).
RIM_MAX_FRACTION = 0.011


#: trim_rim: a ring is off the retina's trend when its brightness departs from the line
#: through the rings inside it by more than this many gray levels (8-bit units; scaled for
#: 16-bit and float images) and more than 3 times the rings' own noise, in any channel.
RIM_TOLERANCE = 2.5


#: trim_rim: the line is fitted through at least this many rings (or the deepest rim, if more).
RIM_TREND_RINGS = 14
#: The trend line also spans this fraction of the FOV diameter, up to RIM_TREND_MAX_RINGS
#: rings: a rim or glow ring a third of the window wide or more is a plateau that a straight
#: line through the window follows (a DRIVE-like glow scaled to 1200 px, 6 px of a 14-ring
#: window, stayed: +5 gray levels); more than about 36 rings reach the curvature of the
#: illumination at HRF size, which then reads as a rim.
RIM_TREND_FRACTION = 0.025
RIM_TREND_MAX_RINGS = 36


#: trim_rim: a depth is accepted when this many rings from it on are on their trend.
RIM_CONFIRM = 3


_RIM_SECTORS = 72


def _group_quantiles(group: np.ndarray, values: np.ndarray, n_groups: int
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Median and lower decile of ``values`` (n, C) within each group id in
    ``range(n_groups)``, each ``(n_groups, C)`` float64, NaN for empty groups. The median is the
    mean of the two middle ranks; the lower decile the value of rank ``(n - 1) // 10``."""
    med = np.full((n_groups, values.shape[1]), np.nan, np.float64)
    low = np.full((n_groups, values.shape[1]), np.nan, np.float64)
    ids = np.arange(n_groups)
    integral = values.dtype.kind in "ub" and values.dtype.itemsize <= 2
    # 8- and 16-bit values: one sort of a combined key (group, value) per channel, 3-5x faster
    # than a lexsort, and faster than a histogram per group (1.6x on an HRF ring, 3.5x on DRIVE's)
    bits = 8 * values.dtype.itemsize
    key0 = group.astype(np.int64) << bits if integral else None
    for c in range(values.shape[1]):
        if key0 is not None:
            key = np.sort(key0 | values[:, c].astype(np.int64))
            g, v = key >> bits, (key & ((1 << bits) - 1)).astype(np.float64)
        else:
            order = np.lexsort((values[:, c], group))
            g, v = group[order], values[order, c].astype(np.float64)
        starts = np.searchsorted(g, ids, "left")
        counts = np.searchsorted(g, ids, "right") - starts
        has = counts > 0
        first, n = starts[has], counts[has]
        med[has, c] = (v[first + (n - 1) // 2] + v[first + n // 2]) / 2
        low[has, c] = v[first + (n - 1) // 10]
    return med, low


def _unit(img: np.ndarray, value_range: tuple[float, float] | None = None) -> float:
    """One 8-bit gray level in the image's units: of ``value_range`` (lo, hi) when given, else
    of the dtype's range (float images: 0..1)."""
    if value_range is not None:
        return (float(value_range[1]) - float(value_range[0])) / 255.0
    if img.dtype in (np.uint8, np.uint16) or img.dtype.kind == "f":
        return dtype_scale(img.dtype)
    return 1.0  # other integers: their own units (normalize asks them for a value range)


def rim_depths(image: ArrayLike, mask: ArrayLike, *, tolerance: float = RIM_TOLERANCE,
               max_px: int | None = None,
               value_range: tuple[float, float] | None = None) -> np.ndarray:
    """Depth (px) of the transition rim in each of 72 angular sectors around the FOV centroid.

    In each sector the median brightness (robust to vessels) of every 1-px
    ring at distance ``d`` from the margin is taken, per channel. The depth
    is the smallest ``D`` such that rings ``D``, ``D + 1`` and ``D + 2`` lie
    on the least-squares line through rings ``D .. D + W`` (``W``: the most
    of :data:`RIM_TREND_RINGS`, ``max_px`` and :data:`RIM_TREND_FRACTION` of
    the diameter up to :data:`RIM_TREND_MAX_RINGS`) within ``tolerance`` gray
    levels and 3 times the rings' own noise, in every channel: the retina's
    trend there, which a first-order local mean follows. A dark transition
    ring, a bright glow ring inside it, or chroma blur at a crisp edge break
    the line and are rim; a smooth fall-off, a gradient or a crisp edge with
    the retina's own values are on it and are kept (depth 0). Depths are
    capped at ``max_px`` and smoothed along the boundary (the second largest
    of 5 neighbouring sectors); where the first ring kept is partly rim (a rim
    that does not follow the pixel grid: the ring's median less its lower
    decile exceeds that of the 3 rings inside it), it goes too. ``value_range`` (lo, hi) says what the
    image's values span when it is not its dtype's range (float: 0..1), so
    that ``tolerance`` is in 8-bit units of that range. NaN pixels (outside
    the field of view by the library's rule) are ignored.

    Returns
    -------
    depths : (72,) int ndarray, sector ``i`` covering angles from
        ``-pi + 2 pi i / 72`` around the centroid.
    """
    m = np.asarray(mask, dtype=bool)
    return _rim_depths(image, m, _centroid(m), tolerance, max_px, value_range).depth


def _sector_position(ys: np.ndarray, xs: np.ndarray, centre: tuple[float, float]) -> np.ndarray:
    """Angular position around ``centre`` in sector units (0 .. 72)."""
    cy, cx = centre
    return (np.arctan2(ys - cy, xs - cx) + np.pi) / (2 * np.pi) * _RIM_SECTORS


def _on_trend(med: np.ndarray, max_px: int, width: int, limit: np.ndarray) -> np.ndarray:
    """``(S, max_px + 1)`` bool: rings ``D .. D + RIM_CONFIRM - 1`` of each sector lie on the
    least-squares line through rings ``D .. D + width - 1`` within ``limit`` ``(S, C)``, in
    every channel. Rings with no pixels do not vote; a sector with fewer than 4 rings passes."""
    S = med.shape[0]
    on = np.ones((S, max_px + 1), bool)
    with np.errstate(invalid="ignore", divide="ignore"):
        for depth in range(max_px + 1):
            seg = med[:, depth:depth + width, :]  # (S, rings, C)
            r = np.arange(seg.shape[1], dtype=np.float64)[None, :, None]
            ok = ~np.isnan(seg)
            cnt = ok.sum(1)
            mx = np.where(ok, r, 0.0).sum(1) / cnt
            my = np.where(ok, seg, 0.0).sum(1) / cnt
            dx = np.where(ok, r - mx[:, None], 0.0)
            sxx = (dx * dx).sum(1)
            slope = np.where(sxx > 0, (dx * np.where(ok, seg - my[:, None], 0.0)).sum(1) / sxx, 0.0)
            fit = my[:, None] + slope[:, None] * (r[:, :RIM_CONFIRM] - mx[:, None])
            resid = np.abs(seg[:, :RIM_CONFIRM, :] - fit)
            good = ((resid <= limit[:, None, :]) | np.isnan(resid)).all(axis=1) | (cnt < 4)
            on[:, depth] = good.all(axis=1)
    return on


def _margin_rings(m: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``ys, xs, d``: the FOV pixels less than ``depth`` px from the margin and their
    :func:`margin_distance` (float32). The distance transform runs around a rectangle of
    pixels known to be deeper (from a reduced copy of the mask), not over it: a pixel's
    distance below ``depth`` depends only on the pixels within ``depth`` of it."""
    h, w = m.shape
    pad = depth + 2
    pieces = _shallow_pieces(m, depth + 2, max(64, 4 * pad))
    ys_all, xs_all, d_all = [], [], []
    u8 = m.view(np.uint8)
    for (a0, a1, b0, b1) in pieces:
        if a1 <= a0 or b1 <= b0:
            continue
        # only the bounding box of the piece's inside pixels (the background beside the disc
        # is most of a piece; a pixel less than depth from the margin has its nearest outside
        # pixel within pad of it, so inside the padded box)
        sub = m[a0:a1, b0:b1]
        cols = np.flatnonzero(sub.any(axis=0))
        if cols.size == 0:
            continue
        rows = np.flatnonzero(sub[:, cols[0]:cols[-1] + 1].any(axis=1))
        a0, a1 = a0 + int(rows[0]), a0 + int(rows[-1]) + 1
        b0, b1 = b0 + int(cols[0]), b0 + int(cols[-1]) + 1
        c0, c1, e0, e1 = max(0, a0 - pad), min(h, a1 + pad), max(0, b0 - pad), min(w, b1 + pad)
        padded = cv2.copyMakeBorder(u8[c0:c1, e0:e1], 1, 1, 1, 1, cv2.BORDER_REPLICATE)
        dt = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        own = dt[1 + a0 - c0:1 + a1 - c0, 1 + b0 - e0:1 + b1 - e0]
        flat = np.flatnonzero((own >= 1) & (own < depth + 1))  # inside (0 outside), shallow
        ys, xs = np.divmod(flat, own.shape[1])
        d_all.append(own[ys, xs] - 1.0)
        ys_all.append(ys + a0)
        xs_all.append(xs + b0)
    if not ys_all:
        return np.zeros(0, np.intp), np.zeros(0, np.intp), np.zeros(0, np.float32)
    return np.concatenate(ys_all), np.concatenate(xs_all), np.concatenate(d_all)


def _shallow_pieces(m: np.ndarray, depth: int, band: int) -> list[tuple[int, int, int, int]]:
    """Rectangles ``(y0, y1, x0, x1)`` covering every pixel of the mask that may be less than
    ``depth`` px from its margin: bands of ``band`` rows, each without the run of columns
    (through the middle of the mask) whose pixels are all deeper, as a reduced copy of the
    mask shows it (short side about 300 px; the image border is not a margin)."""
    h, w = m.shape
    k = min(h, w) // 300
    if k < 2:
        return [(0, h, 0, w)]
    hs, ws = -(-h // k), -(-w // k)
    # every pixel of the block inside: the count of those outside, exactly (a uint8 block
    # mean rounds 3 of 4 up to 1). The rows and columns beyond a multiple of k are replicated
    # into whole blocks, as the distance transform's border is (the image's edge is no
    # margin): an outside pixel there counts for its block, and so for its neighbours' depth
    # outside as 255 while k <= 15: a block with one outside pixel has an 8-bit mean of at
    # least 255 / k^2 > 1 (it rounds up); beyond that, float block means of 0/1
    small = k <= 15
    src = cv2.compare(m.view(np.uint8), 0, cv2.CMP_EQ) if small else (~m).view(np.uint8)
    grid = cv2.copyMakeBorder(src, 0, hs * k - h, 0, ws * k - w, cv2.BORDER_REPLICATE)
    outside = cv2.resize(grid if small else grid.astype(np.float32), (ws, hs),
                         interpolation=cv2.INTER_AREA)
    full = outside == 0
    padded = cv2.copyMakeBorder(full.view(np.uint8), 1, 1, 1, 1, cv2.BORDER_REPLICATE)
    ds = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[1:-1, 1:-1]
    ok = (ds - 1.0) * k >= depth + 2 * k  # every pixel of the block that deep
    centre = int(round(_centroid(full)[1])) if full.any() else ws // 2
    pieces = []
    for y0 in range(0, h, band):
        y1 = min(h, y0 + band)
        r0, r1 = y0 // k, min(hs, -(-y1 // k))
        if r1 <= r0:
            pieces.append((y0, y1, 0, w))
            continue
        run = ok[r0:r1].all(axis=0)
        # the run of deep columns through the middle (or the longest one)
        if not run.any():
            pieces.append((y0, y1, 0, w))
            continue
        starts = np.flatnonzero(run & ~np.concatenate([[False], run[:-1]]))
        ends = np.flatnonzero(run & ~np.concatenate([run[1:], [False]])) + 1
        pick = np.flatnonzero((starts <= centre) & (ends > centre))
        i = int(pick[0]) if pick.size else int(np.argmax(ends - starts))
        x0, x1 = int(starts[i]) * k, min(int(ends[i]) * k, w)
        pieces += [(y0, y1, 0, x0), (y0, y1, x1, w)]
    return pieces


class _RimScan(NamedTuple):
    """What :func:`_rim_depths` measured: the depths, and the pixels near the margin it looked at
    (``ys, xs``, their ring index, angular position in sector units (:func:`_sector_position`)
    and values) with the rings' medians ``(S, rings, C)`` and one 8-bit gray level in the
    image's units."""

    depth: np.ndarray
    ys: np.ndarray
    xs: np.ndarray
    ring: np.ndarray
    pos: np.ndarray
    vals: np.ndarray
    med: np.ndarray
    unit: float
    max_px: int


#: trim_rim: a pixel of the first RIM_DARK_RINGS rings kept (within the cap) is rim, whatever its
#: ring's median, where it is darker than this fraction of the retina inside it (the brightest
#: median of the rings 3 to 6 further in) in every channel that is at least 20 gray levels bright
#: (two or more such channels: vessels keep most of their red, 0.8x on synthetic images; a dim
#: image's vessel by a dim margin reached 0.65x in red).
RIM_DARK_PIXEL = 0.6
#: ... and in an image of one channel, darker than this fraction (vessels in green or red-free
#: light reach 0.55x of the retina beside them at most, a rim 0.4x).
RIM_DARK_GRAY = 0.45
RIM_DARK_RINGS = 4


def _rim_depths(image: ArrayLike, m: np.ndarray, centre: tuple[float, float], tolerance: float,
                max_px: int | None, value_range: tuple[float, float] | None = None
                ) -> _RimScan:
    """The depths of :func:`rim_depths`, with what they were measured on (:class:`_RimScan`)."""
    img = np.asarray(image)
    v = img if img.ndim == 3 else img[..., None]
    unit = _unit(img, value_range)
    diam = fov_diameter(m)
    if max_px is None:
        max_px = max(2, int(round(RIM_MAX_FRACTION * diam)))
    width = max(RIM_TREND_RINGS, max_px,
                min(int(round(RIM_TREND_FRACTION * diam)), RIM_TREND_MAX_RINGS))
    n_rings = max_px + RIM_CONFIRM + width
    ys, xs, d = _margin_rings(m, n_rings)
    # (1e-3: no distance sqrt(n) to a pixel lies that close below an integer, and the
    # transform of a piece may differ from the whole image's in the last bit)
    ring = (d + 1e-3).astype(np.int64)
    if ys.size == 0:
        empty = np.zeros((0, v.shape[2]), v.dtype)
        return _RimScan(np.zeros(_RIM_SECTORS, np.int64), ys, xs, ring, d, empty,
                        np.full((_RIM_SECTORS, n_rings, v.shape[2]), np.nan), unit, max_px)
    pos = _sector_position(ys, xs, centre)
    # (a flat take reads the same pixels 2.5x faster than a 2-D fancy index)
    vals = (v.reshape(-1, v.shape[2]).take(ys * v.shape[1] + xs, axis=0)
            if v.flags.c_contiguous else v[ys, xs])
    if vals.dtype.kind == "f":
        vals = vals.astype(np.float64)
        bad = ~np.isfinite(vals).all(axis=1)
        if bad.any():  # NaN / inf pixels are outside the field of view: they vote for nothing
            keep = ~bad
            ys, xs, vals = ys[keep], xs[keep], vals[keep]
            pos, ring = pos[keep], ring[keep]
    sector = pos.astype(np.int64) % _RIM_SECTORS
    med, low = (q.reshape(_RIM_SECTORS, n_rings, -1) for q in _group_quantiles(
        sector * n_rings + ring, vals, _RIM_SECTORS * n_rings))  # (S, rings, C)
    # (the median is robust to vessels; the lower decile sees a ring that is only partly rim)
    # the rings' own noise, per sector and channel, from the rings deep inside
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # sectors without rings (image border)
        # second differences: a gradient across the rings is not noise
        noise = 1.4826 / math.sqrt(6) * np.nanmedian(
            np.abs(np.diff(med[:, max_px:, :], n=2, axis=1)), axis=1)
    noise = np.where(np.isnan(noise), 0.0, noise)
    limit = np.maximum(tolerance * unit, 3.0 * noise)
    on = _on_trend(med, max_px, width, limit)
    # the first depth from the margin whose rings are on the trend (max_px if none is)
    depth = np.where(on.any(axis=1), np.argmax(on, axis=1), max_px)
    # along the boundary: the second largest depth of 5 neighbouring sectors (one deep sector
    # alone is noise, two are a rim; a plain median left rings of a rim between shallower ones)
    padded = np.concatenate([depth[-2:], depth, depth[:2]])
    depth = np.sort(np.lib.stride_tricks.sliding_window_view(padded, 5), axis=1)[:, 3]
    # a first kept ring that is partly rim goes too (not beyond the cap)
    depth = np.minimum(depth + _partly_rim(med - low, depth, limit, unit), max_px)
    return _RimScan(depth.astype(np.int64), ys, xs, ring, pos, vals, med, unit, max_px)


def _partly_rim(spread: np.ndarray, depth: np.ndarray, limit: np.ndarray, unit: float
                ) -> np.ndarray:
    """``(S,)`` 0/1: whether the first ring kept in each sector (ring ``depth``) is partly rim.
    ``spread`` ``(S, rings, C)`` is each ring's median less its lower decile: a rim that does
    not follow the pixel grid (an optical ring, a circle's edge) leaves a ring that is part rim,
    part retina, whose median is on the trend while a tenth or more of its pixels are rim (a dark
    line where they stay); its spread then exceeds those of the 3 rings inside it by more than
    ``limit`` ``(S, C)`` in some channel. A gradient shifts a ring's median and decile alike, and
    vessels cross the rings, widening each ring's spread about as much as its neighbours'. (A tie
    is not partly rim, by a margin of 1e-3 gray levels ``unit``: 8-bit, 16-bit and float copies
    of an image decide alike.)"""
    S, R, _ = spread.shape
    rows = np.arange(S)
    d = np.minimum(depth, R - 4)
    here = spread[rows, d]  # (S, C)
    inside = np.stack([spread[rows, d + j] for j in (1, 2, 3)], axis=0)  # (3, S, C)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        ref = np.nanmax(inside, axis=0)
    partly = (here > ref + limit + 1e-3 * unit) & np.isfinite(here) & np.isfinite(ref)
    return partly.any(axis=1).astype(np.int64)


@overload
def trim_rim(image: ArrayLike, mask: ArrayLike, *, tolerance: float = ...,
             max_px: int | None = ..., value_range: tuple[float, float] | None = ...,
             return_info: Literal[False] = ...) -> np.ndarray: ...
@overload
def trim_rim(image: ArrayLike, mask: ArrayLike, *, tolerance: float = ...,
             max_px: int | None = ..., value_range: tuple[float, float] | None = ...,
             return_info: Literal[True]) -> tuple[np.ndarray, dict[str, Any]]: ...
def trim_rim(image: ArrayLike, mask: ArrayLike, *, tolerance: float = RIM_TOLERANCE,
             max_px: int | None = None, value_range: tuple[float, float] | None = None,
             return_info: bool = False) -> np.ndarray | tuple[np.ndarray, dict[str, Any]]:
    """Drop the transition rim at the FOV margin where the image shows one.

    A real FOV may end in a ring a few pixels wide that is darker (and on
    some cameras then brighter) than the retina just inside it. Where
    :func:`rim_depths` finds such a ring, the pixels shallower than its depth
    are dropped; a smooth fall-off towards the margin is kept. The depth
    varies smoothly along the boundary (linear interpolation between sector
    centres), so straight cuts stay straight.

    Parameters
    ----------
    image : (H, W) or (H, W, C) array_like
    mask : (H, W) bool array_like
    tolerance : float
        Departure, in gray levels (8-bit units), from the retina's trend that
        marks a rim ring (see :func:`rim_depths`).
    max_px : int, optional
        Deepest rim trimmed; default ``RIM_MAX_FRACTION`` of the FOV diameter.
    value_range : (lo, hi), optional
        What the image's values span, if not its dtype's range (float: 0..1).
    return_info : bool
        Also return ``{"rim_dropped": pixels, "rim_depth_mean": px, "rim_depth_max": px}``.

    Returns
    -------
    (H, W) bool ndarray, a subset of ``mask`` (and the info dict with ``return_info``).

    Examples
    --------
    A synthetic photograph with a 4 px dark rim at its margin:

    >>> from retina_prep import trim_rim
    >>> from retina_prep.synthetic import synthetic_fundus
    >>> s = synthetic_fundus((200, 200), rim=4, seed=1)
    >>> trimmed, info = trim_rim(s.image, s.mask, return_info=True)
    >>> bool((trimmed <= s.mask).all()), info["rim_depth_max"] > 0
    (True, True)
    """
    m = np.asarray(mask, dtype=bool)
    centre = _centroid(m)
    scan = _rim_depths(image, m, centre, tolerance, max_px, value_range)
    depth = scan.depth
    out = m.copy()
    dmax = int(depth.max())
    near = scan.ring < dmax + RIM_DARK_RINGS
    ys, xs, ring = scan.ys[near], scan.xs[near], scan.ring[near]
    pos = scan.pos[near] - 0.5  # (sector centres)
    i0 = np.floor(pos).astype(np.int64)
    frac = pos - i0
    dep = (1 - frac) * depth[i0 % _RIM_SECTORS] + frac * depth[(i0 + 1) % _RIM_SECTORS]
    cut = np.rint(dep).astype(np.int64)
    drop = ring < cut
    # and the pixels of the first rings kept that are rim-dark themselves (where an edge runs
    # unevenly through a rim, its rings are part rim at every depth)
    first = ~drop & (ring < np.minimum(cut + RIM_DARK_RINGS, scan.max_px))  # (never past the cap)
    if first.any():
        med = scan.med
        sec = scan.pos[near][first].astype(np.int64) % _RIM_SECTORS  # (each pixel's sector)
        top = med.shape[1] - 1
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # (rings with no pixels: NaN)
            ref = np.nanmax(np.stack([med[sec, np.minimum(cut[first] + j, top)]
                                      for j in (3, 4, 5, 6)]), axis=0)
        # (in gray levels, ties by a margin: 8-bit, 16-bit and float copies decide alike)
        bright = ref >= (20.0 - 1e-3) * scan.unit  # (n, C): channels bright enough to judge
        # (one channel, a red-free photograph, has no red to spare the vessels: a deeper rule)
        one = ref.shape[1] == 1
        fraction, channels = (RIM_DARK_GRAY, 1) if one else (RIM_DARK_PIXEL, 2)
        with np.errstate(invalid="ignore"):
            dark = np.where(bright, scan.vals[near][first]
                            < fraction * ref - 1e-3 * scan.unit, True)
        drop[np.flatnonzero(first)[dark.all(axis=1) & (bright.sum(axis=1) >= channels)]] = True
    out[ys[drop], xs[drop]] = False
    if not out.any():
        raise MaskError("mask is empty after trimming its rim")
    if return_info:
        info = {"rim_dropped": int(m.sum() - out.sum()),
                "rim_depth_mean": round(float(depth.mean()), 2), "rim_depth_max": dmax}
        return out, info
    return out
