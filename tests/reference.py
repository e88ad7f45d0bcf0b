"""Brute-force NumPy references, float64, written for obviousness not speed."""

from __future__ import annotations

import numpy as np


def shift_zero(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """out[i, j] = a[i - dy, j - dx], zero where that index is outside ``a``."""
    h, w = a.shape[:2]
    out = np.zeros_like(a)
    if abs(dy) >= h or abs(dx) >= w:
        return out  # shifted entirely out of the image
    ys = slice(max(dy, 0), min(h, h + dy))
    xs = slice(max(dx, 0), min(w, w + dx))
    ysrc = slice(max(-dy, 0), min(h, h - dy))
    xsrc = slice(max(-dx, 0), min(w, w - dx))
    out[ys, xs] = a[ysrc, xsrc]
    return out


def convolve_ref(image, kernel) -> np.ndarray:
    """R[i, j] = sum_{u, v} K[u, v] * P[i - (u - cy), j - (v - cx)], zeros outside."""
    p = np.asarray(image, np.float64)
    k = np.asarray(kernel, np.float64)
    kh, kw = k.shape
    cy, cx = kh // 2, kw // 2
    out = np.zeros_like(p)
    for u in range(kh):
        for v in range(kw):
            out += k[u, v] * shift_zero(p, u - cy, v - cx)
    return out


def _part_ref(p, m, k, min_weight):
    if not k.any():  # an absent part (K+ of a non-positive kernel): no valid pixel anywhere
        return np.zeros(p.shape), np.zeros(m.shape), np.ones(m.shape, bool)
    mm = m[..., None] if p.ndim == 3 else m
    num = convolve_ref(p * mm, k)
    den = convolve_ref(m, k)
    w = den / k.sum()
    dd = den[..., None] if p.ndim == 3 else den
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = num / dd
    return mean, w, w < min_weight


def masked_convolve_ref(image, mask, kernel, *, min_weight=1e-5, fill=np.nan):
    """Seed 000 eq. 5 by direct window sums, signed kernels split into K+ - K-.

    Returns (result, certainty), certainty = (M conv |K|) / sum(|K|).
    """
    p = np.asarray(image, np.float64)
    m = np.ones(p.shape[:2]) if mask is None else np.asarray(mask, np.float64)
    k = np.asarray(kernel, np.float64)
    kp, kn = np.maximum(k, 0), np.maximum(-k, 0)
    certainty = convolve_ref(m, np.abs(k)) / np.abs(k).sum()
    if not kn.any():
        mean, _, bad = _part_ref(p, m, kp, min_weight)
        out = kp.sum() * mean
        out[bad] = fill
        return out, certainty
    mp, _, bp = _part_ref(p, m, kp, min_weight)
    mn, _, bn = _part_ref(p, m, kn, min_weight)
    mp = np.where(np.broadcast_to((bp & ~bn)[..., None] if p.ndim == 3 else bp & ~bn, mp.shape), mn, mp)
    mn = np.where(np.broadcast_to((bn & ~bp)[..., None] if p.ndim == 3 else bn & ~bp, mn.shape), mp, mn)
    out = kp.sum() * mp - kn.sum() * mn
    out[bp & bn] = fill
    return out, certainty


def partial_ref(image, mask, kernel, *, real_valued=False):
    """Seed 001 eq. 1-3 at every pixel by an explicit loop over its window."""
    p = np.asarray(image, np.float64)
    if p.ndim == 2:
        p = p[..., None]
    m = np.asarray(mask, np.float64)
    if not real_valued:
        m = (m > 0).astype(float)
    k = np.asarray(kernel, np.float64)
    kh, kw = k.shape
    cy, cx = kh // 2, kw // 2
    h, w = m.shape
    out = np.full(p.shape, np.nan)
    upd = np.zeros((h, w))
    for i in range(h):
        for j in range(w):
            acc = np.zeros(p.shape[2])
            msum = 0.0
            for u in range(kh):
                for v in range(kw):
                    y, x = i - (u - cy), j - (v - cx)
                    if 0 <= y < h and 0 <= x < w:
                        acc += k[u, v] * p[y, x] * m[y, x]
                        msum += m[y, x]
            if msum > 0:
                out[i, j] = acc * (kh * kw) / msum
                upd[i, j] = msum / (kh * kw) if real_valued else 1.0
    return out[..., 0] if np.ndim(image) == 2 else out, upd


def windowed_mean_loop(image, mask, size, i, j):
    """The masked box mean at one pixel by an explicit loop over its window."""
    h, w = mask.shape
    r = size // 2
    vals = []
    for y in range(i - r, i + r + 1):
        for x in range(j - r, j + r + 1):
            if 0 <= y < h and 0 <= x < w and mask[y, x]:
                vals.append(np.asarray(image[y, x], np.float64))
    return np.mean(vals, axis=0)


def plane_mean_ref(image, mask, kernel, *, ridge=0.1, min_weight=1e-5, pixels=None):
    """First-order normalized convolution at every pixel by an explicit loop over its window:
    the weighted least-squares plane (weights K * M, ridge on the slope) evaluated at the centre.
    ``image`` (H, W) float; returns NaN where the window's weight is below ``min_weight``.
    ``pixels``: only these (i, j) (the others stay NaN)."""
    p = np.asarray(image, np.float64)
    m = np.asarray(mask, np.float64)
    k = np.asarray(kernel, np.float64)
    kh, kw = k.shape
    cy, cx = kh // 2, kw // 2
    h, w = m.shape
    vy, vx = np.mgrid[-cy:kh - cy, -cx:kw - cx]
    s2x = (k * vx**2).sum() / k.sum()
    s2y = (k * vy**2).sum() / k.sum()
    out = np.full((h, w), np.nan)
    todo = pixels if pixels is not None else [(i, j) for i in range(h) for j in range(w)]
    for i, j in todo:
            wts, us, vs, vals = [], [], [], []
            for a in range(kh):
                for b in range(kw):
                    y, x = i + a - cy, j + b - cx
                    if 0 <= y < h and 0 <= x < w and m[y, x] > 0:
                        wts.append(k[a, b] * m[y, x])
                        us.append(b - cx)
                        vs.append(a - cy)
                        vals.append(p[y, x])
            wts, us, vs, vals = map(np.array, (wts, us, vs, vals))
            if wts.size == 0 or wts.sum() / k.sum() < min_weight:
                continue
            sw = wts.sum()
            ub, vb, ib = (wts * us).sum() / sw, (wts * vs).sum() / sw, (wts * vals).sum() / sw
            c = np.array([[(wts * (us - ub) ** 2).sum(), (wts * (us - ub) * (vs - vb)).sum()],
                          [(wts * (us - ub) * (vs - vb)).sum(), (wts * (vs - vb) ** 2).sum()]]) / sw
            c += ridge * np.diag([s2x, s2y])
            rhs = np.array([(wts * (us - ub) * (vals - ib)).sum(),
                            (wts * (vs - vb) * (vals - ib)).sum()]) / sw
            if abs(np.linalg.det(c)) < 1e-6 * max(s2x, 1) * max(s2y, 1):
                slope = np.zeros(2)
            else:
                slope = np.linalg.solve(c, rhs)
            out[i, j] = ib - slope[0] * ub - slope[1] * vb
    return out
