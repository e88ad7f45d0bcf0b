"""The field of view estimated from the image alone (:func:`estimate_fov`): the frame and
background, the edge threshold, the RANSAC circle, the dark-sector fill, the edge settled by
its own pixels, and the confidence.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, overload

import cv2
import numpy as np
from numpy.typing import ArrayLike

from ..convolution import as_native, check_layout, masked_convolve
from ..errors import MaskError
from ..kernels import gaussian_kernel
from .masks import _disk, _largest_component, channel_max, fill_holes
from .ring import TEXT_BRIGHT, TEXT_WHITE, _Run, _settle_ring, _TextRule


def _otsu(v: np.ndarray) -> float:
    """Otsu's threshold of a float image (256 bins between its 0.1 and 98th percentiles, levels
    above clipped: white text burned into a dim photograph outweighed the disc, and Otsu split
    the text from the disc; the 99.9th where the 98th is within 10 % of the range of the
    bottom, a disc under 2 % of the image)."""
    lo, top, hi = np.percentile(v, [0.1, 98.0, 99.9])
    if not hi > lo:
        raise MaskError("cannot estimate a field of view: the image is uniform")
    if top - lo >= 0.1 * (hi - lo):
        hi = top
    u8 = np.clip((v - lo) * (255.0 / (hi - lo)), 0, 255).astype(np.uint8)
    t, _ = cv2.threshold(u8, 0, 255, cv2.THRESH_BINARY + cv2.THRESH_OTSU)
    return lo + (t + 0.5) * (hi - lo) / 255.0


def _frame(v: np.ndarray) -> np.ndarray:
    """The pixels of the image's outer frame (2 % of the rows and columns)."""
    return np.concatenate(_frame_segments(v))


def _frame_is_bright(v: np.ndarray) -> bool:
    """True when the image's outer frame has almost no dark background (a crop inside the FOV).

    Dark means below 20 % of the image's bright level (99th percentile): a
    fundus background is near black next to the disc, and a photograph's frame
    is mostly background, even when the disc touches or crosses the border.
    The frame must also be at least 3/4 as bright as the image's median and
    0.6 times its 75th percentile.
    """
    lo, hi = np.percentile(v, [1, 99])
    if not hi > lo:
        return False
    frame = _frame(v)
    few_dark = float(np.mean(frame <= 0.2 * hi)) < 0.25
    # and the frame is about as bright as the image (a grey background is not) and as its
    # brighter part: where the background fills most of the image its median is background too
    # (a dim photograph over a camera's black level of 20: frame/75th percentile 0.34 against
    # 0.74-1.0 for crops inside the FOV)
    level = float(np.median(frame))
    return (few_dark and level > 0.75 * float(np.median(v))
            and level > 0.6 * float(np.percentile(v, 75)))


def _frame_is_another_colour(img: np.ndarray) -> bool:
    """True when a colour image's frame is not the colour of its middle: the median colours of
    the outer frame and of the central 40 % differ by more than :data:`FRAME_HUE` in their
    shares of R, G and B (summed). A crop inside the FOV is retina to its edge (its vignetted
    corners darker, the same orange); a bright bluish or grey frame around a dim disc is not
    (0.5-0.6 apart), and was taken for a crop: the whole image at confidence 1.0."""
    if img.ndim != 3 or img.shape[-1] < 3:
        return False
    h, w = img.shape[:2]
    planes = [img[..., c] for c in range(3)]
    frame = np.array([float(np.median(_frame(p))) for p in planes])
    mid = np.array([float(np.median(p[int(0.3 * h):int(0.7 * h) + 1, int(0.3 * w):int(0.7 * w) + 1]))
                    for p in planes])
    if not (np.isfinite(frame).all() and np.isfinite(mid).all()) or frame.sum() <= 0 or mid.sum() <= 0:
        return False
    return float(np.abs(frame / frame.sum() - mid / mid.sum()).sum()) > FRAME_HUE


#: :func:`_frame_is_another_colour`'s limit (crops of DRIVE and HRF photographs: at most 0.12).
FRAME_HUE = 0.25


#: A frame at least this much one colour is padding, not a crop of the retina (whose frame
#: has texture and vignetting: at most 35 % one colour in DRIVE crops).
UNIFORM_FRAME = 0.6


def _percentiles(v: np.ndarray, qs: Sequence[float], integral: np.ndarray | None = None) -> list[float]:
    """``np.percentile(v, qs)`` (linear interpolation); from a histogram of ``integral`` (the
    same values as 8- or 16-bit integers) when given: exact, and 20x faster at 8 Mpx."""
    if integral is None or integral.dtype not in (np.uint8, np.uint16):
        return [float(x) for x in np.percentile(v, qs)]
    levels = 256 if integral.dtype == np.uint8 else 65536
    counts = cv2.calcHist([np.ascontiguousarray(integral)], [0], None, [levels],
                          [0, levels]).ravel().astype(np.int64)
    cum = np.cumsum(counts)
    n = int(cum[-1])
    out = []
    for q in np.atleast_1d(qs):
        pos = float(q) / 100.0 * (n - 1)
        k = int(math.floor(pos))
        a = int(np.searchsorted(cum, k, side="right"))  # the value of the k-th smallest
        b = int(np.searchsorted(cum, min(k + 1, n - 1), side="right"))
        out.append(a + (pos - k) * (b - a))
    return out


