"""Masked CLAHE: contrast-limited adaptive histogram equalization over the field of view only.

OpenCV's ``CLAHE::apply`` (and scikit-image's ``equalize_adapthist``) build each tile's
histogram from every pixel in it, so at the FOV margin the black background fills the tiles'
histograms and the margin comes out with a shifted mean and less contrast. Here each tile's
histogram, clip limit and mapping come from the FOV pixels it holds, and the tile mappings are
interpolated bilinearly with weights from each tile's FOV count -- the normalized-convolution
idea: a tile with no FOV pixels contributes nothing. With a mask covering the whole image the
result is OpenCV's (the same tile grid, clipping, redistribution and interpolation).

>>> import numpy as np
>>> img = (np.arange(64 * 64) % 200).astype(np.uint8).reshape(64, 64)
>>> out = masked_clahe(img, None, clip_limit=2.0, tiles=4)
>>> out.shape, out.dtype
((64, 64), dtype('uint8'))
"""

from __future__ import annotations

import math

import cv2
import numpy as np
from numpy.typing import ArrayLike

from .convolution import dtype_scale

__all__ = ["masked_clahe", "clahe_plane", "CLAHE_COLOURS", "DEFAULT_CLIP_LIMIT", "DEFAULT_TILES"]

#: ``normalize --method clahe`` defaults: OpenCV's usual fundus settings (clip 2, 8 x 8 tiles).
DEFAULT_CLIP_LIMIT = 2.0
DEFAULT_TILES = 8
#: How colour images are equalized: L of Lab (the usual choice), each channel, or one channel.
CLAHE_COLOURS = ("lab", "each", "red", "green", "blue")


def _tile_grid(shape: tuple[int, int], tiles: int) -> tuple[int, int, int, int]:
    """OpenCV's grid: the image is extended (reflect-101) to a multiple of ``tiles`` each way;
    returns (extended height, extended width, tile height, tile width)."""
    h, w = shape
    if h % tiles == 0 and w % tiles == 0:
        return h, w, h // tiles, w // tiles
    # as OpenCV pads: both sides by tiles - size % tiles, a full tile where it divides already
    eh, ew = h + tiles - h % tiles, w + tiles - w % tiles
    return eh, ew, eh // tiles, ew // tiles


