"""Masked (normalized) convolution on arrays.

This module is the numerical core of retina-prep. It knows nothing about
files, command lines or printing.

For an image ``P`` (``(H, W)`` or ``(H, W, C)``), a mask ``M`` (``(H, W)``,
boolean, or float weights in ``[0, 1]``) and a non-negative kernel ``K``::

    R = ((P * M) conv K) / (M conv K)

channel by channel (seed 000, eq. 5-6). Only pixels with mask weight > 0
contribute to the result. Pixels outside the image rectangle are invalid
(weight 0): they are neither zeros of the image nor reflections of it.

All computation is done in float32 with OpenCV. Three backend paths exist:

``"box"``
    ``cv2.boxFilter(normalize=False)`` for kernels whose entries are all equal.
``"separable"``
    ``cv2.sepFilter2D`` for rank-one kernels (Gaussians).
``"filter2d"``
    ``cv2.filter2D``, the general path for any kernel, and the reference the
    fast paths are tested against.

``"auto"`` picks the fastest exact path for the kernel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

__all__ = [
    "Kernel",
    "PATHS",
    "box_kernel",
    "gaussian_kernel",
    "as_kernel",
    "convolve",
    "masked_convolve",
    "mask_weights",
    "DEFAULT_MIN_WEIGHT",
]

#: Backend paths accepted by :func:`convolve` and :func:`masked_convolve`.
PATHS = ("auto", "box", "separable", "filter2d")

#: Default floor on the normalized weight ``(M conv K) / sum(K)`` below which
#: the masked result is undefined and replaced by the fill value.
DEFAULT_MIN_WEIGHT = 1e-5

_BORDER = cv2.BORDER_CONSTANT  # outside the image rectangle: weight 0


@dataclass(frozen=True)
class Kernel:
    """A 2-D convolution kernel with the structure the fast paths need.

    Parameters
    ----------
    array : (kh, kw) ndarray
        The kernel weights. Both sizes must be odd, so that the kernel has a
        centre pixel, which is placed on the output pixel.
    name : str
        A short description used in messages and provenance.
    factors : tuple of two 1-D ndarrays, optional
        ``(ky, kx)`` with ``array == np.outer(ky, kx)``, for the separable path.
    is_box : bool
        True when all entries are equal (the box path applies).
    """

    array: np.ndarray
    name: str = "custom"
    factors: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    is_box: bool = False

    def __post_init__(self):
        arr = np.asarray(self.array, dtype=np.float64)
        if arr.ndim != 2 or arr.size == 0:
            raise ValueError(f"kernel must be a non-empty 2-D array, got shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError("kernel has non-finite entries (NaN or inf)")
        kh, kw = arr.shape
        if kh % 2 == 0 or kw % 2 == 0:
            raise ValueError(
                f"kernel sizes must be odd so that it has a centre pixel, got {kh}x{kw}"
            )
        arr = arr.copy()
        arr.setflags(write=False)
        object.__setattr__(self, "array", arr)

    @property
    def shape(self) -> tuple[int, int]:
        return self.array.shape

    @property
    def total(self) -> float:
        """Sum of the kernel weights."""
        return float(self.array.sum())

    @property
    def is_nonnegative(self) -> bool:
        return bool(np.all(self.array >= 0))


def box_kernel(size: int) -> Kernel:
    """Mean filter of ``size x size`` pixels (seed 000, eq. 9): all weights ``1/size**2``."""
    size = _odd_size(size, "box size")
    w = 1.0 / (size * size)
    one = np.full(size, 1.0 / size)
    return Kernel(np.full((size, size), w), name=f"box {size}", factors=(one, one), is_box=True)


def gaussian_kernel(sigma: float, size: int | None = None) -> Kernel:
    """Gaussian kernel with standard deviation ``sigma`` pixels, normalized to sum 1.

    ``size`` defaults to ``2 * ceil(3 * sigma) + 1``; a smaller size truncates
    the Gaussian (seed 000 uses size 50 with sigma 20; sizes here are odd, so
    use 51).
    """
    sigma = float(sigma)
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a positive number, got {sigma!r}")
    if size is None:
        size = 2 * math.ceil(3 * sigma) + 1
    size = _odd_size(size, "gaussian size")
    x = np.arange(size) - size // 2
    g = np.exp(-0.5 * (x / sigma) ** 2)
    g /= g.sum()
    return Kernel(np.outer(g, g), name=f"gaussian {size} sigma {sigma:g}", factors=(g, g))


def as_kernel(kernel) -> Kernel:
    """Return ``kernel`` as a :class:`Kernel`, detecting box and separable structure."""
    if isinstance(kernel, Kernel):
        return kernel
    arr = np.asarray(kernel, dtype=np.float64)
    k = Kernel(arr)  # validates
    arr = k.array
    if np.all(arr == arr.flat[0]):
        ones_y = np.full(arr.shape[0], 1.0)
        ones_x = np.full(arr.shape[1], float(arr.flat[0]))
        return Kernel(arr, factors=(ones_y, ones_x), is_box=True)
    factors = _rank_one_factors(arr)
    return Kernel(arr, factors=factors)


def _rank_one_factors(arr: np.ndarray):
    u, s, vt = np.linalg.svd(arr)
    if s[0] == 0 or (len(s) > 1 and s[1] > 1e-10 * s[0]):
        return None
    ky = u[:, 0] * math.sqrt(s[0])
    kx = vt[0] * math.sqrt(s[0])
    if not np.allclose(np.outer(ky, kx), arr, rtol=1e-9, atol=1e-12 * np.abs(arr).max()):
        return None
    return ky, kx


def _odd_size(size, what: str) -> int:
    if isinstance(size, bool) or int(size) != size:
        raise ValueError(f"{what} must be an odd whole number of pixels, got {size!r}")
    size = int(size)
    if size < 1 or size % 2 == 0:
        raise ValueError(f"{what} must be an odd number >= 1, got {size}")
    return size


def _pick_path(k: Kernel, path: str) -> str:
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}; valid paths: {', '.join(PATHS)}")
    if path == "auto":
        if k.is_box:
            return "box"
        if k.factors is not None:
            return "separable"
        return "filter2d"
    if path == "box" and not k.is_box:
        raise ValueError(f"path 'box' needs a kernel with all entries equal ({k.name})")
    if path == "separable" and k.factors is None:
        raise ValueError(f"path 'separable' needs a rank-one kernel ({k.name})")
    return path


def _filter(src: np.ndarray, k: Kernel, path: str) -> np.ndarray:
    """Zero-padded *convolution* of a float32 array (H, W) or (H, W, C)."""
    if src.ndim == 3 and (src.shape[2] == 1 or src.shape[2] > 4):
        # OpenCV drops a singleton channel axis and caps channel counts: go one by one
        out = np.empty(src.shape, np.float32)
        for c in range(src.shape[2]):
            out[..., c] = _filter_cv(np.ascontiguousarray(src[..., c]), k, path)
        return out
    return _filter_cv(src, k, path)


def _filter_cv(src: np.ndarray, k: Kernel, path: str) -> np.ndarray:
    if path == "box":
        kh, kw = k.shape
        out = cv2.boxFilter(src, cv2.CV_32F, (kw, kh), normalize=False, borderType=_BORDER)
        value = float(k.array.flat[0])
        if value != 1.0:
            out *= value
        return out
    if path == "separable":
        ky, kx = k.factors
        # convolution = correlation with the flipped kernel; centre anchors stay.
        return cv2.sepFilter2D(
            src,
            cv2.CV_32F,
            np.ascontiguousarray(kx[::-1], dtype=np.float32),
            np.ascontiguousarray(ky[::-1], dtype=np.float32),
            borderType=_BORDER,
        )
    flipped = np.ascontiguousarray(k.array[::-1, ::-1], dtype=np.float32)
    return cv2.filter2D(src, cv2.CV_32F, flipped, borderType=_BORDER)


def _as_float_image(image) -> np.ndarray:
    img = np.asarray(image)
    if img.ndim not in (2, 3) or img.size == 0:
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {img.shape}")
    if img.dtype == np.bool_:
        img = img.astype(np.uint8)
    if not (np.issubdtype(img.dtype, np.integer) or np.issubdtype(img.dtype, np.floating)):
        raise ValueError(f"image dtype {img.dtype} is not numeric")
    return img.astype(np.float32, copy=False)


def _as_weights(mask, shape: tuple[int, int]) -> np.ndarray:
    m = np.asarray(mask)
    if m.shape != shape:
        raise ValueError(f"mask shape {m.shape} does not match image shape {shape}")
    if m.dtype == np.bool_:
        return m.astype(np.float32)
    m = m.astype(np.float32, copy=False)
    if not np.all(np.isfinite(m)) or m.min() < 0 or m.max() > 1:
        raise ValueError("a float mask must hold finite weights in [0, 1]")
    return m


def convolve(image, kernel, *, path: str = "auto") -> np.ndarray:
    """Plain convolution with zeros outside the image rectangle, in float32.

    Parameters
    ----------
    image : (H, W) or (H, W, C) array_like
    kernel : Kernel or (kh, kw) array_like
        Odd sizes; the centre pixel is placed on the output pixel.
    path : {"auto", "box", "separable", "filter2d"}
        OpenCV backend path (see module docstring).

    Returns
    -------
    (H, W) or (H, W, C) float32 ndarray
    """
    k = as_kernel(kernel)
    path = _pick_path(k, path)
    img = _as_float_image(image)
    return _filter(img, k, path)


def mask_weights(mask, kernel, *, path: str = "auto") -> np.ndarray:
    """The certainty ``(M conv K) / sum(K)`` of every output pixel, in ``[0, 1]``.

    1 where the whole window lies inside the mask and the image, 0 where it
    holds no valid pixel. The kernel must be non-negative.
    """
    k = as_kernel(kernel)
    _require_nonnegative(k)
    m = _as_weights(mask, np.shape(mask)[:2])
    return _weights(m, k, _pick_path(k, path))


def _weights(m: np.ndarray, k: Kernel, path: str) -> np.ndarray:
    w = _filter(m, k, path)
    w *= np.float32(1.0 / k.total)
    np.clip(w, 0.0, 1.0, out=w)
    return w


def _require_nonnegative(k: Kernel):
    if not k.is_nonnegative or k.total <= 0:
        raise ValueError(
            f"masked convolution needs a non-negative kernel with a positive sum ({k.name})"
        )


def masked_convolve(
    image,
    mask=None,
    kernel=None,
    *,
    min_weight: float = DEFAULT_MIN_WEIGHT,
    fill: float = np.nan,
    path: str = "auto",
    return_weights: bool = False,
):
    """Masked (normalized) convolution ``((P*M) conv K) / (M conv K)``.

    Parameters
    ----------
    image : (H, W) or (H, W, C) array_like
        Any numeric dtype; it is not modified.
    mask : (H, W) array_like of bool or float in [0, 1], optional
        Weight of every pixel: True/1 inside the field of view, False/0
        outside; intermediate values weight a pixel partially. ``None`` means
        all pixels are valid, which is plain convolution normalized at the
        image rectangle.
    kernel : Kernel or (kh, kw) array_like
        Non-negative, odd sizes, positive sum. Its scale does not matter.
    min_weight : float
        Floor on the normalized weight ``(M conv K) / sum(K)``. Where the
        weight is below it the result is undefined and set to ``fill``.
    fill : float
        Value of undefined output pixels (NaN by default).
    path : {"auto", "box", "separable", "filter2d"}
        OpenCV backend path.
    return_weights : bool
        Also return the normalized weight map.

    Returns
    -------
    result : float32 ndarray, same shape as ``image``
    weights : (H, W) float32 ndarray in [0, 1], only if ``return_weights``

    Notes
    -----
    ``M conv K`` is computed once and shared by all channels. Pixels outside
    the image rectangle count with weight 0. The result is a weighted mean of
    valid pixels, so it lies within the range of the valid pixels' values in
    each window.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.full((5, 5), 100.0); mask = np.zeros((5, 5), bool); mask[1:4, 1:4] = True
    >>> out = masked_convolve(img * mask, mask, box_kernel(3))
    >>> round(float(out[1, 1]), 3)   # the zeros outside the mask do not leak in
    100.0
    """
    if kernel is None:
        raise ValueError("a kernel is required")
    k = as_kernel(kernel)
    _require_nonnegative(k)
    path = _pick_path(k, path)
    img = _as_float_image(image)
    shape = img.shape[:2]
    if mask is None:
        m = np.ones(shape, np.float32)
    else:
        m = _as_weights(mask, shape)

    weights = _weights(m, k, path)
    weighted = img * (m[..., None] if img.ndim == 3 else m)
    num = _filter(weighted, k, path)
    num *= np.float32(1.0 / k.total)

    undefined = weights < min_weight
    safe = np.where(undefined, np.float32(1.0), weights)
    if num.ndim == 3:
        num /= safe[..., None]
        num[undefined] = fill
    else:
        num /= safe
        num[undefined] = fill
    if return_weights:
        return num, weights
    return num
