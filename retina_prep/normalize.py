"""Local illumination normalization (IN) of fundus images (the mask-convolution paper, eq. 8-9).

``IN(I) = I - masked_local_mean(I) + I0``, channel by channel, with the local
mean taken over field-of-view pixels only (masked convolution).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import cv2
import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from .convolution import (
    _drop_pixels,
    _mean_divisor,
    _mean_parts,
    _MeanParts,
    _strips,
    as_mask,
    as_native,
    check_layout,
    dtype_scale,
    finite_pixels,
    masked_convolve,
    set_where,
)
from .errors import ValueRangeError
from .first_order import DEFAULT_RIDGE, PlaneGeometry, apply_plane, plane_geometry
from .kernels import (  # noqa: F401 (the kernel rule, where it always was)
    AUTO_SIGMA_FRACTION,
    AUTO_WINDOW_FRACTION,
    KERNELS,
    Kernel,
    as_kernel,
    check_kernel_args,
    make_kernel,
    resolve_window,
)

__all__ = [
    "METHODS",
    "ORDERS",
    "DEFAULT_SCALE",
    "DEFAULT_STD_FLOOR",
    "KERNELS",
    "AUTO_WINDOW_FRACTION",
    "DEFAULT_TARGET",
    "resolve_window",
    "make_kernel",
    "check_kernel_args",
    "local_mean",
    "normalize_illumination",
    "PreparedMask",
    "prepare_mask",
    "dtype_scale",
    "image_range",
    "parse_value_range",
]

#: Orders of normalized convolution: 0 the local mean, 1 the local plane (see normalize_illumination).
ORDERS = (0, 1)

#: Normalization methods: subtract the local mean, or standardize by the local std too.
METHODS = ("mean", "standardize")

#: ``method="standardize"``: one local standard deviation becomes this many gray levels (8-bit units).
DEFAULT_SCALE = 32.0

#: ``method="standardize"``: the local standard deviation is floored at this (8-bit units).
DEFAULT_STD_FLOOR = 2.0

#: Default target level I0, in 8-bit units.
DEFAULT_TARGET = 128.0



def parse_value_range(value: str | tuple | list) -> tuple[float, float]:
    """``(lo, hi)`` from two numbers (a pair, or the text ``"lo,hi"``): finite, ``lo < hi``."""
    parts = value.split(",") if isinstance(value, str) else value
    try:
        lo, hi = (float(v) for v in parts)
    except (TypeError, ValueError):
        raise ValueError(f"value_range must be two numbers (lo, hi), got {value!r}") from None
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise ValueError(f"value_range must be finite with lo < hi, got {value!r}")
    return lo, hi


def image_range(image: ArrayLike, value_range: tuple[float, float] | None = None
                ) -> tuple[float, float]:
    """The value range ``(lo, hi)`` that 8-bit units are scaled to for ``image``.

    Without ``value_range``: uint8 ``(0, 255)``, uint16 ``(0, 65535)``, float
    ``(0, 1)`` -- and then a float image's finite values must lie in
    ``[0, 1]``; other dtypes (signed or 32/64-bit integers) need an explicit
    range. With ``value_range=(lo, hi)`` any numeric image is accepted and
    its values are taken to span ``lo..hi`` (e.g. ``(0, 255)`` for a float
    image converted from 8 bits, ``(0, 4095)`` for 12-bit data in uint16).

    Parameters
    ----------
    image : ndarray
    value_range : (lo, hi), optional

    Returns
    -------
    (lo, hi) : tuple of float

    Raises
    ------
    ValueRangeError
        A float image outside ``[0, 1]`` or a dtype without a natural range, and no
        ``value_range``.

    Examples
    --------
    >>> import numpy as np
    >>> image_range(np.zeros((2, 2), np.uint16))
    (0.0, 65535.0)
    """
    img = as_native(image)
    dt = img.dtype
    if value_range is not None:
        lo, hi = parse_value_range(value_range)
        if np.issubdtype(dt, np.integer):
            info = np.iinfo(dt)
            if lo < info.min or hi > info.max:
                raise ValueRangeError(f"value range {lo:g},{hi:g} does not fit {dt} images"
                                      f" ({info.min}..{info.max})")
        finite = img if finite_pixels(img) is None else img[np.isfinite(img)]
        if finite.size:
            mn, mx = float(finite.min()), float(finite.max())
            slack = 1e-6 * (hi - lo)
            if mn < lo - slack or mx > hi + slack:
                raise ValueRangeError(f"image values span {mn:g}..{mx:g}, outside the value range"
                                      f" {lo:g},{hi:g}; give the range the data has")
        return lo, hi
    if dt == np.uint8:
        return 0.0, 255.0
    if dt == np.uint16:
        return 0.0, 65535.0
    if np.issubdtype(dt, np.floating):
        finite = img if finite_pixels(img) is None else img[np.isfinite(img)]
        if finite.size and (float(finite.min()) < 0.0 or float(finite.max()) > 1.0):
            raise ValueRangeError(
                f"float image values span {float(finite.min()):g}..{float(finite.max()):g}, outside"
                " [0, 1]", code="float-range",
                advice="say what range they have, e.g. value_range=(0, 255)",
                low=float(finite.min()), high=float(finite.max()))
        return 0.0, 1.0
    raise ValueRangeError(f"{dt} images need an explicit value range", code="dtype-range",
                          advice="give value_range=(lo, hi), or convert the image to uint8,"
                          " uint16 or float in [0, 1]", dtype=str(dt))


def _dtype_range(dtype: DTypeLike) -> tuple[float, float]:
    dt = np.dtype(dtype)
    if dt == np.bool_:
        raise ValueError("cannot normalize into a boolean image")
    if np.issubdtype(dt, np.integer):
        info = np.iinfo(dt)
        return float(info.min), float(info.max)
    return 0.0, 1.0


@dataclass(frozen=True, eq=False)
class PreparedMask:
    """A field-of-view mask with everything :func:`normalize_illumination` derives from the mask
    alone, computed once (see :func:`prepare_mask`): pass it as the ``mask`` of many images.

    Attributes
    ----------
    mask : (H, W) bool or float32 ndarray
    kernel : Kernel
    order : {0, 1}
    ridge : float
    inverse : (H, W) float32 ndarray
        ``sum(K) / (M conv K)``: the local mean's divisor.
    plane : PlaneGeometry or None
        The margin band's plane coefficients (``order=1``).
    """

    mask: np.ndarray = field(repr=False)
    kernel: Kernel
    order: int
    ridge: float
    inverse: np.ndarray = field(repr=False)  # sum(K) / (M conv K): the local mean's divisor
    plane: PlaneGeometry | None = field(repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        return self.mask.shape


def prepare_mask(mask: ArrayLike, *, window: int | str | None = None,
                 kernel: Kernel | None = None, order: int = 0,
                 ridge: float = DEFAULT_RIDGE) -> PreparedMask:
    """Compute the mask's part of :func:`normalize_illumination` once, for images sharing a mask.

    ``normalize_illumination(image, prepare_mask(mask, window=41, order=1), order=1)`` equals
    ``normalize_illumination(image, mask, window=41, order=1)`` but skips the mask's filters
    (and, for ``order=1``, the margin band's plane geometry), which are most of the cost of
    first-order normalization. ``window``/``kernel`` and ``ridge`` as for
    :func:`normalize_illumination`; ``order=1`` prepares both orders.

    Parameters
    ----------
    mask : (H, W) bool or float array_like
    window : int or "auto", optional
    kernel : Kernel, optional
    order : {0, 1}
    ridge : float

    Returns
    -------
    PreparedMask
        Pass it as ``mask`` to :func:`normalize_illumination`.

    Examples
    --------
    One mask, many images (a camera's fixed field of view):

    >>> import numpy as np
    >>> from retina_prep import normalize_illumination, prepare_mask
    >>> from retina_prep.synthetic import synthetic_fundus
    >>> s = synthetic_fundus((64, 64), seed=0)
    >>> prepared = prepare_mask(s.mask, window=15)
    >>> np.array_equal(normalize_illumination(s.image, prepared),
    ...                normalize_illumination(s.image, s.mask, window=15))
    True
    """
    m = as_mask(mask)
    if not m.any():
        raise ValueError("the mask is empty: no pixel inside the field of view")
    if kernel is not None and window is not None:
        raise ValueError("give window or kernel, not both")
    if order not in ORDERS:
        raise ValueError(f"order must be 0 or 1, got {order!r}")
    k = make_kernel("mean", window, None, mask=m) if kernel is None else as_kernel(kernel)
    if not k.is_nonnegative:
        raise ValueError("a prepared mask needs a non-negative local-mean kernel")
    inverse, weights = _mean_divisor(m, k)
    plane = plane_geometry(m, k, weights, ridge=ridge, where=m > 0) if order == 1 else None
    return PreparedMask(mask=m, kernel=k, order=order, ridge=float(ridge), inverse=inverse,
                        plane=plane)


def local_mean(image: ArrayLike, mask: ArrayLike | None, *, kernel: Kernel,
               ignore_mask: bool = False, fill: float | None = np.nan
               ) -> tuple[np.ndarray, np.ndarray]:
    """Masked local mean of ``image`` and its weight map.

    With ``ignore_mask=True`` the mask is not used: the mean is a plain
    convolution over the whole image (the mask-convolution paper's "IN
    without mask"). ``fill`` is the value where no valid pixel is in the
    window (see :func:`~retina_prep.core.masked_convolve`). Returns
    ``(mean, weights)`` as float32 arrays.
    """
    m = None if ignore_mask else mask
    return masked_convolve(image, m, kernel, return_weights=True, fill=fill)


def normalize_illumination(
    image: ArrayLike,
    mask: ArrayLike | PreparedMask | None,
    *,
    window: int | str | None = None,
    kernel: Kernel | None = None,
    target: float = DEFAULT_TARGET,
    fill: float = 0.0,
    ignore_mask: bool = False,
    value_range: tuple[float, float] | None = None,
    output_dtype: DTypeLike | None = None,
    method: str = "mean",
    scale: float = DEFAULT_SCALE,
    std_floor: float = DEFAULT_STD_FLOOR,
    order: int = 0,
    ridge: float = DEFAULT_RIDGE,
    gain: float = 1.0,
) -> np.ndarray:
    """Local illumination normalization ``I - masked_local_mean(I) + I0``.

    With ``method="standardize"``, masked local standardization (the
    weighted-mask convolution paper, eq. 4-7): ``I0 + scale * (I - mu_M) /
    max(sigma_M, std_floor)``, with ``mu_M`` and ``sigma_M`` the
    mask-weighted local mean and standard deviation over the same window,
    ``sigma_M**2 = E_M(I**2) - mu_M**2`` (the simplified variance of eq. 6-7).

    Parameters
    ----------
    image : (H, W) or (H, W, C) ndarray
        uint8, uint16, or float in [0, 1]; other ranges and dtypes with
        ``value_range``. Not modified. With 4 channels the last is alpha:
        copied through unchanged. Non-finite pixels (NaN, inf) of a float
        image count as outside the field of view: they get ``fill`` and do
        not enter any local mean.
    mask : (H, W) ndarray, PreparedMask or None
        Field of view: bool, 0/1 or 0/255 integers, or float weights in
        [0, 1] (see :func:`~retina_prep.core.as_mask`). ``None``: the whole
        image. An empty mask raises ``ValueError``. A :class:`PreparedMask`
        (from :func:`prepare_mask`) carries its kernel and the terms derived
        from the mask alone, for many images that share one mask.
    window : int or "auto", optional
        Box size in pixels (odd), or ``"auto"`` (a fraction of the FOV
        diameter, the default). Give ``window`` or ``kernel``, not both.
    kernel : Kernel, optional
        Local-mean kernel, e.g. ``make_kernel("gaussian", 51)``.
    target : float
        I0 in 8-bit units, scaled to the value range (128 -> 32896 for
        uint16, 0.502 for float).
    fill : float
        Output value outside the field of view, in 8-bit units (scaled too).
    ignore_mask : bool
        Compute the local mean by plain convolution over the whole image
        (the halo-prone "IN without mask"). The output is still cut to the FOV.
    value_range : (lo, hi), optional
        The values the image spans (see :func:`image_range`); the output
        keeps it when ``output_dtype`` is not given.
    output_dtype : dtype, optional
        Defaults to the input dtype (and range). Another dtype gets its
        natural range (uint8 0..255, uint16 0..65535, float 0..1). The
        result is clipped to the output range.
    method : {"mean", "standardize"}
    scale, std_floor : float
        For ``standardize``, in 8-bit units (scaled like ``target``).
    order : {0, 1}
        0: the local mean (zero-order normalized convolution). 1: the value
        at the pixel of the plane fitted to its masked window (first-order
        normalized convolution, :func:`~retina_prep.core.masked_plane_mean`):
        no one-sided overshoot on a gradient at the FOV margin, so larger
        windows keep the margin flat. Use it with a trimmed mask (rim
        removed): a plane extrapolates a dark rim inward.
    ridge : float
        For ``order=1``: how strongly thin windows' slopes are damped.
    gain : float
        For ``method="mean"``: ``I0 + gain * (I - mean)``. Ben Graham's preprocessing is
        ``gain=4`` with a Gaussian of sigma R / 30 (``make_kernel("gaussian", sigma="auto",
        mask=mask)``), here through masked convolution.

    Returns
    -------
    ndarray, shape of ``image``, dtype ``output_dtype``

    Notes
    -----
    Channels are normalized independently with the same kernel and mask.
    Integer outputs are rounded to the nearest integer. In formulas, with ``K`` the kernel,
    ``M`` the mask and ``I0 = target``:

        mean = ((I M) conv K) / (M conv K),    out = I0 + gain * (I - mean)

    (the mask-convolution paper, eq. 5-6 and 8-9); ``order=1`` replaces the mean by the
    plane fitted to each window.

    Examples
    --------
    >>> import numpy as np
    >>> from retina_prep.synthetic import synthetic_fundus
    >>> s = synthetic_fundus((200, 210), seed=1)
    >>> out = normalize_illumination(s.image, s.mask, window=21)
    >>> inside = out[s.mask]
    >>> bool(abs(float(np.median(inside)) - 128) < 6), int(out[~s.mask].max())
    (True, 0)
    """
    for name, value in (("target", target), ("fill", fill)):
        if not (isinstance(value, (int, float, np.number)) and math.isfinite(value)
                and 0 <= value <= 255):
            raise ValueError(f"{name} must be a level from 0 to 255 (8-bit units, scaled to the"
                             f" image's range), got {value!r}")
    img = as_native(image)
    if img.ndim == 3 and img.shape[2] in (1, 4):
        again = functools.partial(
            normalize_illumination, mask=mask, window=window, kernel=kernel, target=target,
            fill=fill, ignore_mask=ignore_mask, value_range=value_range,
            output_dtype=output_dtype, method=method, scale=scale, std_floor=std_floor,
            order=order, ridge=ridge, gain=gain)
        if img.shape[2] == 1:  # OpenCV drops singleton channels: 2-D and back
            return again(img[..., 0])[..., None]
        rgb = again(img[..., :3])  # RGBA: alpha is not image data
        return np.dstack([rgb, img[..., 3:].astype(rgb.dtype, copy=False)])
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; valid methods: {', '.join(METHODS)}")
    if order not in ORDERS:
        raise ValueError(f"order must be 0 or 1, got {order!r}")
    if order == 1 and method != "mean":
        raise ValueError("order 1 applies to method 'mean' only")
    if not (isinstance(gain, (int, float, np.number)) and math.isfinite(gain) and gain > 0):
        raise ValueError(f"gain must be a positive number, got {gain!r}")
    if gain != 1 and method != "mean":
        raise ValueError("gain applies to method 'mean' only (standardize has scale)")
    check_layout(img)
    prepared = None
    if isinstance(mask, PreparedMask):
        prepared, mask = mask, mask.mask
        if kernel is not None or window is not None:
            raise ValueError("a prepared mask carries its kernel: give window or kernel to"
                             " prepare_mask, not here")
        kernel = prepared.kernel
    if mask is not None:
        mask = as_mask(mask, img.shape[:2])
        if not mask.any():
            raise ValueError("the mask is empty: no pixel inside the field of view")
    if kernel is not None and window is not None:
        raise ValueError("give window or kernel, not both")
    if kernel is None:
        # mask None is the whole image: "auto" is then a fraction of the image's own size
        kernel = make_kernel("mean", window,
                             mask=mask if mask is not None else np.ones(img.shape[:2], bool))
    in_lo, in_hi = image_range(img, value_range)
    if output_dtype is None:
        out_dtype, (out_lo, out_hi) = img.dtype, (in_lo, in_hi)
        if not (np.issubdtype(out_dtype, np.integer) or np.issubdtype(out_dtype, np.floating)):
            out_dtype = np.dtype(np.float32)
    else:
        out_dtype = np.dtype(output_dtype)
        out_lo, out_hi = _dtype_range(out_dtype)
    in_scale = (in_hi - in_lo) / 255.0
    out_scale = (out_hi - out_lo) / 255.0

    # pixels with no valid neighbour lie outside the FOV and are overwritten below
    finite = finite_pixels(img)
    inside = None if mask is None else (mask if mask.dtype == np.bool_ else mask > 0)
    if finite is not None:
        inside = finite if inside is None else inside & finite
    src, m = _drop_pixels(img, None if ignore_mask else mask, finite)
    if prepared is not None and finite is None and not ignore_mask:
        parts, _ = _mean_parts(src, m, prepared.kernel, inverse=prepared.inverse,
                               keep_weighted=order == 1)
        weights = None  # the plane was prepared, or plane_geometry computes them
    else:
        prepared = None
        parts, weights = _mean_parts(src, m, as_kernel(kernel), want_weights=order == 1,
                                     keep_weighted=order == 1)
    if order == 1:  # the plane differs from the mean in the margin band only; outside is filled
        mean = parts.mean()
        if prepared is not None and prepared.plane is not None and prepared.ridge == ridge:
            geometry = prepared.plane
        else:
            geometry = plane_geometry(m, kernel, weights, ridge=ridge, where=inside)
        apply_plane(src, m, mean, geometry, parts.weighted)
        parts = _MeanParts(mean)
    natural = (in_lo, in_hi) == _dtype_range(img.dtype)
    if (method == "mean" and out_dtype == img.dtype and img.dtype in (np.uint8, np.uint16)
            and natural and (out_lo, out_hi) == (in_lo, in_hi)):
        # fast path: strip by strip (a strip's arrays stay in the CPU cache), divide for the
        # mean, then one OpenCV pass computes I - mean + I0, rounds and saturates
        out = np.empty_like(img)
        level = float(target * in_scale)
        depth = cv2.CV_8U if img.dtype == np.uint8 else cv2.CV_16U
        value = float(np.clip(round(fill * out_scale), out_lo, out_hi))
        keep = None if inside is None else inside.view(np.uint8)
        for rows in _strips(*img.shape[:2]):
            part, factor = parts.pending(rows)  # mean = part * factor, applied by addWeighted
            o = cv2.addWeighted(img[rows], float(gain), part, -factor * float(gain), level,
                                dtype=depth)
            if keep is not None:  # the outside gets the fill value
                o = cv2.bitwise_and(o, o, mask=keep[rows])
                if value != 0:
                    o = set_where(o, keep[rows] == 0, value)
            out[rows] = o.reshape(out[rows].shape)
        return out
    mean = parts.mean()
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
        if gain != 1:
            out *= np.float32(gain)
    # out is a deviation in input units: to 8-bit units, then to the output range
    if out_scale != in_scale:
        out *= np.float32(out_scale / in_scale)
    out += np.float32(out_lo + target * out_scale)
    np.clip(out, out_lo, out_hi, out=out)
    if inside is not None:
        out[~inside] = np.clip(out_lo + fill * out_scale, out_lo, out_hi)
    if np.issubdtype(out_dtype, np.integer):
        np.rint(out, out=out)
    return out.astype(out_dtype, copy=False)