def _luts(plane: np.ndarray, mask: np.ndarray, tiles: int, clip_limit: float,
          levels: int) -> tuple[np.ndarray, np.ndarray]:
    """Per tile: the mapping (tiles*tiles, levels) float32 and the FOV count (tiles*tiles,)."""
    h, w = plane.shape
    eh, ew, th, tw = _tile_grid((h, w), tiles)
    if (eh, ew) != (h, w):
        plane = cv2.copyMakeBorder(plane, 0, eh - h, 0, ew - w, cv2.BORDER_REFLECT_101)
        mask = cv2.copyMakeBorder(mask.view(np.uint8), 0, eh - h, 0, ew - w,
                                  cv2.BORDER_REFLECT_101).view(bool)
    n_tiles = tiles * tiles
    full = th * tw
    # the FOV count of every rectangle from four look-ups (an integral image, exact in int32)
    csum = cv2.integral(mask.view(np.uint8), sdepth=cv2.CV_32S)
    hist = np.zeros((n_tiles, levels), np.int64)
    for ti in range(n_tiles):  # a histogram per tile, of its own block (no full-size index map)
        r, c = divmod(ti, tiles)
        y0, y1, x0, x1 = r * th, (r + 1) * th, c * tw, (c + 1) * tw
        n = int(csum[y1, x1] - csum[y0, x1] - csum[y1, x0] + csum[y0, x0])
        if n == full:
            hist[ti] = np.bincount(plane[y0:y1, x0:x1].ravel(), minlength=levels)
        elif n:
            hist[ti] = np.bincount(plane[y0:y1, x0:x1][mask[y0:y1, x0:x1]], minlength=levels)
    counts = hist.sum(axis=1)
    # a tile the FOV covers in part keeps its own FOV pixels and takes the ones it misses
    # from the FOV pixels of the smallest ring around it that holds as many, evenly spaced
    # in raster order: a full tile's sample, as the same texture without a margin would
    # give it (a sample of a few hundred pixels gives a noisy mapping). Its weight in the
    # interpolation stays its own count.
    for ti in np.nonzero((counts > 0) & (counts < full))[0].tolist():
        r, c = divmod(ti, tiles)
        ty0, ty1, tx0, tx1 = r * th, (r + 1) * th, c * tw, (c + 1) * tw
        n, missing = int(counts[ti]), full - int(counts[ti])
        for g in range(1, 4 * max(th, tw)):
            y0, y1 = max(ty0 - g, 0), min(ty1 + g, eh)
            x0, x1 = max(tx0 - g, 0), min(tx1 + g, ew)
            k = csum[y1, x1] - csum[y0, x1] - csum[y1, x0] + csum[y0, x0] - n
            if k >= missing or (y0 == 0 and x0 == 0 and y1 == eh and x1 == ew):
                break
        ring = mask[y0:y1, x0:x1].copy()
        ring[ty0 - y0:ty1 - y0, tx0 - x0:tx1 - x0] = False
        pool = plane[y0:y1, x0:x1][ring]
        if len(pool) > missing:
            pool = pool[np.arange(missing, dtype=np.int64) * len(pool) // missing]
        hist[ti] += np.bincount(pool, minlength=levels)
    sizes = hist.sum(axis=1)  # (a full tile's pixels, fewer only where the FOV is smaller)
    luts = np.zeros((n_tiles, levels), np.float32)
    for t in range(n_tiles):
        n = int(sizes[t])
        if counts[t] == 0:
            continue  # contributes nothing
        hh = hist[t].copy()
        if clip_limit > 0:
            limit = max(int(clip_limit * n / levels), 1)
            over = hh > limit
            clipped = int((hh[over] - limit).sum())
            hh[over] = limit
            batch = clipped // levels
            residual = clipped - batch * levels
            hh += batch
            if residual:
                step = max(levels // residual, 1)
                idx = np.arange(0, levels, step)[:residual]
                hh[idx] += 1
        cum = np.cumsum(hh).astype(np.float32)
        scale = np.float32((levels - 1) / n)
        lut = cum * scale
        luts[t] = np.rint(lut)
    np.clip(luts, 0, levels - 1, out=luts)
    return luts, counts


def clahe_plane(plane: ArrayLike, mask: ArrayLike | None = None, *, clip_limit: float = DEFAULT_CLIP_LIMIT,
                tiles: int = DEFAULT_TILES) -> np.ndarray:
    """Masked CLAHE of one ``(H, W)`` uint8 or uint16 plane; the plane's dtype out.

    Parameters
    ----------
    plane : (H, W) uint8 or uint16 array_like
    mask : (H, W) bool array_like, optional
        The field of view; None is the whole image (then the result equals
        ``cv2.createCLAHE(clip_limit, (tiles, tiles)).apply(plane)`` within 1 gray level).
    clip_limit : float
        OpenCV's clip limit (a multiple of the mean bin height); 0 for none.
    tiles : int
        An N x N grid of tiles.

    Notes
    -----
    Tile ``t`` holding ``n_t`` FOV pixels histograms them; one the FOV covers in part adds the
    ``N - n_t`` it misses (``N`` a full tile's pixels) from the FOV pixels of the smallest ring
    around it (grown a pixel at a time, at most 4 tile sizes) that holds as many, taken evenly
    spaced in raster order, so its sample is ``s_t = N`` pixels as a full tile's (fewer only
    where the whole FOV is smaller). The clip limit is ``max(int(clip * s_t / L), 1)`` for ``L``
    levels, the clipped excess spread over all bins as OpenCV does, the mapping
    ``rint(cumsum(hist) * (L - 1) / s_t)``. A pixel's value is the bilinear mix of the four
    nearest tiles' mappings, each weight multiplied by the tile's ``n_t`` and the sum
    renormalized, so tiles outside the FOV take no part. Pixels outside the mask are returned
    as they are (the caller fills them).
    """
    p = np.asarray(plane)
    if p.ndim != 2 or p.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"CLAHE works on one uint8 or uint16 plane, got {p.dtype} {p.shape}")
    tiles = int(tiles)
    if not 1 <= tiles <= 256:
        raise ValueError(f"tiles must be 1 to 256 (an N x N grid), got {tiles}")
    if not (math.isfinite(clip_limit) and clip_limit >= 0):
        raise ValueError(f"clip_limit must be a number >= 0, got {clip_limit!r}")
    h, w = p.shape
    if h < tiles or w < tiles:
        raise ValueError(f"the image ({w}x{h} px) is smaller than the {tiles}x{tiles} tile grid")
    m = np.ones((h, w), bool) if mask is None else np.ascontiguousarray(mask, dtype=bool)
    if m.shape != (h, w):
        raise ValueError(f"mask shape {m.shape} does not match the image's {(h, w)}")
    if not m.any():
        raise ValueError("the mask is empty: no pixel inside the field of view")
    levels = 256 if p.dtype == np.uint8 else 65536
    luts, counts = _luts(np.ascontiguousarray(p), m, tiles, float(clip_limit), levels)
    _, _, th, tw = _tile_grid((h, w), tiles)
    # OpenCV's interpolation coordinates (float32), on the image's own pixels
    tyf = np.arange(h, dtype=np.float32) * np.float32(1.0 / th) - np.float32(0.5)
    txf = np.arange(w, dtype=np.float32) * np.float32(1.0 / tw) - np.float32(0.5)
    ty1 = np.floor(tyf).astype(np.int64)
    tx1 = np.floor(txf).astype(np.int64)
    ya = (tyf - ty1).astype(np.float64)[:, None]
    xa = (txf - tx1).astype(np.float64)[None, :]
    ty2, tx2 = np.minimum(ty1 + 1, tiles - 1), np.minimum(tx1 + 1, tiles - 1)
    ty1, tx1 = np.maximum(ty1, 0), np.maximum(tx1, 0)
    cnt = counts.astype(np.float64)
    out = p.copy()
    # blocks of rows and columns that share their four tiles: each is a few table look-ups of
    # a contiguous block (a fancy index of (tile, value) pairs over all pixels was 20x slower)
    row_key = ty1 * tiles + ty2
    col_key = tx1 * tiles + tx2
    row_cuts = np.flatnonzero(np.diff(row_key)) + 1
    col_cuts = np.flatnonzero(np.diff(col_key)) + 1
    row_spans = zip(np.r_[0, row_cuts], np.r_[row_cuts, h])
    col_spans = list(zip(np.r_[0, col_cuts], np.r_[col_cuts, w]))
    for r0, r1 in row_spans:
        a1, a2 = int(ty1[r0]), int(ty2[r0])
        wy = ((1.0 - ya[r0:r1]), ya[r0:r1])  # (rows, 1) each
        for c0, c1 in col_spans:
            mb = m[r0:r1, c0:c1]
            if not mb.any():
                continue
            b1, b2 = int(tx1[c0]), int(tx2[c0])
            vb = p[r0:r1, c0:c1]
            wx = ((1.0 - xa[:, c0:c1]), xa[:, c0:c1])  # (1, cols) each
            total = np.zeros(vb.shape, np.float32)
            weight = np.zeros(vb.shape, np.float32)
            for i, tyc in enumerate((a1, a2)):
                for j, txc in enumerate((b1, b2)):
                    t = tyc * tiles + txc
                    if cnt[t] == 0:
                        continue
                    wgt = ((wy[i] * wx[j]) * cnt[t]).astype(np.float32)
                    # (8-bit: OpenCV's table look-up, the same float32 values 5x faster)
                    total += wgt * (cv2.LUT(vb, luts[t]) if levels == 256 else np.take(luts[t], vb))
                    weight += wgt
            res = np.clip(np.rint(total / np.maximum(weight, np.float32(1e-30))), 0, levels - 1)
            block = out[r0:r1, c0:c1]
            np.copyto(block, res.astype(p.dtype), where=mb)
    return out


def masked_clahe(image: ArrayLike, mask: ArrayLike | None = None, *, clip_limit: float = DEFAULT_CLIP_LIMIT,
                 tiles: int = DEFAULT_TILES, colour: str = "lab", fill: float = 0.0) -> np.ndarray:
    """Masked CLAHE of a fundus photograph (see :func:`clahe_plane`); the image's dtype out.

    Parameters
    ----------
    image : (H, W) or (H, W, 3) uint8 or uint16 array_like (RGB)
    mask : (H, W) bool array_like, optional
        The field of view; None is the whole image.
    clip_limit, tiles : as :func:`clahe_plane`.
    colour : {"lab", "each", "red", "green", "blue"}
        Colour images: equalize L of Lab (the usual choice; hue kept), each channel on its own,
        or one channel (the others kept). Gray images use their one channel.
    fill : float
        The value outside the FOV, in 8-bit units (scaled for 16-bit).

    Returns
    -------
    ndarray of the image's shape and dtype.

    Examples
    --------
    >>> from retina_prep.synthetic import synthetic_fundus
    >>> s = synthetic_fundus((200, 210))
    >>> out = masked_clahe(s.image, s.mask, clip_limit=2.0, tiles=8)
    >>> out.shape == s.image.shape, int(out[~s.mask].max())  # outside the FOV: the fill
    (True, 0)
    """
    img = np.asarray(image)
    if img.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"CLAHE takes uint8 or uint16 images, got {img.dtype}")
    if colour not in CLAHE_COLOURS:
        raise ValueError(f"colour must be one of {', '.join(CLAHE_COLOURS)}, got {colour!r}")
    m = None if mask is None else np.asarray(mask, dtype=bool)
    if img.ndim == 2:
        out = clahe_plane(img, m, clip_limit=clip_limit, tiles=tiles)
    elif img.ndim == 3 and img.shape[2] == 3:
        if colour == "each":
            out = np.dstack([clahe_plane(np.ascontiguousarray(img[..., c]), m,
                                         clip_limit=clip_limit, tiles=tiles) for c in range(3)])
        elif colour in ("red", "green", "blue"):
            c = ("red", "green", "blue").index(colour)
            out = img.copy()
            out[..., c] = clahe_plane(np.ascontiguousarray(img[..., c]), m,
                                      clip_limit=clip_limit, tiles=tiles)
        else:
            out = _clahe_lab(img, m, clip_limit, tiles)
    else:
        raise ValueError(f"CLAHE takes (H, W) or (H, W, 3) images, got shape {img.shape}")
    if m is not None:
        top = np.iinfo(img.dtype).max
        out[~m] = np.asarray(np.clip(round(fill * dtype_scale(img.dtype)), 0, top)).astype(img.dtype)
    return out


def _clahe_lab(img: np.ndarray, m: np.ndarray | None, clip_limit: float, tiles: int) -> np.ndarray:
    """CLAHE on L of Lab: 8-bit through OpenCV's 8-bit Lab, 16-bit through float Lab with L
    quantized to 16 bits."""
    if img.dtype == np.uint8:
        lab = cv2.cvtColor(img, cv2.COLOR_RGB2Lab)
        lab[..., 0] = clahe_plane(np.ascontiguousarray(lab[..., 0]), m, clip_limit=clip_limit,
                                  tiles=tiles)
        return cv2.cvtColor(lab, cv2.COLOR_Lab2RGB)
    lab = cv2.cvtColor(img.astype(np.float32) / 65535.0, cv2.COLOR_RGB2Lab)  # L in 0..100
    L = np.clip(np.rint(lab[..., 0] * (65535.0 / 100.0)), 0, 65535).astype(np.uint16)
    lab[..., 0] = clahe_plane(L, m, clip_limit=clip_limit, tiles=tiles).astype(np.float32) * (
        100.0 / 65535.0)
    rgb = cv2.cvtColor(lab, cv2.COLOR_Lab2RGB)
    return np.clip(np.rint(rgb * 65535.0), 0, 65535).astype(np.uint16)
