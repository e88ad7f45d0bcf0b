"""Settling a reduced estimate's edge at full resolution, along rays from the mask's centre,
in a ring a few pixels wide (no full-size copies).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import cv2
import numpy as np

from .masks import _centroid, _disk, channel_max

if TYPE_CHECKING:  # (estimate imports this module)
    from .estimate import FovEstimate


@dataclass(frozen=True)
class _TextRule:
    """Burned-in text beside the disc: beyond the fitted circle ``(cx, cy, r)`` by more than
    twice the median residual of its points (at least a pixel), or beyond a flat cut's line
    (``cuts``), a pixel is text, not retina, where its level is above ``floor`` (clearly not
    background) and it is white or pale (its lowest channel at least ``white`` times its
    highest; None for one channel: the retina is red, text white, gray or pale) or brighter
    than ``bright`` (the retina's bright end in its outer band, times :data:`TEXT_BRIGHT`)."""

    cx: float
    cy: float
    r: float
    residual: float
    floor: float
    bright: float
    white: float | None
    #: flat cuts: beyond the lines y = y_lo, y_hi, x = x_lo, x_hi (infinite: none)
    cuts: tuple[float, float, float, float] = (-math.inf, math.inf, -math.inf, math.inf)

    def scaled(self, k: int) -> _TextRule:
        """The rule at ``k`` times the resolution (small pixel i covers full pixels i*k ..)."""
        off = (k - 1) / 2
        y_lo, y_hi, x_lo, x_hi = (c * k + off for c in self.cuts)
        return _TextRule(self.cx * k + off, self.cy * k + off, self.r * k, self.residual * k,
                         self.floor, self.bright, self.white, (y_lo, y_hi, x_lo, x_hi))

    def beyond(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Whether the points ``xs, ys`` lie where no retina should be (arrays broadcast)."""
        return self.beyond_circle(xs, ys) | self.beyond_cuts(xs, ys)

    def beyond_circle(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        r = self.r + max(1.0, 2.0 * self.residual)
        return (xs - self.cx) ** 2 + (ys - self.cy) ** 2 > r * r

    def beyond_cuts(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray | bool:
        y_lo, y_hi, x_lo, x_hi = self.cuts
        out: np.ndarray | bool = False
        if math.isfinite(y_lo) or math.isfinite(y_hi):
            out = (ys < y_lo) | (ys > y_hi)
        if math.isfinite(x_lo) or math.isfinite(x_hi):
            out = out | (xs < x_lo) | (xs > x_hi)
        return out

    def text(self, level: np.ndarray, lowest: np.ndarray | None, highest: np.ndarray | None
             ) -> np.ndarray:
        """Of pixels beyond the circle with these levels (and lowest, highest channels)."""
        out = level > self.bright
        if self.white is not None and lowest is not None and highest is not None:
            out |= lowest >= self.white * highest
        return out & (level > self.floor)

    def text_at(self, img: np.ndarray, level: np.ndarray, ys: np.ndarray, xs: np.ndarray
                ) -> np.ndarray:
        """Of the pixels ``ys, xs`` of ``img`` beyond the circle (``level``: the estimator's
        level map of ``img``)."""
        lowest = highest = None
        if self.white is not None:
            px = img[ys, xs].astype(np.float32)
            lowest, highest = px.min(axis=1), px.max(axis=1)
        return self.text(level[ys, xs], lowest, highest)


#: A pixel beyond the disc's circle is text where it is brighter than this times the retina's
#: bright end (the 95th percentile of its outer band)...
TEXT_BRIGHT = 1.25
#: ... or white or pale: its lowest channel at least this fraction of its highest (the retina's
#: blue is a third of its red or less; white text 1, JPEG's colour bleed on its strokes ~0.8).
TEXT_WHITE = 0.7


@dataclass(frozen=True)
class _Run:
    """An estimate and the maps it was made from (for settling a reduced run's edge)."""

    estimate: FovEstimate
    smooth: np.ndarray | None = None  # the brightest channel (or distance from padding), blurred
    edge: np.ndarray | None = None  # the edge threshold
    low: np.ndarray | None = None  # the 'not background' level
    colour: np.ndarray | None = None  # the padding colour, when the frame is padded
    is_bg: np.ndarray | None = None  # the level up to which the outside of an edge is background
    tol: float = 1.5  # how near the fitted circle a contour point is on it (px)
    text: _TextRule | None = None  # burned-in text beside the disc
    text_px: np.ndarray | None = None  # the pixels it tells are text (for the confidence)


def _settle_ring(img: np.ndarray, k: int, run: _Run) -> np.ndarray:
    """The full-resolution mask of a run on the image reduced ``k`` times: the run's mask
    scaled up, its edge settled along rays from its centre by the full-resolution pixels.

    Along each ray (one per pixel of the contour) the edge starts where the run's smoothed
    image crosses its edge threshold (on the reduced copy, to a fraction of its pixel), and
    is then settled by :func:`_settle_edge`'s rules on the full-resolution pixels the ray
    crosses (half a pixel apart): pixels at the background's level are peeled off, pixels
    above it and above half the edge's own level are added. The mask is the polygon through
    the rays' edges, over the reduced mask eroded past the ring (for any part of the mask a
    ray from the centre does not reach)."""
    est = run.estimate
    assert run.smooth is not None and run.edge is not None and run.low is not None
    ms = est.mask
    h, w = img.shape[:2]
    sh, sw = ms.shape
    off = (k - 1) / 2
    blur = max(0.7, min(h, w) / 800)  # (the full-resolution estimator's blur)
    width = int(math.ceil(2 * blur)) + 1
    moves = width + k + 1  # the farthest the settle moves an edge (full px)
    cys, cxs = _centroid(ms)
    # on the reduced copy: rays every reduced contour pixel, samples 0.5 px apart
    far = math.hypot(max(cxs, sw - cxs), max(cys, sh - cys)) + 2
    nc = int(max(720, math.ceil(2 * math.pi * far)))
    tc = (np.arange(nc) + 0.5) * (2 * math.pi / nc)
    cosc, sinc = np.cos(tc).astype(np.float32), np.sin(tc).astype(np.float32)
    step = np.arange(0.0, far, 0.5, dtype=np.float32)
    sx, sy = cxs + cosc[:, None] * step, cys + sinc[:, None] * step
    along = cv2.remap(ms.view(np.uint8), sx, sy, cv2.INTER_NEAREST,
                      borderMode=cv2.BORDER_CONSTANT, borderValue=2)
    first = np.argmax(along != 1, axis=1)
    rows_c = np.arange(nc)
    # the start: the smoothed image's crossing of the edge threshold nearest the mask's edge
    lin = dict(interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    span = np.arange(-2 * (k + 2), 2 * (k + 2) + 1)  # a reduced pixel and a bit, 0.5 apart
    idx = np.clip(first[:, None] + span[None, :], 0, step.size - 1)
    wx, wy = np.take_along_axis(sx, idx, 1), np.take_along_axis(sy, idx, 1)
    gap = cv2.remap(run.smooth, wx, wy, **lin) - cv2.remap(run.edge, wx, wy, **lin)
    gap[(wx <= -0.5) | (wx >= sw - 0.5) | (wy <= -0.5) | (wy >= sh - 0.5)] = -1.0  # beyond: out
    cross = (gap[:, :-1] > 0) & (gap[:, 1:] <= 0)
    centre_i = int(np.searchsorted(span, 0))
    dist = np.where(cross, np.abs(np.arange(span.size - 1) + 0.5 - centre_i), np.inf)
    best = np.argmin(dist, axis=1)
    g0, g1 = gap[rows_c, best], gap[rows_c, best + 1]
    frac = np.where(g0 > g1, g0 / np.where(g0 > g1, g0 - g1, 1.0), 0.5)
    r_cross = step[idx[rows_c, best]] + 0.5 * frac
    found = np.isfinite(dist[rows_c, best])
    r_c = np.where(found, r_cross, np.maximum(step[first] - 0.25, 0.0))
    ex, ey = cxs + cosc * r_c, cys + sinc * r_c  # the start, on the reduced copy
    floor_c = cv2.remap(run.low, ex[:, None], ey[:, None], **lin)[:, 0]
    reach = 2 * int(math.ceil(width / k)) + 1
    level_map = cv2.dilate(np.where(ms, run.smooth, 0).astype(np.float32),
                           cv2.getStructuringElement(cv2.MORPH_RECT, (reach, reach)))
    level_c = cv2.remap(level_map, ex[:, None], ey[:, None], cv2.INTER_NEAREST,
                        borderMode=cv2.BORDER_REPLICATE)[:, 0]
    # to full resolution: a ray per contour pixel, the coarse rays' values interpolated
    cx, cy = cxs * k + off, cys * k + off
    n = int(min(40000, max(nc, math.ceil(2 * math.pi * float(r_c.max()) * k))))
    theta = (np.arange(n) + 0.5) * (2 * math.pi / n)

    def around(a: np.ndarray) -> np.ndarray:  # the coarse rays' values at the full-resolution rays
        return _around_at(theta, tc, a)

    r0 = around(r_c * k).astype(np.float32)
    floor = around(floor_c).astype(np.float32)[:, None]
    half = (0.5 * around(level_c)).astype(np.float32)[:, None]
    cos, sin = np.cos(theta).astype(np.float32), np.sin(theta).astype(np.float32)
    j = np.arange(-2 * moves, 2 * moves + 1, dtype=np.float32) * 0.5
    rad = r0[:, None] + j[None, :]
    X, Y = cx + cos[:, None] * rad, cy + sin[:, None] * rad
    p = _ring_level(img, X, Y, run.colour)
    p[(X <= -0.5) | (X >= w - 0.5) | (Y <= -0.5) | (Y >= h - 0.5)] = -np.inf  # beyond: outside
    # the full-resolution start: the profile smoothed as the run smoothed its image (along
    # the ray) crosses the edge threshold, nearest the reduced copy's crossing
    g = cv2.getGaussianKernel(2 * int(math.ceil(6 * blur)) + 1, 2 * blur)  # (samples 0.5 px apart)
    smooth = cv2.sepFilter2D(np.where(np.isfinite(p), p, 0).astype(np.float32), -1, g,
                             np.ones(1), borderType=cv2.BORDER_REPLICATE)
    edge = around(cv2.remap(run.edge, ex[:, None], ey[:, None], **lin)[:, 0])
    above = smooth > edge.astype(np.float32)[:, None]
    cross = above[:, :-1] & ~above[:, 1:]
    dist = np.where(cross, np.abs(np.arange(1, j.size) - 2 * moves), j.size)
    best = np.argmin(dist, axis=1)
    rows = np.arange(n)
    e = np.where(dist[rows, best] <= 2 * (k + 1), best + 1, 2 * moves)  # the first outside sample
    # settle: a sample is in where above the background's level and half the edge's level;
    # the edge is peeled back to the last such sample before it, then grown to the first one
    # that is not, each at most ``moves`` px (2 * moves samples)
    inn = (p > floor) & (p > half)
    text = None if run.text is None else run.text.scaled(k)
    on_text: np.ndarray = np.zeros(n, bool)
    if text is not None:
        is_text = _text_at(img, X, Y, p, text)
        inn &= ~is_text
        on_text = np.any(is_text, axis=1)
    top = j.size
    ar = np.arange(top)
    last_in = np.maximum.accumulate(np.where(inn, ar, -1), axis=1)[rows, np.maximum(e - 1, 0)]
    last_in = np.where(e > 0, last_in, -1)
    # still peeling at the window's end (a glow ring; text beyond the disc, where the window
    # holds nothing that is in)
    limited = (last_in + 1 < e - 2 * moves) | (on_text & (last_in < 0) & (e > 0))
    e = np.maximum(last_in + 1, e - 2 * moves)
    next_out = np.minimum.accumulate(np.where(inn, top, ar)[:, ::-1], axis=1)[:, ::-1]
    nxt = np.where(e < top, next_out[rows, np.minimum(e, top - 1)], top)
    e = np.minimum(nxt, e + 2 * moves)
    radius = r0 + j[0] + 0.5 * (e - 0.5)
    # a glow ring outside the disc (above the background, below half the disc's level) can
    # carry the reduced edge farther out than the window: those rays peel on inwards, up to
    # 3 % of the image's short side
    walk = int(math.ceil(0.03 * min(h, w)))
    if limited.any():
        i = np.flatnonzero(limited)
        back = radius[i, None] - 0.5 * np.arange(1, 2 * walk + 1, dtype=np.float32)[None, :]
        bx = (cx + cos[i, None] * back).astype(np.float32)
        by = (cy + sin[i, None] * back).astype(np.float32)
        q = _ring_level(img, bx, by, run.colour)
        hit = (q > floor[i]) & (q > half[i])
        if text is not None:
            hit &= ~_text_at(img, bx, by, q, text)
        first_in = np.argmax(hit, axis=1)
        got = hit[np.arange(i.size), first_in]
        radius[i[got]] = back[got, first_in[got]] + 0.25
    deep = cv2.erode(ms.view(np.uint8), _disk(int(math.ceil((moves + walk) / k)) + 1))
    out = cv2.resize(deep, (w, h), interpolation=cv2.INTER_NEAREST)
    radius = np.maximum(radius, 0.0)

    # a pixel within a pixel of its ray's edge: by its own level
    def decide(ys: np.ndarray, xs: np.ndarray, ang: np.ndarray) -> np.ndarray:
        fx, fy = xs.astype(np.float32)[None, :], ys.astype(np.float32)[None, :]
        lv = _ring_level(img, fx, fy, run.colour)
        ok = (lv > _around_at(ang, theta, floor[:, 0])) & (lv > _around_at(ang, theta, half[:, 0]))
        if text is not None:
            ok &= ~_text_at(img, fx, fy, lv, text)
        return ok[0]

    return _fill_rays(out, cx, cy, theta, radius, decide)


def _text_at(img: np.ndarray, X: np.ndarray, Y: np.ndarray, level: np.ndarray,
             rule: _TextRule) -> np.ndarray:
    """Which of the points ``X, Y`` (their estimator ``level``) are text by ``rule``."""
    out = np.zeros(X.shape, bool)
    far = rule.beyond(X, Y) & (level > rule.floor)
    if not far.any():
        return out
    lowest = highest = None
    if rule.white is not None:
        planes = img if img.dtype in (np.uint8, np.uint16, np.float32) else img.astype(np.float32)
        a = cv2.remap(planes, X[far][None, :].astype(np.float32), Y[far][None, :].astype(np.float32),
                      cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        a = np.nan_to_num(a.reshape(-1, 3).astype(np.float32))
        lowest, highest = a.min(axis=1), a.max(axis=1)
    out[far] = rule.text(level[far], lowest, highest)
    return out


def _around_at(ang: np.ndarray, theta: np.ndarray, values: np.ndarray) -> np.ndarray:
    """``values`` at the rays' angles ``theta`` interpolated to the angles ``ang`` (0 .. 2 pi),
    around the circle."""
    t_w = np.concatenate([theta[-1:] - 2 * math.pi, theta, theta[:1] + 2 * math.pi])
    return np.interp(ang, t_w, np.concatenate([values[-1:], values, values[:1]]))


def _fill_rays(out: np.ndarray, cx: float, cy: float, theta: np.ndarray,
               radius: np.ndarray,
               decide: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]) -> np.ndarray:
    """``out`` (uint8) with the pixels inside the rays' edges set to 1: ``radius`` is the edge's
    distance from ``(cx, cy)`` at the rays' angles ``theta`` (interpolated between them).
    Pixels whose centre is more than a pixel inside it are in, more than a pixel outside
    are out, and ``decide(ys, xs, angles)`` says for those between. (``cv2.fillPoly`` also
    fills pixels up to about half a pixel outside a polygon: it fills the polygon a pixel
    and a half inside the edge, and the pixels along the edge are decided one by one.)"""
    h, w = out.shape
    shift = 4
    cos, sin = np.cos(theta), np.sin(theta)

    def poly(r: np.ndarray) -> np.ndarray:
        return np.rint(np.stack([(cx + cos * r) * (1 << shift),
                                 (cy + sin * r) * (1 << shift)], axis=-1)).astype(np.int32)

    inner = poly(np.maximum(radius - 1.5, 0.0))
    cv2.fillPoly(out, [inner], 1, lineType=cv2.LINE_8, shift=shift)
    # the band to decide: inside the edge grown by 1.5 px, not inside the inner polygon
    # (two fills: a thick polyline costs twice as much at 8 Mpx)
    band = np.zeros((h, w), np.uint8)
    cv2.fillPoly(band, [poly(radius + 1.5)], 1, lineType=cv2.LINE_8, shift=shift)
    cv2.fillPoly(band, [inner], 0, lineType=cv2.LINE_8, shift=shift)
    found = cv2.findNonZero(band)
    if found is None:
        return out.view(bool)
    xs, ys = found.reshape(-1, 2).T.astype(np.intp)
    ang = np.mod(np.arctan2(ys - cy, xs - cx), 2 * math.pi)
    gap = np.hypot(xs - cx, ys - cy) - _around_at(ang, theta, radius)  # < 0: inside the edge
    inside = gap < -1.0
    near = np.abs(gap) <= 1.0
    if near.any():
        inside[near] = decide(ys[near], xs[near], ang[near])
    out[ys, xs] |= inside.view(np.uint8)
    return out.view(bool)


def _ring_level(img: np.ndarray, X: np.ndarray, Y: np.ndarray,
                colour: np.ndarray | None) -> np.ndarray:
    """The estimator's level (the brightest channel, or the distance from a padding colour) of
    ``img`` at the pixels nearest the points ``X, Y``, as float32 (0 beyond the image)."""
    planes = img if img.ndim == 3 else img[..., None]
    if planes.dtype not in (np.uint8, np.uint16, np.int16, np.float32, np.float64):
        planes = planes.astype(np.float32)
    # (one call for up to 4 channels: a channel view is not contiguous, and OpenCV copies it)
    groups = [planes] if planes.shape[-1] <= 4 else [planes[..., c] for c in range(planes.shape[-1])]
    out = None
    c0 = 0
    for g in groups:
        a = cv2.remap(g, X, Y, cv2.INTER_NEAREST, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
        a = a.reshape(X.shape + (-1,)).astype(np.float32)
        if planes.dtype.kind == "f":
            a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
        if colour is not None:
            a = np.abs(a - np.asarray(colour, np.float32)[c0:c0 + a.shape[-1]])
        c0 += a.shape[-1]
        lv = channel_max(a)
        out = lv if out is None else np.maximum(out, lv)
    assert out is not None
    return out
