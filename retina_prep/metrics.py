"""Measurements on normalized images: bias by distance from the FOV margin."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from .fov import margin_distance

__all__ = ["DEFAULT_BANDS", "margin_distance", "margin_bias_profile"]

#: Distance bands (pixels from the FOV margin) at DRIVE resolution.
DEFAULT_BANDS = ((0, 3), (3, 6), (6, 9), (9, 12), (12, 25), (25, 50), (50, np.inf))


def margin_bias_profile(output: ArrayLike, mask: ArrayLike, *, target: float,
                        region: ArrayLike | None = None, exclude: ArrayLike | None = None,
                        bands: Sequence[tuple[float, float]] = DEFAULT_BANDS
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Mean of ``output - target`` over FOV pixels by distance band from the margin.

    Parameters
    ----------
    output : (H, W) or (H, W, C) ndarray
        A normalized image.
    mask : (H, W) bool ndarray
        The field of view the distances are measured from.
    target : float
        The level a flat background should have (I0).
    region : (H, W) bool ndarray, optional
        Pixels that count (for example the eroded mask the output was cut
        to); defaults to ``mask``.
    exclude : (H, W) bool ndarray, optional
        Pixels left out (for example vessel labels).
    bands : sequence of (lo, hi)
        Half-open distance bands ``lo <= d < hi`` in pixels.

    Returns
    -------
    sums : (len(bands), C) float64 ndarray
        Sum of ``output - target`` per band and channel.
    counts : (len(bands),) int64 ndarray
        Number of pixels per band (divide to get the mean; summing over
        images first gives a pixel-weighted mean).
    """
    out = np.asarray(output, dtype=np.float64)
    if out.ndim == 2:
        out = out[..., None]
    m = np.asarray(mask, dtype=bool)
    valid = m & (np.asarray(region, bool) if region is not None else m)
    if exclude is not None:
        valid &= ~np.asarray(exclude, bool)
    d = margin_distance(m)
    sums = np.zeros((len(bands), out.shape[-1]))
    counts = np.zeros(len(bands), np.int64)
    for i, (lo, hi) in enumerate(bands):
        sel = valid & (d >= lo) & (d < hi)
        counts[i] = int(sel.sum())
        if counts[i]:
            sums[i] = (out[sel] - target).sum(axis=0)
    return sums, counts
