"""Brute-force NumPy references, float64, written for obviousness not speed."""

from __future__ import annotations

import numpy as np


def shift_zero(a: np.ndarray, dy: int, dx: int) -> np.ndarray:
    """out[i, j] = a[i - dy, j - dx], zero where that index is outside ``a``."""
    h, w = a.shape[:2]
    out = np.zeros_like(a)
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


def masked_convolve_ref(image, mask, kernel, *, min_weight=1e-5, fill=np.nan):
    """((P*M) conv K) / (M conv K) by direct window sums; fill where the weight is tiny."""
    p = np.asarray(image, np.float64)
    m = np.ones(p.shape[:2]) if mask is None else np.asarray(mask, np.float64)
    k = np.asarray(kernel, np.float64)
    mm = m[..., None] if p.ndim == 3 else m
    num = convolve_ref(p * mm, k)
    den = convolve_ref(m, k)
    w = den / k.sum()
    dd = den[..., None] if p.ndim == 3 else den
    with np.errstate(invalid="ignore", divide="ignore"):
        out = num / dd
    bad = w < min_weight
    out[bad] = fill
    return out, w


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
