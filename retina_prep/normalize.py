"""Local illumination normalization (IN) of fundus images (seed 000, eq. 8-9).

``IN(I) = I - masked_local_mean(I) + I0``, channel by channel, with the local
mean taken over field-of-view pixels only (masked convolution).
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from .core import Kernel, box_kernel, gaussian_kernel, masked_convolve, set_where
from .fov import fov_diameter

__all__ = [
    "METHODS",
    "DEFAULT_SCALE",
    "DEFAULT_STD_FLOOR",
    "KERNELS",
    "AUTO_WINDOW_FRACTION",
    "DEFAULT_TARGET",
    "resolve_window",
    "make_kernel",
    "local_mean",
    "normalize_illumination",
    "dtype_scale",
]

#: Normalization methods: subtract the local mean, or standardize by the local std too.
METHODS = ("mean", "standardize")

#: ``method="standardize"``: one local standard deviation becomes this many gray levels (8-bit units).
DEFAULT_SCALE = 32.0

#: ``method="standardize"``: the local standard deviation is floored at this (8-bit units).
DEFAULT_STD_FLOOR = 2.0

#: Local-mean kernels accepted by :func:`make_kernel`.
KERNELS = ("mean", "gaussian")

#: ``window="auto"``: the window is this fraction of the FOV diameter
#: (21 px on DRIVE, whose field of view is about 540 px wide).
AUTO_WINDOW_FRACTION = 0.04

#: Default target level I0, in 8-bit units.
DEFAULT_TARGET = 128.0

#: sigma = size / GAUSSIAN_SIZE_PER_SIGMA when no sigma is given (seed 000: size 50, sigma 20).
GAUSSIAN_SIZE_PER_SIGMA = 2.5


def resolve_window(window, mask=None) -> int:
    """Window size in pixels: an odd int, or ``"auto"`` (a fraction of the FOV diameter).

    ``"auto"`` uses :data:`AUTO_WINDOW_FRACTION` of :func:`fov_diameter`
    rounded to the nearest odd number (at least 3); it needs a mask.
    """
    if isinstance(window, str):
        if window.strip().lower() != "auto":
            try:
                window = int(window)
            except ValueError:
                raise ValueError(f"window must be an odd number of pixels or 'auto', got {window!r}")
        else:
            if mask is None:
                raise ValueError("window 'auto' needs a field-of-view mask")
            size = AUTO_WINDOW_FRACTION * fov_diameter(mask)
            return max(3, 2 * int(math.floor(size / 2)) + 1)
    if isinstance(window, bool) or int(window) != window or window < 1 or int(window) % 2 == 0:
        raise ValueError(f"window must be an odd number of pixels >= 1, got {window!r}")
    return int(window)


def make_kernel(kind: str = "mean", window: int = 51, sigma: float | None = None) -> Kernel:
    """The local-mean kernel: ``"mean"`` (box ``window x window``) or ``"gaussian"``.

    For ``"gaussian"`` the kernel is ``window`` pixels wide; ``sigma``
    defaults to ``window / 2.5`` (seed 000's size 50, sigma 20).
    """
    if kind not in KERNELS:
        raise ValueError(f"unknown kernel {kind!r}; valid kernels: {', '.join(KERNELS)}")
    if kind == "mean":
        if sigma is not None:
            raise ValueError("sigma applies to the gaussian kernel only")
        return box_kernel(window)
    if sigma is None:
        sigma = window / GAUSSIAN_SIZE_PER_SIGMA
    return gaussian_kernel(sigma, window)


def dtype_scale(dtype) -> float:
    """Factor from 8-bit units to ``dtype`` units, and the dtype's value range.

    uint8: 1; uint16: 65535/255 = 257 (so I0 = 128 becomes 32896); other
    integer types likewise ``max / 255``; float images are taken to be in
    ``[0, 1]``: 1/255.
    """
    dt = np.dtype(dtype)
    if np.issubdtype(dt, np.integer):
        return np.iinfo(dt).max / 255.0
    return 1.0 / 255.0


def _value_range(dtype) -> tuple[float, float]:
    dt = np.dtype(dtype)
    if np.issubdtype(dt, np.integer):
        info = np.iinfo(dt)
        return float(info.min), float(info.max)
    return 0.0, 1.0


def local_mean(image, mask=None, *, kernel: Kernel, ignore_mask: bool = False, **kwargs):
    """Masked local mean of ``image`` and its weight map.

    With ``ignore_mask=True`` the mask is not used: the mean is a plain
    convolution over the whole image (seed 000's "IN without mask").
    Returns ``(mean, weights)`` as float32 arrays.
    """
    m = None if ignore_mask else mask
    return masked_convolve(image, m, kernel, return_weights=True, **kwargs)


def normalize_illumination(
    image,
    mask=None,
    *,
    kernel: Kernel | None = None,
    window=51,
    target: float = DEFAULT_TARGET,
    fill: float = 0.0,
    ignore_mask: bool = False,
    output_dtype=None,
    method: str = "mean",
    scale: float = DEFAULT_SCALE,
    std_floor: float = DEFAULT_STD_FLOOR,
) -> np.ndarray:
    """Local illumination normalization ``I - masked_local_mean(I) + I0``.

    With ``method="standardize"``, masked local standardization (seed 001,
    eq. 4-7): ``I0 + scale * (I - mu_M) / max(sigma_M, std_floor)``, with
    ``mu_M`` and ``sigma_M`` the mask-weighted local mean and standard
    deviation over the same window, ``sigma_M**2 = E_M(I**2) - mu_M**2``
    (the simplified variance of eq. 6-7).

    Parameters
    ----------
    image : (H, W) or (H, W, C) ndarray
        uint8, uint16 or float (taken to be in [0, 1]); not modified.
    mask : (H, W) bool or float ndarray, optional
        Field of view. ``None``: the whole image.
    kernel : Kernel, optional
        Local-mean kernel; by default a box of ``window`` pixels.
    window : int or "auto"
        Box size when ``kernel`` is not given.
    target : float
        I0 in 8-bit units; scaled by :func:`dtype_scale` for other dtypes
        (128 -> 32896 for uint16, 0.502 for float).
    fill : float
        Output value outside the field of view, in 8-bit units (scaled too).
    ignore_mask : bool
        Compute the local mean by plain convolution over the whole image
        (the halo-prone "IN without mask"). The output is still cut to the FOV.
    output_dtype : dtype, optional
        Defaults to the input dtype. The result is clipped to its range.
    method : {"mean", "standardize"}
    scale, std_floor : float
        For ``standardize``, in 8-bit units (scaled like ``target``).

    Returns
    -------
    ndarray, shape of ``image``, dtype ``output_dtype``

    Notes
    -----
    Channels are normalized independently with the same kernel and mask.
    Integer outputs are rounded to the nearest integer.
    """
    img = np.asarray(image)
    if mask is not None:
        mask = np.asarray(mask)
    if kernel is None:
        kernel = make_kernel("mean", resolve_window(window, mask))
    out_dtype = np.dtype(output_dtype) if output_dtype is not None else img.dtype
    if out_dtype == np.bool_:
        raise ValueError("cannot normalize into a boolean image")
    in_scale = dtype_scale(img.dtype)
    out_scale = dtype_scale(out_dtype)

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    # pixels with no valid neighbour lie outside the FOV and are overwritten below
    mean, _ = local_mean(img, mask, kernel=kernel, ignore_mask=ignore_mask, fill=None)
    inside = None if mask is None else (mask if mask.dtype == np.bool_ else mask > 0)
    if (method == "mean" and out_dtype == img.dtype and img.dtype in (np.uint8, np.uint16)
            and mean.shape == img.shape):
        # fast path: one OpenCV pass computes I - mean + I0, rounds and saturates
        out = cv2.addWeighted(img, 1.0, mean, -1.0, float(target * in_scale),
                              dtype=cv2.CV_8U if img.dtype == np.uint8 else cv2.CV_16U)
        if out.shape != img.shape:
            out = out.reshape(img.shape)
        if inside is not None:
            out = set_where(out, ~inside, float(np.clip(round(fill * out_scale),
                                                        *_value_range(out_dtype))))
        return out
    out = img.astype(np.float32)
    if method == "standardize":
        if not (scale > 0 and std_floor > 0):
            raise ValueError("scale and std_floor must be positive")
        sq, _ = local_mean(np.square(out), mask, kernel=kernel, ignore_mask=ignore_mask, fill=0.0)
        mean = np.nan_to_num(mean, copy=False, posinf=0.0, neginf=0.0)
        sq -= np.square(mean)
        np.maximum(sq, 0.0, out=sq)
        std = np.sqrt(sq, out=sq)
        np.maximum(std, np.float32(std_floor * in_scale), out=std)
        out -= mean
        out *= np.float32(scale * in_scale) / std
    else:
        out -= mean
    out += np.float32(target * in_scale)
    if out_scale != in_scale:
        out *= np.float32(out_scale / in_scale)
    lo, hi = _value_range(out_dtype)
    np.clip(out, lo, hi, out=out)
    if inside is not None:
        out[~inside] = fill * out_scale
    if np.issubdtype(out_dtype, np.integer):
        np.rint(out, out=out)
    return out.astype(out_dtype, copy=False)