def _from_padding(img: np.ndarray, v: np.ndarray, integral: np.ndarray | None = None
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """``v`` (the brightest channel), or, when the image is padded with a colour that is not
    dark (a grey or white border: most of the frame within 2.5 % of the range of one colour),
    each pixel's distance from that colour (largest over the channels): the disc then stands
    out from a dark background as the rest of the estimate expects. ``integral``: ``v`` as
    the image's own 8- or 16-bit integers, for fast percentiles. Only the frame is looked at
    unless there is padding (no full-size float copy of the channels). Returns the level and
    the padding colour (None when there is none)."""
    lo, hi = _percentiles(v, [0.1, 99.9], integral)
    if not hi > lo:
        return v, None
    planes = img.reshape(img.shape[0], img.shape[1], -1)
    frame = np.stack([_frame(planes[..., c]) for c in range(planes.shape[2])], axis=-1)
    frame = np.nan_to_num(frame.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    colour = np.median(frame, axis=0)
    one_colour = np.abs(frame - colour).max(axis=-1) <= 0.025 * (hi - lo)
    if np.mean(one_colour) < UNIFORM_FRAME or colour.max() <= 0.2 * hi:
        return v, None  # no padding, or a dark one (as :func:`_frame_is_bright` counts dark)
    chans = planes.astype(np.float32)
    if not np.isfinite(chans).all():
        chans = np.nan_to_num(chans, nan=0.0, posinf=0.0, neginf=0.0)
    return np.abs(chans - colour).max(axis=-1), colour


def _frame_boxes(shape: tuple[int, ...], per_side: int = 8) -> list[tuple[int, int, int, int]]:
    """The rectangles ``(y0, y1, x0, x1)`` of :func:`_frame_segments`' pieces, in its order:
    the top, bottom, left and right strips (2 % of the short side), ``per_side`` pieces each."""
    h, w = shape[:2]
    b = max(1, int(round(0.02 * min(h, w))))

    def pieces(n: int) -> list[tuple[int, int]]:
        e = np.linspace(0, n, per_side + 1).astype(int)
        return [(int(a), int(z)) for a, z in zip(e[:-1], e[1:]) if z > a]

    across, down = pieces(w), pieces(h)
    return ([(0, b, a, z) for a, z in across] + [(h - b, h, a, z) for a, z in across]
            + [(a, z, 0, b) for a, z in down] + [(a, z, w - b, w) for a, z in down])


def _frame_segments(v: np.ndarray, per_side: int = 8) -> list[np.ndarray]:
    """The image's outer frame (2 % of the rows and columns) cut into ``per_side`` pieces a side."""
    return [v[y0:y1, x0:x1].ravel() for y0, y1, x0, x1 in _frame_boxes(v.shape, per_side)]


def _background(v: np.ndarray) -> tuple[float, float]:
    """Background level and noise (median, 1.4826 MAD) from the darkest quarter of the frame.

    The frame is cut into 32 pieces; the darkest quarter of them is
    background even when the disc crosses three of the four image borders.
    """
    segs = _frame_segments(v)
    meds = np.array([np.median(sg) for sg in segs])
    keep = np.argsort(meds)[: max(1, len(segs) // 4)]
    px = np.concatenate([segs[i] for i in keep])
    bg = float(np.median(px))
    sigma = max(1.4826 * float(np.median(np.abs(px - bg))), 1e-3 * float(v.max()))
    return bg, sigma


def _disc_level(v: np.ndarray, bg: float, sigma: float, otsu: float) -> float:
    """Median brightness of the disc: the pixels above Otsu's threshold ``otsu`` (see
    :func:`_otsu`) and the background."""
    above = v[v > max(otsu, bg + 2 * sigma)]
    if above.size == 0:
        raise MaskError("cannot estimate a field of view: no bright disc on a dark background")
    disc = float(np.median(above))
    if not disc > bg + 2 * sigma:
        raise MaskError("cannot estimate a field of view: the disc is no brighter than the background")
    return disc


def _uneven_frame(v: np.ndarray, bg: float, sigma: float, otsu: float
                  ) -> tuple[float, tuple[np.ndarray, np.ndarray]]:
    """The top of an uneven frame's levels (``-inf`` for a frame at one dark level), and the
    ``(ys, xs)`` of the frame's bright pixels (none when the top is -inf).

    A scanned film slide has no black background: its frame is a noisy grey
    of 10 to 40 gray levels, brighter towards the corners, with darker strips
    at the image's edge (the darkest pieces of the frame, which set ``bg``).
    Of the 32 pieces of the image's outer frame, those with no pixel of the
    disc in them or in the pieces beside them (99th percentiles below halfway
    from ``bg`` to Otsu's threshold) are frame; where the
    highest of their 95th percentiles is more than 8 noise sigmas and 5 % of
    the contrast above ``bg`` (the rise), the frame is uneven and the rough mask must
    rise above that level (plus 2 sigmas), not just above ``bg``: else it
    takes in the frame's brighter parts. The bright pixels are those above the rise in the
    frame's pieces whose 95th percentile is above it. ``otsu``: Otsu's threshold of ``v``."""
    none = (np.zeros(0, np.intp), np.zeros(0, np.intp))
    boxes = _frame_boxes(v.shape)
    if len(boxes) != 32:  # (an image too small for 8 pieces a side)
        return -math.inf, none
    segs = [v[y0:y1, x0:x1] for y0, y1, x0, x1 in boxes]
    stats = np.array([np.percentile(seg, [95, 99]) for seg in segs])
    disc = stats[:, 1] >= bg + 0.5 * (otsu - bg)
    # neighbours around the frame: top, bottom, left, right, 8 pieces each, corners joined
    ring = list(range(8)) + [24 + i for i in range(8)] + [15 - i for i in range(8)] + \
        [23 - i for i in range(8)]
    order = np.array(ring)
    near_disc = disc[order] | np.roll(disc[order], 1) | np.roll(disc[order], -1)
    # pieces of frame with no disc in them or beside them (a dim part of a disc crossing the
    # border sits beside its bright part)
    frame = order[~near_disc]
    if frame.size < 8:
        return -math.inf, none
    top = float(stats[frame, 0].max())
    rise = bg + max(8.0 * sigma, 0.05 * (otsu - bg))
    if not top > rise:
        return -math.inf, none
    found = [(np.nonzero(segs[i] > rise), boxes[i]) for i in frame[stats[frame, 0] > rise]]
    ys = np.concatenate([p[0] + b[0] for p, b in found])
    xs = np.concatenate([p[1] + b[2] for p, b in found])
    return top + 2.0 * sigma, (ys, xs)


def _frame_is_dim_disc(bright: tuple[np.ndarray, np.ndarray], masks: Sequence[np.ndarray],
                       tol: float) -> bool:
    """Whether the ``bright`` pixels ``(ys, xs)`` of an uneven frame (:func:`_uneven_frame`)
    are a dim part of a disc that crosses the image's border: 90 % of them inside a circle
    fitted to one of the rough ``masks`` (above the frame's level, or above the background
    where cuts and the border leave that one too little edge for a circle). A scanned
    slide's frame is brightest in the image's corners, outside any circle through the
    disc's edge."""
    ys, xs = bright
    if ys.size == 0:
        return False
    for m in masks:
        # (a disc cut at the top and bottom and crossing the sides keeps only four arcs, and
        # a vessel through its dim part adds edge: a looser fit, of a disc's size)
        circle, _ = _fov_circle(m, tol, share=0.25, directions=6, max_r=0.75)
        if circle is not None and np.mean(
                np.hypot(xs - circle[0], ys - circle[1]) <= circle[2] + tol) >= 0.9:
            return True
    return False


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


@dataclass(frozen=True)
class FovEstimate:
    """An estimated field of view and how far to trust it.

    Attributes
    ----------
    mask : (H, W) bool ndarray
        True inside the field of view.
    confidence : float
        Fraction of the mask's contour (away from the image border) that has
        background right outside it: 1.0 when every stretch of the contour
        sits on a real disc edge, lower where it cuts through something
        brighter than the background (a dark part of the disc, glare).
    circle : (cx, cy, r) or None
        The circle fitted (RANSAC) to the confident edge points, in pixels,
        or None when too few points support one.
    residual : float or None
        Median distance (px) of the circle's inlier edge points from it.
    filled : int
        Pixels added inside the fitted circle that are darker than the
        disc but above the background (dark sectors).
    whole_image : bool
        True when the image has no background at its border (a crop inside
        the field of view): the mask is the whole image.
    """

    mask: np.ndarray
    confidence: float
    circle: tuple[float, float, float] | None = None
    residual: float | None = None
    filled: int = 0
    whole_image: bool = False

    @property
    def low_confidence(self) -> bool:
        """True when the confidence is below :data:`LOW_CONFIDENCE`."""
        return self.confidence < LOW_CONFIDENCE

    def summary(self) -> dict:
        """JSON-ready description (no mask), for manifests."""
        return {
            "confidence": round(float(self.confidence), 4),
            "circle": None if self.circle is None else [round(float(c), 2) for c in self.circle],
            "residual": None if self.residual is None else round(float(self.residual), 3),
            "filled": int(self.filled),
            "whole_image": bool(self.whole_image),
        }


#: Estimates whose confidence is below this get a warning.
LOW_CONFIDENCE = 0.85


def _fit_circle(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float] | None:
    """Least-squares (Kasa) circle through points: (cx, cy, r) or None."""
    a = np.column_stack([x, y, np.ones_like(x)])
    b = x * x + y * y
    try:
        sol, *_ = np.linalg.lstsq(a, b, rcond=None)
    except np.linalg.LinAlgError:
        return None
    cx, cy = sol[0] / 2, sol[1] / 2
    r2 = sol[2] + cx * cx + cy * cy
    if not (np.isfinite(r2) and r2 > 0):
        return None
    return float(cx), float(cy), float(math.sqrt(r2))


def _ransac_circle(x: np.ndarray, y: np.ndarray, tol: float, min_r: float, max_r: float,
                   iterations: int = 400
                   ) -> tuple[tuple[float, float, float] | None, np.ndarray | None]:
    """A robust circle through edge points: (circle, inlier mask) or (None, None).

    Random triples of points propose circles; the one with the most points
    within ``tol`` is refitted by least squares on its inliers (twice).
    Deterministic (fixed seed).
    """
    if x.size < 12:
        return None, None
    full_x, full_y = x, y
    step = max(1, x.size // 1000)  # score on at most ~1000 points
    x, y = x[::step], y[::step]
    n = x.size
    rng = np.random.default_rng(0)
    # random triples of distinct points (drawn at once: rows with a repeat are dropped)
    tri = rng.integers(0, n, (2 * iterations, 3))
    tri = tri[(tri[:, 0] != tri[:, 1]) & (tri[:, 0] != tri[:, 2]) & (tri[:, 1] != tri[:, 2])]
    tri = tri[:iterations]
    # every triple's circle at once (the circle through three points, as a least-squares fit
    # of exactly three points gives it), scored on all points
    x1, x2, x3 = x[tri].T
    y1, y2, y3 = y[tri].T
    d = 2 * (x1 * (y2 - y3) + x2 * (y3 - y1) + x3 * (y1 - y2))
    with np.errstate(divide="ignore", invalid="ignore"):
        q1, q2, q3 = x1 * x1 + y1 * y1, x2 * x2 + y2 * y2, x3 * x3 + y3 * y3
        ux = (q1 * (y2 - y3) + q2 * (y3 - y1) + q3 * (y1 - y2)) / d
        uy = (q1 * (x3 - x2) + q2 * (x1 - x3) + q3 * (x2 - x1)) / d
        ur = np.hypot(x1 - ux, y1 - uy)
    good = np.isfinite(ur) & (d != 0) & (ur >= min_r) & (ur <= max_r)
    if not good.any():
        return None, None
    ux, uy, ur = ux[good], uy[good], ur[good]
    counts = np.empty(ux.size, np.int64)
    for s in range(0, ux.size, 64):  # (in chunks that stay in the cache: 1.7x faster)
        c = slice(s, s + 64)
        counts[c] = (np.abs(np.hypot(x[None, :] - ux[c, None], y[None, :] - uy[c, None])
                            - ur[c, None]) < tol).sum(axis=1)
    i = int(np.argmax(counts))
    if counts[i] == 0:
        return None, None
    best = (float(ux[i]), float(uy[i]), float(ur[i]))
    x, y = full_x, full_y
    for _ in range(2):
        inl = np.abs(np.hypot(x - best[0], y - best[1]) - best[2]) < tol
        refit = _fit_circle(x[inl], y[inl]) if inl.sum() >= 3 else None
        if refit is None or not (min_r <= refit[2] <= max_r):
            break
        best = refit
    inl = np.abs(np.hypot(x - best[0], y - best[1]) - best[2]) < tol
    return best, inl


def _outside_level(v: np.ndarray, m: np.ndarray, width: int, skip: int = 1) -> np.ndarray:
    """Local mean of ``v`` over a band just outside ``m`` (skipping its first ``skip`` pixels),
    NaN where none."""
    mu8 = m.astype(np.uint8)
    band = (cv2.dilate(mu8, _disk(width + skip)).astype(bool)
            & ~cv2.dilate(mu8, _disk(skip)).astype(bool))
    return masked_convolve(v, band, gaussian_kernel(max(1.0, width / 1.5)), min_weight=1e-3)


def _contour_points(m: np.ndarray, margin: int = 2) -> tuple[np.ndarray, ...]:
    """(ys, xs) of the mask's boundary pixels that are not at the image border."""
    h, w = m.shape
    edge = m & ~cv2.erode(m.astype(np.uint8), _disk(1), borderType=cv2.BORDER_REPLICATE).astype(bool)
    edge[:margin] = edge[-margin:] = False
    edge[:, :margin] = edge[:, -margin:] = False
    return np.nonzero(edge)


@overload
def estimate_fov(image: ArrayLike, *, edge_fraction: float = ..., threshold: float | None = ...,
                 details: Literal[False] = ...) -> np.ndarray: ...
@overload
def estimate_fov(image: ArrayLike, *, edge_fraction: float = ..., threshold: float | None = ...,
                 details: Literal[True]) -> FovEstimate: ...
def estimate_fov(image: ArrayLike, *, edge_fraction: float = EDGE_FRACTION, threshold: float | None = None,
                 details: bool = False) -> np.ndarray | FovEstimate:
    """Estimate the field of view of a fundus photograph from the image alone.

    Returns the mask, or with ``details=True`` a :class:`FovEstimate`: the mask with its
    confidence, the fitted circle and what was filled in.

    1. The brightest channel (robust to colour casts; the red channel of a
       fundus image is rarely dark) is smoothed. The background level and
       noise come from the darkest pieces of the image's outer frame
       (background even where the disc crosses three borders); a rough
       mask keeps everything well above it.
    2. Near the rough edge, the local background level and the local
       brightness of the disc just inside the edge are measured by masked
       convolution, and each pixel is thresholded at ``edge_fraction`` of
       the way from background to disc. This follows dark, low-contrast and
       unevenly lit rims, and backgrounds that are not black.
    3. **Geometric model.** Contour points with background right outside
       them are confident edge points; a circle is fitted to them by RANSAC.
       Inside the circle, every region above the background (4 noise sigmas
       or 2 % of the contrast) joins the mask: dark sectors of the disc are
       filled up to the real edge, while flat cuts, notches and tabs keep
       the shape the image shows (outside the circle nothing is added;
       beyond a cut there is only background).
    4. The largest region is kept, spurs are opened away and holes filled.

    The confidence is the fraction of the final contour (away from the
    image border) with background right outside it.

    An image whose outer frame is mostly as bright as the disc (a crop
    inside the field of view, no background) gets the whole image as its FOV.
    Every size scales with the image. An image whose short side is
    :data:`REDUCED_SIDE` or more is estimated on a copy reduced by an
    integer factor (block means, the short side 300-450 px); the edge is
    then settled at full resolution along rays from the mask's centre,
    only in a ring a few pixels either side of it (no full-size copies).

    Parameters
    ----------
    image : (H, W) or (H, W, C) array_like
        Any dtype; not modified.
    edge_fraction : float
        Position of the edge between background (0) and disc (1) levels.
    threshold : float, optional
        A fixed threshold on the brightest channel instead of steps 1-3.
    details : bool
        Return the :class:`FovEstimate` instead of the mask alone.

    Returns
    -------
    (H, W) bool ndarray, one filled connected region; or FovEstimate with ``details``.

    Raises
    ------
    MaskError
        If no field of view is found.

    Examples
    --------
    >>> from retina_prep.synthetic import synthetic_fundus
    >>> s = synthetic_fundus((300, 280))
    >>> m = estimate_fov(s.image)
    >>> bool((m & s.mask).sum() / (m | s.mask).sum() > 0.98)
    True
    >>> estimate_fov(s.image, details=True).confidence
    1.0
    """
    est = _estimate(image, edge_fraction, threshold)
    return est if details else est.mask


def fov_estimate(image: ArrayLike, *, edge_fraction: float = EDGE_FRACTION,
                 threshold: float | None = None) -> FovEstimate:
    """Deprecated: ``estimate_fov(image, details=True)``."""
    warnings.warn("fov_estimate(image) is estimate_fov(image, details=True)", DeprecationWarning,
                  stacklevel=2)
    return _estimate(image, edge_fraction, threshold)


def _estimate(image: ArrayLike, edge_fraction: float, threshold: float | None) -> FovEstimate:
    """The estimate of :func:`estimate_fov`."""
    img = as_native(image)
    check_layout(img)
    if img.ndim == 3 and img.shape[-1] in (2, 4):
        img = img[..., :-1]
    h, w = img.shape[:2]
    k = min(h, w) // (REDUCED_SIDE // 2) if threshold is None else 1
    if k < 2:
        return _estimate_at(img, edge_fraction, threshold).estimate
    run = _estimate_at(_reduced(img, k), edge_fraction, None, confidence=False)
    est = run.estimate
    if est.whole_image:
        return FovEstimate(np.ones((h, w), bool), 1.0, whole_image=True)
    m = _settle_ring(img, k, run)
    if cv2.countNonZero(m.view(np.uint8)) < 0.01 * h * w:
        raise MaskError("cannot estimate a field of view: no bright disc found")
    # the confidence of the settled mask, on the reduced copy
    assert run.smooth is not None and run.is_bg is not None
    sh, sw = run.smooth.shape
    m_s = cv2.resize(m[: sh * k, : sw * k].view(np.uint8), (sw, sh),
                     interpolation=cv2.INTER_AREA) > 0
    # (with the circle of the settled mask: a glow ring can carry the reduced edge out)
    circle_s, _ = _fov_circle(m_s, run.tol) if est.circle is not None else (None, None)
    confidence = _confidence(_contour_checks(_text_dark(run.smooth, run.text_px), m_s, run.is_bg,
                                             circle_s, run.tol), m_s)
    off = (k - 1) / 2  # small pixel i covers full pixels i*k .. i*k + k - 1
    circle = None if est.circle is None else (est.circle[0] * k + off, est.circle[1] * k + off,
                                              est.circle[2] * k)
    residual = None if est.residual is None else est.residual * k
    return FovEstimate(m, confidence, circle, residual, est.filled * k * k)


#: estimate_fov: images whose short side is at least this are estimated on a reduced copy
#: (short side 300-450 px) and settled at full resolution in a ring around the edge.
REDUCED_SIDE = 600


def _reduced(img: np.ndarray, k: int) -> np.ndarray:
    """The image reduced ``k`` times by block means (the rows and columns beyond a multiple of
    ``k`` dropped), in a dtype OpenCV resizes; NaN and infinities as 0."""
    h, w = img.shape[:2]
    a = img[: h - h % k, : w - w % k]
    if a.dtype not in (np.uint8, np.uint16, np.int16, np.float32, np.float64):
        a = a.astype(np.float32)
    if a.dtype.kind == "f" and not np.isfinite(a).all():
        a = np.nan_to_num(a, nan=0.0, posinf=0.0, neginf=0.0)
    if a.ndim == 3 and a.shape[-1] > 4:  # (OpenCV resizes at most 4 channels at once)
        return np.stack([_reduced(a[..., c], k) for c in range(a.shape[-1])], axis=-1)
    return cv2.resize(a, (a.shape[1] // k, a.shape[0] // k), interpolation=cv2.INTER_AREA)


def _estimate_at(img: np.ndarray, edge_fraction: float, threshold: float | None, *,
                 confidence: bool = True) -> _Run:
    """:func:`estimate_fov` at the image's own resolution, with the maps it used. Without
    ``confidence`` the estimate's confidence is left at 1 (a reduced run's: the settled mask
    gets its own)."""
    vi = channel_max(img)
    v = vi.astype(np.float32)
    if img.dtype.kind == "f" and not np.isfinite(v).all():
        v = np.nan_to_num(v, nan=0.0, posinf=0.0, neginf=0.0)
    colour = None
    if threshold is None:
        v, colour = _from_padding(img, v, vi if vi.dtype in (np.uint8, np.uint16) else None)
    h, w = v.shape
    s = min(h, w)
    blur = max(0.7, s / 800)
    raw = v  # each pixel's own level, for the last step's background test
    v = cv2.GaussianBlur(v, (0, 0), blur)
    open_r = max(1, int(round(s / 300)))
    if threshold is not None:
        m = _clean(v > threshold, open_r)
        if m.sum() < 0.01 * h * w:
            raise MaskError("cannot estimate a field of view: no bright disc found")
        return _Run(FovEstimate(m, 1.0))
    if _frame_is_bright(v) and not _frame_is_another_colour(img):
        # no dark background around the disc (a crop inside the FOV): the whole image is the FOV
        return _Run(FovEstimate(np.ones((h, w), bool), 1.0, whole_image=True))
    bg, sigma = _background(v)
    otsu = _otsu(v)  # (once: its percentiles cost as much as the rest of either step)
    disc = _disc_level(v, bg, sigma, otsu)
    frame_top, frame_bright = _uneven_frame(v, bg, sigma, otsu)  # -inf unless uneven
    tol = max(1.5, 0.006 * s)
    rough_t = bg + max(4.0 * sigma, ROUGH_FRACTION * (disc - bg))
    rough = _clean(v > max(rough_t, frame_top), open_r)
    if frame_top > rough_t:
        # the frame's bright pieces may be a dim part of a disc that crosses the border
        lower = _clean(v > rough_t, open_r)
        if _frame_is_dim_disc(frame_bright, (rough, lower), tol):
            frame_top, rough = -math.inf, lower
    if rough.sum() < 0.01 * rough.size or rough.all():
        raise MaskError("cannot estimate a field of view: no bright disc on a dark background")
    band = max(2, int(round(0.02 * s)))
    inner = cv2.erode(rough.astype(np.uint8), _disk(band)).astype(bool)
    # (neither edge level from what is brighter than the retina: burned-in text beside the
    # edge would raise it there, and the dim retina next to it be left out)
    outer = ~cv2.dilate(rough.astype(np.uint8), _disk(band)).astype(bool) & (v < disc)
    kern = gaussian_kernel(max(2.0, 0.03 * s))
    disc_level = masked_convolve(v, inner, kern, min_weight=1e-3)
    bg_level = masked_convolve(v, outer, kern, min_weight=1e-3)
    disc_level = np.where(np.isnan(disc_level), np.median(v[inner]), disc_level)
    bg_level = np.where(np.isnan(bg_level), np.median(v[outer]) if outer.any()
                        else v[~rough].mean(), bg_level)
    t = bg_level + edge_fraction * (disc_level - bg_level)
    near = ~(inner | outer)
    m = _clean(inner | (near & (v > t)), open_r)

    # 3. geometric model: a circle through the contour (RANSAC), dark sectors inside it filled
    yy, xx = np.ogrid[0:h, 0:w]
    circle, residual = _fov_circle(m, tol)
    inside = m.copy()
    if circle is not None:
        inside |= (xx - circle[0]) ** 2 + (yy - circle[1]) ** 2 <= (circle[2] - 1.0) ** 2
    # the local background: beyond the mask and the circle, a gap away (glow right outside the
    # disc, uneven backgrounds); where there is none (the disc crosses the border), the global one
    gap = max(3, int(round(0.03 * s)))
    beyond = ~cv2.dilate(inside.astype(np.uint8), _disk(gap)).astype(bool)
    beyond &= v < disc  # (as the edge level's outer pixels)
    if beyond.any():
        bg_local = masked_convolve(v, beyond, gaussian_kernel(max(2.0, 0.05 * s)), min_weight=1e-3)
        bg_local = np.where(np.isnan(bg_local), float(np.median(v[beyond])), bg_local)
        bg_local = np.maximum(bg_local, bg)
    else:
        bg_local = np.full((h, w), bg, np.float32)
    # not background (nor the bright parts of an uneven frame)
    low = np.maximum(bg_local + max(4.0 * sigma, 0.02 * (disc - bg)), frame_top).astype(np.float32)
    # background right outside an edge; without a circle, dark parts of the disc outside the
    # mask would pass for local background, so the global level is the reference
    is_bg = (bg_local if circle is not None else np.full_like(bg_local, bg)) + max(
        4.0 * sigma, 0.04 * (disc - bg))
    is_bg = np.maximum(is_bg, frame_top)
    filled = 0
    if circle is not None:
        add = inside & (v > low) & ~m
        add = cv2.morphologyEx(add.astype(np.uint8), cv2.MORPH_OPEN,
                               _disk(max(2, int(round(0.01 * s))))).astype(bool)
        if add.any():
            add &= (xx - circle[0]) ** 2 + (yy - circle[1]) ** 2 <= (circle[2] - 1.0) ** 2
            before = int(m.sum())
            m = _clean(m | add, open_r)
            filled = max(0, int(m.sum()) - before)
    m = _settle_edge(m, raw, low, blur, v)
    found = None if circle is None else _text_rule(img, raw, m, circle, residual, bg, disc)
    text = None if found is None else found[0]
    if found is not None:
        m = _without_text(img, raw, m, *found)
    if m.sum() < 0.01 * h * w:
        raise MaskError("cannot estimate a field of view: no bright disc found")
    text_px = None if text is None else _text_pixels(img, raw, text, m)
    score = (_confidence(_contour_checks(_text_dark(v, text_px), m, is_bg, circle, tol), m)
             if confidence else 1.0)
    return _Run(FovEstimate(m, score, circle, residual, filled),
                smooth=v, edge=t.astype(np.float32), low=low, colour=colour,
                is_bg=is_bg.astype(np.float32), tol=tol, text=text, text_px=text_px)


def _text_dark(v: np.ndarray, text_px: np.ndarray | None) -> np.ndarray:
    """The level the confidence reads: ``v`` with the text the rule left out (``text_px``) as
    0, no bright thing right outside the edge."""
    return v if text_px is None else np.where(text_px, np.float32(0), v)


def _text_pixels(img: np.ndarray, raw: np.ndarray, rule: _TextRule, m: np.ndarray
                 ) -> np.ndarray | None:
    """The pixels outside the mask ``m`` and near it (where the confidence reads what lies
    outside the edge) that ``rule`` tells are text, grown by a pixel (the blurred level's
    halo); None when there are none."""
    reach = max(2, int(round(0.015 * min(m.shape)))) + 2
    near = cv2.dilate(m.view(np.uint8), np.ones((2 * reach + 1, 2 * reach + 1), np.uint8))
    near[m] = 0
    found = cv2.findNonZero(near)
    if found is None:
        return None
    xs, ys = found.reshape(-1, 2).T.astype(np.intp)
    far = rule.beyond(xs.astype(np.float64), ys.astype(np.float64)) & (raw[ys, xs] > rule.floor)
    ys, xs = ys[far], xs[far]
    is_text = rule.text_at(img, raw, ys, xs)
    if not is_text.any():
        return None
    out = np.zeros(m.shape, np.uint8)
    out[ys[is_text], xs[is_text]] = 1
    return cv2.dilate(out, np.ones((3, 3), np.uint8)).view(bool) & ~m


def _text_rule(img: np.ndarray, raw: np.ndarray, m: np.ndarray, circle: tuple[float, float, float],
               residual: float | None, bg: float, disc: float
               ) -> tuple[_TextRule, np.ndarray] | None:
    """The rule that tells burned-in text beside the disc (see :class:`_TextRule`) from what the
    mask ``m`` holds (its outer band inside the fitted circle sets the retina's bright end),
    and the mask's pixels beyond the circle or a cut as the rule reads it; None when there are
    none."""
    cx, cy, r = circle
    h, w = m.shape
    ys = np.arange(h, dtype=np.float64)[:, None]
    xs = np.arange(w, dtype=np.float64)[None, :]
    bright, white = math.inf, TEXT_WHITE if img.ndim == 3 and img.shape[-1] == 3 else None
    rule = _TextRule(cx, cy, r, residual or 0.0, bg + 0.5 * (disc - bg), bright, white)
    out = rule.beyond_circle(xs, ys)
    rule = dataclasses.replace(rule, cuts=_cut_lines(m & ~out, cx, cy, r))
    far = m & (out | rule.beyond_cuts(xs, ys))
    if not far.any():
        return None
    d2 = (xs - cx) ** 2 + (ys - cy) ** 2
    band = m & (d2 <= r * r) & (d2 > max(r - 0.03 * min(h, w), 0.0) ** 2)
    if not band.any():
        return None
    bright = TEXT_BRIGHT * float(np.percentile(raw[band], 95))
    return dataclasses.replace(rule, bright=bright), far


def _cut_lines(inside: np.ndarray, cx: float, cy: float, r: float
               ) -> tuple[float, float, float, float]:
    """The lines of flat cuts across the disc ``(cx, cy, r)``: ``(y_lo, y_hi, x_lo, x_hi)``, a
    line where, between 0.6 and 0.95 of the radius from the centre, the mask's pixels within
    the circle (``inside``) cover at least 0.9 of the circle's chord (within the image) and,
    within two rows (columns) further out, less than half; infinite where there is none."""
    h, w = inside.shape
    found = []
    for counts, n, c, c_other, size_other in ((inside.sum(axis=1), h, cy, cx, w),
                                               (inside.sum(axis=0), w, cx, cy, h)):
        pos = np.arange(n, dtype=np.float64)
        half = np.sqrt(np.maximum(r * r - (pos - c) ** 2, 0.0))
        chord = np.clip(c_other + half, 0, size_other) - np.clip(c_other - half, 0, size_other)
        cover = np.where(chord > 0, counts / np.maximum(chord, 1e-9), 1.0)
        lines = [-math.inf, math.inf]
        for side, sign in ((0, -1), (1, 1)):
            for dist in range(int(math.ceil(0.6 * r)), int(0.95 * r) + 1):
                i = int(round(c + sign * dist))
                j = i - 2 * sign
                if not (0 <= i < n and 0 <= j < n):
                    break
                if cover[i] < 0.5 and cover[j] >= 0.9:
                    lines[side] = i - sign * 0.5  # the row (column) i is beyond
                    break
        found += lines
    return found[0], found[1], found[2], found[3]


def _without_text(img: np.ndarray, raw: np.ndarray, m: np.ndarray, rule: _TextRule,
                  far: np.ndarray) -> np.ndarray:
    """The mask without what ``rule`` tells is text among its pixels ``far`` beyond the circle
    (and a pixel around it, JPEG's colour bleed on the strokes' edges): its largest piece,
    holes filled."""
    ys, xs = np.nonzero(far)
    is_text = rule.text_at(img, raw, ys, xs)
    if not is_text.any():
        return m
    text = np.zeros(m.shape, np.uint8)
    text[ys[is_text], xs[is_text]] = 1
    text = cv2.dilate(text, np.ones((3, 3), np.uint8)).view(bool) & far
    return fill_holes(_largest_component(m & ~text))


def _fov_circle(m: np.ndarray, tol: float, *, share: float = 0.3, directions: int = 9,
                max_r: float = 2.0) -> tuple[tuple[float, float, float], float] | tuple[None, None]:
    """The circle (cx, cy, r) fitted by RANSAC to the mask's contour and the median distance
    of its inliers from it, or (None, None) when fewer than ``share`` of the contour points or
    fewer than ``directions`` of 36 directions support one (radius at most ``max_r`` times
    the image's long side)."""
    ys, xs = _contour_points(m)
    if ys.size == 0:
        return None, None
    h, w = m.shape
    c, inl = _ransac_circle(xs.astype(np.float64), ys.astype(np.float64), tol,
                            0.15 * min(h, w), max_r * max(h, w))
    if c is None or inl is None:
        return None, None
    ang = np.arctan2(ys[inl] - c[1], xs[inl] - c[0])
    coverage = np.unique(((ang + np.pi) / (2 * np.pi) * 36).astype(int) % 36).size
    if inl.sum() < share * ys.size or coverage < directions:
        return None, None
    return c, float(np.median(np.abs(np.hypot(xs[inl] - c[0], ys[inl] - c[1]) - c[2])))


def _contour_checks(v: np.ndarray, m: np.ndarray, is_bg: np.ndarray,
                    circle: tuple[float, float, float] | None, tol: float
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The mask's contour points away from the image border (``ys, xs``), whether each has
    background right outside it (the mean of ``v`` over a band outside, at most ``is_bg``)
    and whether it lies on the fitted circle."""
    ys, xs = _contour_points(m)
    if ys.size == 0:
        return ys, xs, np.zeros(0, bool), np.zeros(0, bool)
    width = max(2, int(round(0.015 * min(m.shape))))
    out_lvl = np.nan_to_num(_outside_level(v, m, width)[ys, xs], nan=np.inf)
    bg_out = out_lvl <= is_bg[ys, xs]
    if circle is None:
        # no circle to tell cuts from the disc's round edge: every point needs the edge test
        on_circle = np.zeros(ys.size, bool)
        cuts = np.ones(ys.size, bool)
    else:
        off = np.hypot(xs - circle[0], ys - circle[1]) - circle[2]
        on_circle = np.abs(off) < tol
        cuts = off <= -tol  # the edge runs inside the circle: a cut, or a dim part left out
    if cuts.any():
        ys_c, xs_c = ys[cuts], xs[cuts]
        # background beyond a straight cut from a pixel further out (the reduced copy's blur
        # and a JPEG's ringing carry a crisp cut's step into the first pixels)
        out_c = out_lvl if circle is None else np.nan_to_num(
            _outside_level(v, m, width, skip=2)[ys_c, xs_c], nan=np.inf)
        # and an edge, not a level crossing: the retina just inside well above what lies
        # outside (where the level of a dim part only crosses the threshold, the sides are alike)
        in_c = np.nan_to_num(_outside_level(v, ~m, width)[ys_c, xs_c], nan=0.0)
        bg_out[cuts] = (out_c <= is_bg[ys_c, xs_c]) & ~(out_c > EDGE_STEP * in_c)
    return ys, xs, bg_out, on_circle


#: The confidence's edge test: where the mask's edge runs inside its circle, what lies right
#: outside must be darker than this fraction of the retina right inside (a flat cut into a
#: scanned slide's frame: 0.4; a glow: 0.35-0.5; the threshold crossing a dim part: 0.8-0.95).
EDGE_STEP = 0.75


def _confidence(checks: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray], m: np.ndarray
                ) -> float:
    """The fraction of the contour (away from the image border) on the fitted circle or with
    background right outside it; 1.0 without a contour. At most :data:`CORNERS_SCORE` when
    the mask ``m`` holds three or four of the image's corners: no disc does (it would be 0.6
    of the short side in radius), a frame taken in does (the crops of a retina that have
    no frame are found before, as the whole image)."""
    ys, xs, bg_out, on_circle = checks
    score = float(np.mean(bg_out | on_circle)) if ys.size else 1.0
    h, w = m.shape
    # (a corner: the square 5-9 % of the image in from it, past the dark strips at a slide's
    # edges; 0.61 of the short side from the centre of a square image)
    y0, x0 = int(0.05 * h), int(0.05 * w)
    rows, cols = slice(y0, max(int(0.09 * h), y0 + 1)), slice(x0, max(int(0.09 * w), x0 + 1))
    corners = sum(float(np.mean(q[rows, cols])) > 0.5
                  for q in (m, m[::-1], m[:, ::-1], m[::-1, ::-1]))
    return min(score, CORNERS_SCORE) if corners >= 3 else score


#: The confidence of a mask that holds three or four of the image's corners.
CORNERS_SCORE = 0.5


def _settle_edge(m: np.ndarray, raw: np.ndarray, low: np.ndarray, blur: float,
                 smooth: np.ndarray) -> np.ndarray:
    """Decide the pixels near the mask's edge by their own level. The edge was found on the
    image blurred by ``blur`` px (``smooth``) and placed at :data:`EDGE_FRACTION` of the way
    from the local background to the disc's level some way inside: a sharp edge lands up to
    about ``blur`` px out (a ring of pure background inside the mask, and a halo of tens of
    gray levels in first-order normalization), and a disc dimmed steeply towards its edge
    loses its last pixels. So, within ``2 * blur + 1`` px of the edge: pixels inside at the
    background's level (at most ``low``, the 'not background' level) that touch the outside
    are dropped, and pixels outside that touch the mask, above both ``low`` and half the
    edge's own level (the brightest FOV pixel near it in ``smooth``), are added, a pixel at a
    time (a pixel-centre rule: half covered or more)."""
    width = int(math.ceil(2 * blur)) + 1
    u8 = m.astype(np.uint8)
    square = cv2.getStructuringElement(cv2.MORPH_RECT, (2 * width + 1, 2 * width + 1))
    zone = cv2.subtract(cv2.dilate(u8, square),
                        cv2.erode(u8, square, borderType=cv2.BORDER_REPLICATE))
    found = cv2.findNonZero(zone)
    if found is None:
        return m
    xs, ys = (np.ascontiguousarray(c) for c in found.reshape(-1, 2).T.astype(np.intp))
    inside = m[ys, xs]
    own = raw[ys, xs]
    floor = low[ys, xs]
    drop = inside & (own <= floor)
    if drop.any():  # peeled from the outside in: no holes
        m, peeled = _creep(m, ys[drop], xs[drop], width, grow=False)
        if peeled:  # bits of the edge cut off by peeled pixels (noise) go too
            m = _largest_component(m)
        inside = m[ys, xs]
    # the edge's own level: the brightest FOV pixel near each pixel
    reach = 2 * width + 1
    level = cv2.dilate(np.where(m, smooth, 0).astype(np.float32),
                       cv2.getStructuringElement(cv2.MORPH_RECT, (reach, reach)))
    ok = ~inside & (own > floor) & (own > 0.5 * level[ys, xs])
    if not ok.any():
        return m
    # grown from the mask, so every added pixel is connected to it
    grown, grew = _creep(m, ys[ok], xs[ok], width, grow=True)
    return fill_holes(grown) if grew else m  # (what it grew may close a gap)


def _creep(m: np.ndarray, ys: np.ndarray, xs: np.ndarray, steps: int, *, grow: bool
           ) -> tuple[np.ndarray, bool]:
    """Move the mask's edge through the pixels ``ys, xs`` a pixel at a time, at most ``steps``
    times: ``grow`` takes those that touch the mask, else those inside that touch the outside
    are dropped. Returns the mask and whether it changed."""
    can = np.zeros(m.shape, bool)
    can[ys, xs] = True
    one = np.ones((3, 3), np.uint8)
    changed = False
    for _ in range(steps):
        side = m if grow else ~m  # the side the edge moves away from
        step = can & ~side & cv2.dilate(side.view(np.uint8), one).view(bool)
        if not step.any():
            break
        m, changed = (m | step if grow else m & ~step), True
    return m, changed
