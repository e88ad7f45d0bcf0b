"""Masked (normalized) convolution on arrays: the numerical core of retina-prep.

It knows nothing about files, command lines or printing. Kernels are made in
:mod:`.kernels`; the first-order (plane) version is in :mod:`.first_order`.

For an image ``P`` (``(H, W)`` or ``(H, W, C)``), a mask ``M`` (``(H, W)``,
boolean, or float weights in ``[0, 1]``) and a non-negative kernel ``K``::

    R = ((P * M) conv K) / (M conv K)

channel by channel (the mask-convolution paper, eq. 5-6). Only pixels with mask weight > 0
contribute to the result. Pixels outside the image rectangle are invalid
(weight 0): they are neither zeros of the image nor reflections of it.

All computation is done in float32 with OpenCV. The backend paths:

``"box"``
    ``cv2.boxFilter(normalize=False)`` for kernels whose entries are all equal.
``"separable"``
    ``cv2.sepFilter2D`` for rank-one kernels (Gaussians).
``"filter2d"``
    ``cv2.filter2D``, the general path for any kernel, and the reference the
    fast paths are tested against.

``"pyramid"``
    large Gaussians: area-averaged onto a grid ``d`` times coarser, the
    Gaussian of the remaining variance there, linear interpolation back
    (within 0.05 gray levels of the exact Gaussian; see :func:`gaussian_kernel`).

``"auto"`` picks the fastest path for the kernel.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any, Literal, overload

import cv2
import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from .kernels import Kernel, _gaussian_1d, as_kernel

__all__ = [
    "dtype_scale",
    "PATHS",
    "convolve",
    "masked_convolve",
    "mask_weights",
    "masked_filter",
    "as_mask",
    "check_layout",
    "as_native",
    "finite_pixels",
    "set_where",
    "MODES",
    "DEFAULT_MIN_WEIGHT",
]

#: Backend paths accepted by :func:`convolve` and :func:`masked_convolve`.
PATHS = ("auto", "box", "pyramid", "separable", "filter2d")

#: Default floor on the normalized weight ``(M conv K) / sum(K)`` below which
#: the masked result is undefined and replaced by the fill value.
DEFAULT_MIN_WEIGHT = 1e-5

_BORDER = cv2.BORDER_CONSTANT  # outside the image rectangle: weight 0


def dtype_scale(dtype: DTypeLike) -> float:
    """Factor from 8-bit units to ``dtype`` units.

    uint8: 1; uint16: 65535/255 = 257 (so I0 = 128 becomes 32896); other
    integer types likewise ``max / 255``; floats: 1/255 (values in ``[0, 1]``).
    """
    dt = np.dtype(dtype)
    if np.issubdtype(dt, np.integer):
        return np.iinfo(dt).max / 255.0
    return 1.0 / 255.0


def _pick_path(k: Kernel, path: str) -> str:
    if path not in PATHS:
        raise ValueError(f"unknown path {path!r}; valid paths: {', '.join(PATHS)}")
    if path == "auto":
        if k.is_box:
            return "box"
        if k.pyramid is not None:
            return "pyramid"
        if k.factors is not None:
            return "separable"
        return "filter2d"
    if path == "box" and not k.is_box:
        raise ValueError(f"path 'box' needs a kernel with all entries equal ({k.name})")
    if path == "pyramid" and k.pyramid is None:
        raise ValueError(f"path 'pyramid' needs a large Gaussian kernel ({k.name})")
    if path == "separable" and k.factors is None:
        raise ValueError(f"path 'separable' needs a rank-one kernel ({k.name})")
    return path


def _filter(src: np.ndarray, k: Kernel, path: str, depth: int = cv2.CV_32F,
            raw: bool = False, view: bool = False) -> np.ndarray:
    """Zero-padded *convolution* of a float array (H, W) or (H, W, C), to float32 (or float64
    with ``depth=cv2.CV_64F``). With ``raw`` the box path returns plain window sums (the
    kernel's common value not applied: see :func:`_raw_total`). A contiguous array, or with
    ``view`` possibly a view of a larger one (the pyramid path's, saving a copy)."""
    if src.ndim == 3 and (src.shape[2] == 1 or src.shape[2] > 4):
        # OpenCV drops a singleton channel axis and caps channel counts: go one by one
        out = np.empty(src.shape, np.float64 if depth == cv2.CV_64F else np.float32)
        for c in range(src.shape[2]):
            out[..., c] = _filter_cv(np.ascontiguousarray(src[..., c]), k, path, depth, raw)
        return out
    out = _filter_cv(src, k, path, depth, raw)
    return out if view else np.ascontiguousarray(out)


def _filter_cv(src: np.ndarray, k: Kernel, path: str, depth: int = cv2.CV_32F,
               raw: bool = False) -> np.ndarray:
    ftype = np.float64 if depth == cv2.CV_64F else np.float32
    if path == "box":
        kh, kw = k.shape
        out = cv2.boxFilter(src, depth, (kw, kh), normalize=False, borderType=_BORDER)
        value = float(k.array.flat[0])
        if value != 1.0 and not raw:
            out *= value
        return out
    if path == "pyramid":
        return _pyramid_filter(src, k, depth)
    if path == "separable":
        assert k.factors is not None
        ky, kx = k.factors
        # convolution = correlation with the flipped kernel; centre anchors stay.
        return cv2.sepFilter2D(
            src,
            depth,
            np.ascontiguousarray(kx[::-1], dtype=ftype),
            np.ascontiguousarray(ky[::-1], dtype=ftype),
            borderType=_BORDER,
        )
    flipped = np.ascontiguousarray(k.array[::-1, ::-1], dtype=ftype)
    # the general path works in float: OpenCV's 8-bit filter2D loses precision with large kernels
    return cv2.filter2D(src.astype(ftype, copy=False), depth, flipped, borderType=_BORDER)


def _pyramid_filter(src: np.ndarray, k: Kernel, depth: int) -> np.ndarray:
    """The pyramid path (see :func:`gaussian_kernel`): ``d x d`` cell means (strip by strip, so
    only a strip is ever converted to float), the coarse Gaussian (zero outside, as everywhere),
    and linear interpolation back to every pixel (centres aligned; outside the outermost cell
    centres the nearest one holds). A view of an array padded to whole cells (one resize of the
    whole grid: strips cost 20 % more); :func:`_filter` copies it unless told a view will do."""
    assert k.pyramid is not None
    d, s = k.pyramid
    ftype = np.float64 if depth == cv2.CV_64F else np.float32
    h, w = src.shape[:2]
    ph, pw = -(-h // d) * d, -(-w // d) * d
    coarse = np.empty((ph // d, pw // d) + src.shape[2:], ftype)
    step = max(1, _STRIP_PIXELS // (pw * d)) * d
    for y in range(0, ph, step):
        part = src[y:y + step].astype(ftype)
        rows = min(step, ph - y)
        if rows > part.shape[0] or pw > w:  # whole cells: zeros beyond the image
            part = cv2.copyMakeBorder(part, 0, rows - part.shape[0], 0, pw - w,
                                      cv2.BORDER_CONSTANT, value=0)
        coarse[y // d:(y + rows) // d] = cv2.resize(part, (pw // d, rows // d),
                                                    interpolation=cv2.INTER_AREA)
    g = _gaussian_1d(s).astype(ftype)
    coarse = cv2.sepFilter2D(coarse, depth, g, g, borderType=_BORDER)
    return cv2.resize(coarse, (pw, ph), interpolation=cv2.INTER_LINEAR)[:h, :w]


def _raw_total(k: Kernel, path: str) -> float:
    """The sum of the kernel as ``_filter(..., raw=True)`` applies it: the window's pixel count
    on the box path (plain sums: exact integers for 8- and 16-bit data), else the kernel's sum."""
    if path == "box":
        return float(k.shape[0] * k.shape[1])
    return k.total


def check_layout(img: np.ndarray) -> None:
    """Raise ``ValueError`` unless ``img`` is a non-empty ``(H, W)`` or ``(H, W, C)`` array
    (a channels-first ``(C, H, W)`` array is named as such)."""
    if img.ndim == 3 and img.shape[0] in (1, 3, 4) and img.shape[2] > 4:
        raise ValueError(f"image shape {img.shape} looks channels-first; images are (H, W, C):"
                         " use np.moveaxis(image, 0, -1)")
    if img.ndim not in (2, 3) or img.size == 0:
        raise ValueError(f"image must be (H, W) or (H, W, C), got shape {img.shape}")


def finite_pixels(img: np.ndarray) -> np.ndarray | None:
    """The ``(H, W)`` map of pixels whose every channel is finite, or None when all are
    (integer images, and float images without NaN or inf: one fast pass)."""
    img = np.asarray(img)
    if not np.issubdtype(img.dtype, np.floating) or np.isfinite(img.sum(dtype=np.float64)):
        return None  # a sum is finite only when every term is
    finite = np.isfinite(img)
    return finite.all(axis=2) if img.ndim == 3 else finite


def as_native(arr: ArrayLike) -> np.ndarray:
    """``arr`` as an array in the machine's byte order (a big-endian ``>u2`` image from a FITS or
    raw reader is the same uint16 data; kept as it was, it would not count as uint16)."""
    arr = np.asarray(arr)
    return arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))


def _as_image(image: ArrayLike) -> np.ndarray:
    """Validate; keep uint8, uint16 and float32 (OpenCV reads them directly), else float32."""
    img = as_native(image)
    check_layout(img)
    if img.dtype == np.bool_:
        img = img.astype(np.uint8)
    if not (np.issubdtype(img.dtype, np.integer) or np.issubdtype(img.dtype, np.floating)):
        raise ValueError(f"image dtype {img.dtype} is not numeric")
    if img.dtype not in (np.uint8, np.uint16, np.float32):
        img = img.astype(np.float32)
    return np.ascontiguousarray(img)


def _as_float_image(image: ArrayLike) -> np.ndarray:
    return _as_image(image).astype(np.float32, copy=False)


def as_mask(mask: ArrayLike, shape: tuple[int, int] | None = None) -> np.ndarray:
    """A field-of-view mask as a boolean or float32 weight ``(H, W)`` array.

    Accepted: bool; integer masks holding only 0/1 or only 0/255 (the usual
    mask files), which become bool; float weights in ``[0, 1]``, which stay
    float32. An ``(H, W, 1)`` mask is squeezed. Anything else raises
    ``ValueError`` saying what is wrong; so does a shape other than
    ``shape`` when it is given.

    Parameters
    ----------
    mask : (H, W) or (H, W, 1) array_like
    shape : (H, W), optional
        The shape the mask must have.

    Returns
    -------
    (H, W) bool or float32 ndarray

    Examples
    --------
    >>> import numpy as np
    >>> as_mask(np.array([[0, 255], [255, 0]], np.uint8)).dtype
    dtype('bool')
    """
    m = as_native(mask)
    if m.ndim == 3 and m.shape[2] == 1:
        m = m[..., 0]
    if m.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {m.shape}")
    if shape is not None and m.shape != tuple(shape):
        raise ValueError(f"mask shape {m.shape} does not match image shape {tuple(shape)}")
    if m.dtype == np.bool_:
        return m
    if np.issubdtype(m.dtype, np.integer):
        lo, hi = (int(v) for v in cv2.minMaxLoc(m.astype(np.float32, copy=False))[:2]) \
            if m.size else (0, 0)
        if lo >= 0 and hi <= 1:
            return m.astype(bool)
        if lo >= 0 and hi == 255 and not np.any((m != 0) & (m != 255)):
            return m.astype(bool)
        raise ValueError(f"an integer mask must hold only 0/1 or only 0/255, got values {lo}..{hi};"
                         " pass partial weights as floats in [0, 1]")
    if not np.issubdtype(m.dtype, np.floating):
        raise ValueError(f"mask dtype {m.dtype} is not bool, integer or float")
    m = m.astype(np.float32, copy=False)
    if not np.all(np.isfinite(m)) or m.min() < 0 or m.max() > 1:
        raise ValueError("a float mask must hold finite weights in [0, 1]"
                         " (a 0/255 mask: pass it as uint8 or bool)")
    return m


def _binary_u8(mask: np.ndarray) -> np.ndarray | None:
    """A boolean mask as a 0/1 uint8 view (no copy); None for float weight masks."""
    m = np.asarray(mask)
    if m.dtype == np.bool_:
        return m.view(np.uint8)
    return None


def _as_weights(mask: ArrayLike, shape: tuple[int, int] | None) -> np.ndarray:
    return as_mask(mask, shape).astype(np.float32, copy=False)


def _drop_nonfinite(img: np.ndarray, mask: np.ndarray | None
                    ) -> tuple[np.ndarray, np.ndarray | None]:
    """Non-finite pixels (NaN, inf in any channel) of a float image become invalid: weight 0.

    Returns ``(image, mask)``: unchanged when every pixel is finite, else a
    copy of the image with those pixels zeroed and the mask without them.
    """
    return _drop_pixels(img, mask, finite_pixels(img))


def _drop_pixels(img: np.ndarray, mask: np.ndarray | None, finite: np.ndarray | None
                 ) -> tuple[np.ndarray, np.ndarray | None]:
    """:func:`_drop_nonfinite` with the image's :func:`finite_pixels` already known."""
    if finite is None:
        return img, mask
    img = np.where(finite[..., None] if img.ndim == 3 else finite, img, np.float32(0.0))
    if mask is None:
        return img, finite
    if mask.dtype == np.bool_:
        return img, mask & finite
    return img, mask * finite


def convolve(image: ArrayLike, kernel: Kernel | ArrayLike, *, path: str = "auto") -> np.ndarray:
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

    Examples
    --------
    Zeros beyond the edge pull the corner down (what masked convolution avoids):

    >>> import numpy as np
    >>> from retina_prep import box_kernel, convolve
    >>> out = convolve(np.ones((5, 5)), box_kernel(3))
    >>> round(float(out[0, 0]), 3), float(out[2, 2])
    (0.444, 1.0)
    """
    k = as_kernel(kernel)
    path = _pick_path(k, path)
    img = _as_float_image(image)
    return _filter(img, k, path)


def mask_weights(mask: ArrayLike, kernel: Kernel | ArrayLike, *, path: str = "auto"
                 ) -> np.ndarray:
    """The certainty ``(M conv |K|) / sum(|K|)`` of every output pixel, in ``[0, 1]``.

    1 where the whole window lies inside the mask and the image, 0 where it
    holds no valid pixel.

    Parameters
    ----------
    mask : (H, W) bool or float array_like
    kernel : Kernel or array_like
    path : {"auto", "box", "pyramid", "separable", "filter2d"}

    Returns
    -------
    (H, W) float32 ndarray

    Examples
    --------
    >>> import numpy as np
    >>> from retina_prep import box_kernel, mask_weights
    >>> mask = np.zeros((5, 5), bool); mask[:, :3] = True
    >>> [round(float(v), 2) for v in mask_weights(mask, box_kernel(3))[2]]
    [0.67, 1.0, 0.67, 0.33, 0.0]
    """
    k = as_kernel(kernel)
    m = _as_weights(mask, None)
    a = k.absolute()
    return _weights(m, a, _pick_path(a, path))


def _weights(m: np.ndarray, k: Kernel, path: str) -> np.ndarray:
    w = _filter(m, k, path)
    w *= np.float32(1.0 / k.total)
    np.clip(w, 0.0, 1.0, out=w)
    return w


#: Pointwise passes after filtering run over strips of rows of about this many pixels, so that
#: a strip's arrays stay in the CPU cache (and temporaries stay small on large images).
_STRIP_PIXELS = 1 << 17


def _strips(h: int, w: int) -> Iterator[slice]:
    """Row slices covering ``0..h`` in strips of about :data:`_STRIP_PIXELS` pixels."""
    rows = max(1, _STRIP_PIXELS // max(w, 1))
    for y0 in range(0, h, rows):
        yield slice(y0, min(h, y0 + rows))


#: OpenCV's Python binding may take an array of up to this many elements for a scalar.
_TINY = 4


def _reciprocal(den: np.ndarray, scale: float, floor: float) -> np.ndarray:
    """``scale / max(den, floor)`` (a new single-channel float32 array), with OpenCV."""
    floor = float(floor) if floor > 0 else 1e-30
    if den.size <= _TINY:
        return (np.float32(scale) / np.maximum(den, np.float32(floor))).astype(np.float32)
    inv = cv2.max(den, floor)
    cv2.divide(float(scale), inv, dst=inv)
    return inv


def _scale_rows(num: np.ndarray, inv: np.ndarray) -> None:
    """``num *= inv`` per channel, in place (``num`` contiguous (h, w[, c]); ``inv`` (h, w))."""
    rep = None if inv.size <= _TINY else _replicate(inv, 1 if num.ndim == 2 else num.shape[2])
    if rep is None:
        num *= inv[..., None] if num.ndim == 3 else inv
    else:  # one SIMD pass, in place
        cv2.multiply(num, rep, dst=num)


def _replicate(a: np.ndarray, c: int) -> np.ndarray | None:
    """A single-channel map as ``c`` channels for OpenCV arithmetic (``a`` itself for one);
    None beyond 4 channels. (Not ``GRAY2BGRA``: it sets the fourth channel to 1, not to ``a``.)"""
    if c == 1:
        return a
    if c == 3:
        return cv2.cvtColor(a, cv2.COLOR_GRAY2BGR)
    return cv2.merge([a] * c) if c in (2, 4) else None


class _MeanParts:
    """A local mean kept as its parts until needed, so that the division runs strip by strip
    together with whatever uses the mean (see :meth:`rows`): ``num * scale / max(den,
    floor)``, or ``num * inverse`` with ``inverse`` precomputed, or ``num * scale`` without
    ``den``. Once divided, ``num`` is the mean."""

    def __init__(self, num: np.ndarray, den: np.ndarray | None = None, *,
                 inverse: np.ndarray | None = None, scale: float = 1.0, floor: float = 0.0,
                 weighted: np.ndarray | None = None) -> None:
        self.weighted = weighted  # I M, when the caller asked to keep it (first order)
        self.num = num
        self.den = den
        self.inverse = inverse
        self.scale = float(scale)
        self.floor = float(floor)

    def pending(self, rows: slice) -> tuple[np.ndarray, float]:
        """``(part, factor)`` with the mean on ``rows`` equal to ``part * factor``: divided in
        place where a divisor is held (factor 1), else ``num`` and its constant ``scale``, for
        a caller that can apply the factor in a pass it makes anyway. Once per row."""
        n = self.num[rows]
        if self.inverse is not None:
            _scale_rows(n, self.inverse[rows])
        elif self.den is not None:
            _scale_rows(n, _reciprocal(self.den[rows], self.scale, self.floor))
        else:
            return n, self.scale
        return n, 1.0

    def rows(self, rows: slice) -> np.ndarray:
        """The mean on ``rows`` (dividing ``num`` there, in place; once per row)."""
        n, factor = self.pending(rows)
        if factor != 1.0:
            n *= np.float32(factor)
        return n

    def mean(self) -> np.ndarray:
        """The whole mean (dividing ``num`` in place)."""
        if self.inverse is not None or self.den is not None or self.scale != 1.0:
            for rows in _strips(*self.num.shape[:2]):
                self.rows(rows)
            self.inverse = self.den = None
            self.scale = 1.0
        return self.num


def _separable_weights(k: Kernel, shape: tuple[int, int]
                       ) -> tuple[np.ndarray, np.ndarray] | None:
    """For a rank-one kernel, the certainty of an all-valid image, ``(M conv K) / sum(K)`` with
    ``M = 1`` inside the image rectangle, as its two 1-D factors ``(wy, wx)``; None when the
    kernel is not rank one."""
    if k.pyramid is not None or k.factors is None:
        return None
    ky, kx = (np.asarray(f, np.float64) for f in k.factors)

    def along(n: int, f: np.ndarray) -> np.ndarray:  # zero-padded convolution of n ones with f, centred
        c = len(f) // 2
        return np.convolve(np.ones(n), f, mode="full")[c:c + n] / f.sum()

    return along(shape[0], ky), along(shape[1], kx)


def _rect_parts(img: np.ndarray, k: Kernel, path: str) -> _MeanParts | None:
    """The local mean over the image rectangle (no mask: ``M = 1`` inside the image) as
    :class:`_MeanParts`: one plain filter, divided by the rectangle's certainty only within the
    kernel's radius of the image's edges (elsewhere it is 1); None for kernels that are not
    rank one."""
    factors = _separable_weights(k, img.shape[:2])
    if factors is None:
        return None
    wy, wx = factors
    num = _filter(img, k, path, raw=True)
    h, w = img.shape[:2]
    ry, rx = min(k.shape[0] // 2, h), min(k.shape[1] // 2, w)

    def divide(rows: slice, cols: slice, weights: np.ndarray) -> None:
        part = num[rows, cols]
        part /= (weights[..., None] if part.ndim == 3 else weights).astype(np.float32)

    for rows in (slice(0, ry), slice(max(h - ry, ry), h)):  # top and bottom: both factors
        divide(rows, slice(None), np.outer(wy[rows], wx))
    inner = slice(ry, max(h - ry, ry))
    for cols in (slice(0, rx), slice(max(w - rx, rx), w)):  # left and right: the x factor
        divide(inner, cols, np.broadcast_to(wx[cols], (inner.stop - inner.start, len(wx[cols]))))
    # num is now the sums a complete window would have: the mean is num / (raw total / total)
    return _MeanParts(num, scale=k.total / _raw_total(k, path))


#: ``I M`` is kept for the first-order pass up to this size (an HRF image's 25 MB; a 4000 px
#: image's 48 MB would raise the peak memory by as much, for a 5 % gain).
_KEEP_WEIGHTED_BYTES = 32 << 20


def _mean_parts(image: ArrayLike, mask: np.ndarray | None, k: Kernel, *,
                min_weight: float = DEFAULT_MIN_WEIGHT, rect_fast: bool = True,
                want_weights: bool = False, inverse: np.ndarray | None = None,
                keep_weighted: bool = False) -> tuple[_MeanParts, np.ndarray | None]:
    """The masked local mean of ``image`` as :class:`_MeanParts` (the mean is ``sum(K)`` times
    the weighted mean, as :func:`masked_convolve` has it), and with ``want_weights`` the
    certainty ``(M conv K) / sum(K)``. ``image`` finite (see :func:`_drop_nonfinite`), ``mask``
    checked (:func:`as_mask`) or None; ``k`` non-negative. Box sums are plain sums, so the
    mean of 8- and 16-bit data (and of floats holding integers) is the same ratio of exact
    integers, rounded once. ``inverse`` (from :func:`_mean_divisor` for this mask) skips the
    mask's filter. ``keep_weighted`` keeps ``I M`` on the parts (``.weighted``) where it is
    in the image's own 8- or 16-bit dtype (a binary mask) and small (see
    :data:`_KEEP_WEIGHTED_BYTES`), for :func:`apply_plane`."""
    path = _pick_path(k, "auto")
    img = _as_image(image)
    if mask is None and rect_fast and not want_weights and inverse is None:
        parts = _rect_parts(img, k, path)
        if parts is not None:
            return parts, None
    if mask is None:
        m: np.ndarray = np.ones(img.shape[:2], np.uint8)
        weighted = img
    else:
        binary = _binary_u8(mask)
        m = binary if binary is not None else _as_weights(mask, img.shape[:2])
        weighted = _masked_input(img, m, binary)
    num = _filter(weighted, k, path, raw=True, view=True)
    keep = (weighted if keep_weighted and weighted.dtype in (np.uint8, np.uint16)
            and weighted.nbytes <= _KEEP_WEIGHTED_BYTES else None)
    if inverse is not None:
        return _MeanParts(num, inverse=inverse, weighted=keep), None
    den, raw = _filter(m, k, path, raw=True, view=True), _raw_total(k, path)
    parts = _MeanParts(num, den, scale=k.total, floor=min_weight * raw, weighted=keep)
    return parts, (den * np.float32(1.0 / raw) if want_weights else None)


def _mean_divisor(mask: np.ndarray, k: Kernel, *, min_weight: float = DEFAULT_MIN_WEIGHT
                  ) -> tuple[np.ndarray, np.ndarray]:
    """What :func:`_mean_parts` divides by for ``mask`` (checked, see :func:`as_mask`) and a
    non-negative ``k``, computed once: ``(inverse, weights)`` -- pass ``inverse`` back to
    :func:`_mean_parts` for images with this mask; ``weights`` is the certainty
    ``(M conv K) / sum(K)``."""
    path = _pick_path(k, "auto")
    binary = _binary_u8(mask)
    den = _filter(binary if binary is not None else _as_weights(mask, None), k, path, raw=True,
                  view=True)
    raw = _raw_total(k, path)
    return _reciprocal(den, k.total, min_weight * raw), den * np.float32(1.0 / raw)


def _masked_input(image: np.ndarray, m: np.ndarray, binary: np.ndarray | None) -> np.ndarray:
    """P * M (``m`` the weights; ``binary`` the same as 0/1 bytes when the mask is boolean):
    for a binary mask, zero the outside in the image's own dtype (fast); else float32."""
    if binary is not None and image.dtype in (np.uint8, np.uint16, np.float32) and (
            image.ndim == 2 or 2 <= image.shape[2] <= 4):
        return cv2.bitwise_and(image, image, mask=binary)
    img = image.astype(np.float32, copy=False)
    mm = m.astype(np.float32, copy=False)
    return img * (mm[..., None] if img.ndim == 3 else mm)


def _normalized_mean(weighted: np.ndarray, m: np.ndarray, k: Kernel, path: str,
                     min_weight: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted mean of valid pixels under ``k`` (>= 0): (mean, weights, undefined)."""
    weights = _weights(m, k, path)
    mean = _MeanParts(_filter(weighted, k, path), weights, scale=1.0 / k.total,
                      floor=min_weight).mean()
    return mean, weights, weights < min_weight


def set_where(arr: np.ndarray, where: np.ndarray, value: float | None) -> np.ndarray:
    """``arr[where] = value`` for (H, W[, C]) arrays and an (H, W) bool ``where``, with OpenCV.

    Much faster than NumPy's boolean indexing on large multi-channel images.
    Returns the array (a new one when OpenCV could not work in place).
    """
    if value is None or not where.any():
        return arr
    c = 1 if arr.ndim == 2 else arr.shape[2]
    if c > 4 or arr.dtype not in (np.uint8, np.uint16, np.float32):
        np.copyto(arr, np.asarray(value, arr.dtype), where=where[..., None] if arr.ndim == 3 else where)
        return arr
    keep = np.logical_not(where).view(np.uint8)
    out = cv2.bitwise_and(arr, arr, mask=keep)  # zero where ``where``
    if value != 0:
        out = cv2.add(out, (float(value),) * c + (0.0,) * (4 - c), mask=where.view(np.uint8),
                      dst=out)
    return out.reshape(arr.shape)


@overload
def masked_convolve(image: ArrayLike, mask: ArrayLike | None, kernel: Kernel | ArrayLike, *,
                    min_weight: float = ..., fill: float | None = ..., path: str = ...,
                    return_weights: Literal[False] = ...) -> np.ndarray: ...
@overload
def masked_convolve(image: ArrayLike, mask: ArrayLike | None, kernel: Kernel | ArrayLike, *,
                    min_weight: float = ..., fill: float | None = ..., path: str = ...,
                    return_weights: Literal[True]) -> tuple[np.ndarray, np.ndarray]: ...
@overload
def masked_convolve(image: ArrayLike, mask: ArrayLike | None, kernel: Kernel | ArrayLike, *,
                    min_weight: float = ..., fill: float | None = ..., path: str = ...,
                    return_weights: bool = ...) -> Any: ...
def masked_convolve(
    image: ArrayLike,
    mask: ArrayLike | None,
    kernel: Kernel | ArrayLike,
    *,
    min_weight: float = DEFAULT_MIN_WEIGHT,
    fill: float | None = np.nan,
    path: str = "auto",
    return_weights: bool = False,
) -> Any:
    """Masked (normalized) convolution, stable for signed kernels.

    For a non-negative kernel ``K`` this is the mask-convolution paper's eq. 5,
    ``sum(K) * ((P*M) conv K) / (M conv K)``: the weighted mean of the valid
    pixels under the kernel, times the kernel's sum (for kernels that sum to
    1, eq. 6). A signed kernel is split, ``K = K+ - K-``, and each part is
    normalized over the valid pixels on its own::

        R = sum(K+) * ((P*M) conv K+) / (M conv K+) - sum(K-) * ((P*M) conv K-) / (M conv K-)

    This equals plain convolution wherever the window is fully valid, never
    divides by a mixed-sign sum that can approach zero near the margin, and
    is bounded: ``sum(K+) * lo - sum(K-) * hi <= R <= sum(K+) * hi - sum(K-) * lo``
    with ``lo, hi`` the range of valid pixels in the window. Where one part
    sees no valid pixel, its mean is taken equal to the other part's (the
    missing neighbours are assumed to equal the valid ones), so a zero-sum
    edge kernel answers 0 rather than a jump to the background.

    Parameters
    ----------
    image : (H, W) or (H, W, C) array_like
        Any numeric dtype; it is not modified. Non-finite pixels (NaN, inf)
        of a float image are invalid, as if outside the mask.
    mask : (H, W) array_like or None
        Weight of every pixel (see :func:`as_mask`): bool, 0/1 or 0/255
        integers (inside / outside the field of view), or float weights in
        ``[0, 1]`` that weight a pixel partially. ``None`` means all pixels
        are valid, which is plain convolution normalized at the image
        rectangle. An empty mask gives ``fill`` everywhere.
    kernel : Kernel or (kh, kw) array_like
        Odd sizes, finite, not all zero.
    min_weight : float
        Floor on the normalized weight ``(M conv K±) / sum(K±)``. Where both
        parts' weights are below it the result is undefined: ``fill``.
    fill : float or None
        Value of undefined output pixels (NaN by default). ``None`` leaves
        them as computed (meaningless but finite): for callers that discard
        them anyway.
    path : {"auto", "box", "pyramid", "separable", "filter2d"}
        OpenCV backend path.
    return_weights : bool
        Also return the certainty map ``(M conv |K|) / sum(|K|)``.

    Returns
    -------
    result : float32 ndarray, same shape as ``image``
    weights : (H, W) float32 ndarray in [0, 1], only if ``return_weights``

    Notes
    -----
    ``M conv K`` is computed once and shared by all channels. Pixels outside
    the image rectangle count with weight 0.

    Examples
    --------
    >>> import numpy as np
    >>> from retina_prep.kernels import box_kernel
    >>> img = np.full((5, 5), 100.0); mask = np.zeros((5, 5), bool); mask[1:4, 1:4] = True
    >>> out = masked_convolve(img * mask, mask, box_kernel(3))
    >>> round(float(out[1, 1]), 3)   # the zeros outside the mask do not leak in
    100.0
    """
    k = as_kernel(kernel)
    img = _as_image(image)
    if img.ndim == 3 and img.shape[2] == 1:  # OpenCV drops singleton channels: go 2-D and back
        res = masked_convolve(img[..., 0], mask, k, min_weight=min_weight, fill=fill, path=path,
                              return_weights=return_weights)
        if return_weights:
            return res[0][..., None], res[1]
        return res[..., None]
    shape = img.shape[:2]
    if mask is not None:
        mask = as_mask(mask, shape)
    img, mask = _drop_nonfinite(img, mask)
    if k.is_nonnegative and path == "auto":
        parts, weights = _mean_parts(img, mask, k, min_weight=min_weight,
                                     want_weights=return_weights or fill is not None)
        mean = np.ascontiguousarray(parts.mean())  # its filters may give views
        if weights is not None:
            mean = set_where(mean, weights < min_weight, fill)
            np.clip(weights, 0.0, 1.0, out=weights)
        return (mean, weights) if return_weights else mean
    m: np.ndarray
    if mask is None:
        m = np.ones(shape, np.uint8)
        weighted = img
    else:
        binary = _binary_u8(mask)
        # OpenCV filters 0/1 bytes faster than floats, exactly
        m = binary if binary is not None else _as_weights(mask, shape)
        weighted = _masked_input(img, m, binary)

    if k.is_nonnegative:
        p = _pick_path(k, path)
        mean, weights, undefined = _normalized_mean(weighted, m, k, p, min_weight)
        if k.total != 1.0:
            mean *= np.float32(k.total)
        mean = set_where(mean, undefined, fill)
        return (mean, weights) if return_weights else mean

    if not np.any(k.array > 0):  # a non-positive kernel: -(masked result with -K)
        res = masked_convolve(image, mask, as_kernel(-k.array), min_weight=min_weight, fill=fill,
                              path=path, return_weights=return_weights)
        if return_weights:
            return -res[0], res[1]
        return -res
    kp, kn = k.positive(), k.negative()
    pos, wp, up = _normalized_mean(weighted, m, kp, _pick_path(kp, path), min_weight)
    neg, wn, un = _normalized_mean(weighted, m, kn, _pick_path(kn, path), min_weight)
    pos[up] = 0.0
    neg[un] = 0.0
    # a part without valid pixels borrows the other part's mean
    only_neg, only_pos = up & ~un, un & ~up
    pos[only_neg] = neg[only_neg]
    neg[only_pos] = pos[only_pos]
    out = pos
    out *= np.float32(kp.total)
    out -= np.float32(kn.total) * neg
    out = set_where(out, up & un, fill)
    if return_weights:
        a = k.absolute()
        return out, _weights(m, a, _pick_path(a, path))
    return out


#: Normalization modes of :func:`masked_filter` (the mask-convolution paper; Kang et al.).
MODES = ("normalized", "partial", "weighted")


def masked_filter(
    image: ArrayLike,
    mask: ArrayLike | None,
    kernel: Kernel | ArrayLike,
    *,
    mode: str = "normalized",
    min_weight: float = DEFAULT_MIN_WEIGHT,
    fill: float | None = np.nan,
    path: str = "auto",
) -> tuple[np.ndarray, np.ndarray]:
    """Masked filtering in one of three normalization modes, with the updated validity.

    ``"normalized"``
        :func:`masked_convolve` (the mask-convolution paper; signed kernels split into parts).
        Validity: the certainty ``(M conv |K|) / sum(|K|)``.
    ``"partial"``
        Partial convolution (Kang et al., eq. 1-2): ``((P*M) conv K) * sum(1) / sum(M)``
        with the sums over the kernel's window; binary update: 1 where the
        window holds any valid pixel.
    ``"weighted"``
        Weighted convolution (Kang et al., eq. 1 and 3): the same output with a
        real-valued mask, and the real-valued update ``n = sum(M) / sum(1)``.

    Parameters
    ----------
    image : (H, W) or (H, W, C) array_like
    mask : (H, W) bool or float array_like
        The valid pixels (or their weights in ``[0, 1]``).
    kernel : Kernel or array_like
    mode : {"normalized", "partial", "weighted"}
    min_weight : float
        Certainty below which an output pixel is ``fill``.
    fill : float or None
        Value where no valid pixel is in the window (default NaN; None: 0).
    path : {"auto", "box", "pyramid", "separable", "filter2d"}
        The OpenCV path (``auto`` picks the fastest the kernel allows).

    Returns
    -------
    result : float32 ndarray, shape of ``image``
        ``fill`` where no valid pixel is in the window (or below ``min_weight``).
    validity : (H, W) float32 ndarray in [0, 1]
        The updated mask, to chain filters: pass it as the next ``mask``.

    Examples
    --------
    The outside (0) never enters the mean; a window with no valid pixel is ``fill``:

    >>> import numpy as np
    >>> from retina_prep import box_kernel, masked_filter
    >>> mask = np.zeros((5, 5), bool); mask[:, :3] = True
    >>> image = np.where(mask, 100.0, 0.0)
    >>> result, validity = masked_filter(image, mask, box_kernel(3))
    >>> result[2].tolist(), [round(float(v), 2) for v in validity[2]]
    ([100.0, 100.0, 100.0, 100.0, nan], [0.67, 1.0, 0.67, 0.33, 0.0])
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
    if mode == "normalized":
        return masked_convolve(image, mask, kernel, min_weight=min_weight, fill=fill, path=path,
                               return_weights=True)
    k = as_kernel(kernel)
    img = _as_float_image(image)
    shape = img.shape[:2]
    if mask is not None:
        mask = as_mask(mask, shape)
    img, mask = _drop_nonfinite(img, mask)
    m = np.ones(shape, np.float32) if mask is None else _as_weights(mask, shape)
    if mode == "partial":
        m = (m > 0).astype(np.float32)
    weighted = img * (m[..., None] if img.ndim == 3 else m)
    num = _filter(weighted, k, _pick_path(k, path))
    window = Kernel(np.ones(k.shape), name="window", is_box=True,
                    factors=(np.ones(k.shape[0]), np.ones(k.shape[1])))
    ratio = _weights(m, window, "box")  # sum(M) / sum(1), in [0, 1]
    undefined = ratio < max(min_weight, 1e-7)
    safe = np.where(undefined, np.float32(1.0), ratio)
    num /= safe[..., None] if num.ndim == 3 else safe
    num[undefined] = fill
    if mode == "partial":
        validity = (~undefined).astype(np.float32)
    else:
        validity = np.where(undefined, np.float32(0.0), ratio)
    return num, validity
