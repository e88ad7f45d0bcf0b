"""First-order normalized convolution (Knutsson & Westin 1993): the plane fitted to each
pixel's masked window, evaluated at the pixel (:func:`masked_plane_mean`), and its parts for
many images sharing one mask (:func:`plane_geometry`, :func:`apply_plane`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import cv2
import numpy as np
from numpy.typing import ArrayLike, DTypeLike

from .convolution import (
    DEFAULT_MIN_WEIGHT,
    _as_float_image,
    _binary_u8,
    _drop_nonfinite,
    _filter,
    _masked_input,
    _pick_path,
    _raw_total,
    _replicate,
    _weights,
    as_mask,
    masked_convolve,
    set_where,
)
from .kernels import Kernel, as_kernel

__all__ = ["masked_plane_mean", "plane_geometry", "apply_plane", "PlaneGeometry", "DEFAULT_RIDGE"]

#: Default ridge of :func:`masked_plane_mean`, relative to the full window's variance.
DEFAULT_RIDGE = 0.1


def _axis_variances(k: Kernel) -> tuple[float, float]:
    """The kernel's variance of the offset from its centre along x and along y."""
    a = np.asarray(k.array, np.float64)
    dy = np.arange(a.shape[0]) - a.shape[0] // 2
    dx = np.arange(a.shape[1]) - a.shape[1] // 2
    total = a.sum()
    return (float((a.sum(axis=0) * dx * dx).sum() / total),
            float((a.sum(axis=1) * dy * dy).sum() / total))


def masked_plane_mean(
    image: ArrayLike,
    mask: ArrayLike | None,
    kernel: Kernel | ArrayLike,
    *,
    ridge: float = DEFAULT_RIDGE,
    min_weight: float = DEFAULT_MIN_WEIGHT,
    fill: float | None = np.nan,
    return_weights: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """First-order normalized convolution: the value at each pixel of the plane fitted to the
    valid pixels of its window (Knutsson & Westin 1993).

    In every window a plane ``a + b*u + c*v`` (``u, v`` offsets from the
    window centre) is fitted by weighted least squares, with weight
    ``K(u, v) * M``; the result is ``a``, the plane at the centre. Where the
    window is full it equals the zero-order masked mean exactly (the
    offsets' mean is 0); on a linear ramp it is exact everywhere, so the
    one-sided windows at the FOV margin no longer overshoot on a gradient.

    The slope is ``(C + ridge * s2 * I)^-1 (cov(u, I), cov(v, I))`` with
    ``C`` the weighted covariance of the offsets in the window and ``s2``
    the full window's variance per axis: the ridge keeps thin or nearly
    collinear windows (1-px spurs, corners) from extrapolating wildly; with
    ``ridge=0`` a singular window falls back to the zero-order mean.

    Parameters
    ----------
    image, mask : as for :func:`masked_convolve` (non-finite pixels invalid)
    kernel : Kernel
        Non-negative and symmetric (box, Gaussian, or any other); box,
        pyramid and separable kernels run on their fast paths.
    ridge : float >= 0
    min_weight, fill : as for :func:`masked_convolve`
    return_weights : bool
        Also return ``(M conv K) / sum(K)``.

    Returns
    -------
    float32 ndarray, shape of ``image`` (and the (H, W) weights).

    Notes
    -----
    The result is the zero-order mean (:func:`masked_convolve`) plus a
    correction ``b * (x_p - x_c) + c * (y_p - y_c)`` (``x_c, y_c`` the
    window's centroid), which is zero wherever the window is complete. The
    correction is computed only in the margin band (pixels whose window is
    incomplete; with a weight mask, every pixel), on small blocks of rows
    that cover it, padded by the kernel's radius, with block-local integer
    coordinates: the moments ``x M, y M, x^2 M, x y M, y^2 M`` and, per
    channel, ``x I M, y I M``. With a box kernel and a binary mask the
    mask's window sums are exact int32 sums, and so are the image's for
    8-bit data (while they fit in int32); otherwise float32 (the mask terms
    in float64 when ``ridge < 0.01``, so that collinear windows are told
    from thin ones). The covariances are
    formed at the band's pixels only. The error is far below a gray level --
    tested against a float64 fit at the far corner of a 4000 px image. See
    :func:`prepare_mask` to compute the mask's part once for many images.
    """
    k = as_kernel(kernel)
    _check_plane_args(k, ridge)
    img = _as_float_image(image)
    m = None if mask is None else as_mask(mask, img.shape[:2])
    img, m = _drop_nonfinite(img, m)
    mean, weights = masked_convolve(img, m, k, min_weight=min_weight, fill=None,
                                    return_weights=True)
    geometry = plane_geometry(m, k, weights, ridge=ridge, min_weight=min_weight)
    apply_plane(img, m, mean, geometry)
    if fill is not None:
        mean = set_where(mean, weights < min_weight, fill)
    return (mean, weights) if return_weights else mean


def _check_plane_args(k: Kernel, ridge: float) -> None:
    if not k.is_nonnegative:
        raise ValueError("first-order normalization needs a non-negative kernel")
    if not k.is_symmetric:
        raise ValueError(f"first-order normalization needs a symmetric kernel ({k.name})")
    if not (math.isfinite(ridge) and ridge >= 0):
        raise ValueError(f"ridge must be a number >= 0, got {ridge!r}")


#: A window counts as complete (no first-order correction) above this normalized weight.
_COMPLETE = 1.0 - 1e-6


#: Blocks of the margin band: strips of ``_STEP`` kernel radii of rows, at most ``_CAP`` radii
#: wide. Small blocks keep every array of a block in the CPU cache, which matters more than
#: the padding they add (measured: one block for a whole DRIVE image ran 3x slower).
_STEP, _CAP = 4, 8


def _band_blocks(band: np.ndarray, ry: int, rx: int, one_block: bool = False
                 ) -> Iterator[tuple[int, int, int, int]]:
    """Rectangles ``(y0, y1, x0, x1)`` that together cover every True pixel of ``band``: one
    strip of rows at a time, split at column gaps wider than the kernel and capped in width
    (so block-local coordinates stay small), each cut to the rows it needs; or with
    ``one_block`` (or an image within a few kernel radii) the band's bounding box."""
    h, w = band.shape
    rows: np.ndarray = np.asarray(band.any(axis=1))
    if one_block or max(h, w) <= 8 * max(rx, ry):
        xs_used = np.flatnonzero(band.any(axis=0))
        ys_used = np.flatnonzero(rows)
        if ys_used.size:
            yield int(ys_used[0]), int(ys_used[-1]) + 1, int(xs_used[0]), int(xs_used[-1]) + 1
        return
    step = max(16, _STEP * ry)
    cap = max(32, _CAP * rx)
    for y0 in range(0, h, step):
        y1 = min(y0 + step, h)
        if not rows[y0:y1].any():
            continue
        cols = band[y0:y1].any(axis=0).view(np.int8)
        edges = np.diff(np.concatenate(([0], cols, [0])))
        runs: list[list[int]] = []
        for s, e in zip(np.flatnonzero(edges == 1).tolist(), np.flatnonzero(edges == -1).tolist()):
            if runs and s - runs[-1][1] <= 2 * rx:
                runs[-1][1] = e
            else:
                runs.append([s, e])
        for s, e in runs:
            for x0 in range(s, e, cap):
                x1 = min(x0 + cap, e)
                used = np.flatnonzero(band[y0:y1, x0:x1].any(axis=1))
                if used.size:
                    yield y0 + int(used[0]), y0 + int(used[-1]) + 1, x0, x1


@dataclass(frozen=True)
class PlaneGeometry:
    """The mask-only part of :func:`masked_plane_mean` for one mask and kernel: per block of the
    margin band, where its pixels are and the plane's coefficients ``(c0, cx, cy)`` with
    ``plane = c0 * mean + cx * B(x I M) + cy * B(y I M)`` (block-local x, y)."""

    kernel: Kernel
    ridge: float
    blocks: tuple = field(repr=False)
    # the coefficients replicated to C channels, per C, and the blocks' coordinates per C and
    # dtype: for a geometry applied to many images
    _replicas: dict = field(default_factory=dict, repr=False, compare=False)
    _coords: dict = field(default_factory=dict, repr=False, compare=False)

    @property
    def pixels(self) -> int:
        """How many pixels get a first-order correction."""
        return sum(b[2] for b in self.blocks)

    def coefficients(self, i: int, c: int) -> list:
        """Block ``i``'s ``(c0, cx, cy)`` as C-channel maps for OpenCV (None beyond 4
        channels). All blocks' are kept for the next image when they take at most
        :data:`_REPLICA_BYTES`; else each block's are made when asked (one block's at a time)."""
        if c not in self._replicas:  # decided once per channel count: kept, or False
            small = c > 1 and sum(b[3].nbytes for b in self.blocks) * c <= _REPLICA_BYTES
            self._replicas[c] = small and [[_replicate(a, c) for a in b[3]] for b in self.blocks]
        kept = self._replicas[c]
        return kept[i] if kept else [_replicate(a, c) for a in self.blocks[i][3]]


    def coordinates(self, i: int, c: int, ctype: DTypeLike) -> tuple[np.ndarray, np.ndarray]:
        """Block ``i``'s x offsets repeated for ``c`` channels (a row, for the ``(rows, columns
        * channels)`` layout) and y offsets (a column), as ``ctype``."""
        key = (i, c, np.dtype(ctype).char)
        got = self._coords.get(key)
        if got is None:
            _, (Y0, Y1, X0, X1), _, _ = self.blocks[i]
            got = (np.repeat(_block_coords(X0, X1), c).astype(ctype)[None, :],
                   _block_coords(Y0, Y1).astype(ctype)[:, None])
            self._coords[key] = got
        return got


#: The largest replicated coefficients a PlaneGeometry keeps (a prepared mask's, reused).
_REPLICA_BYTES = 32 << 20


def plane_geometry(mask: ArrayLike | None, kernel: Kernel | ArrayLike,
                   weights: np.ndarray | None = None, *, ridge: float = DEFAULT_RIDGE,
                   min_weight: float = DEFAULT_MIN_WEIGHT,
                   where: np.ndarray | None = None) -> PlaneGeometry:
    """The mask's part of first-order normalized convolution (see :func:`masked_plane_mean`).

    ``mask`` as accepted by :func:`as_mask` (None: every pixel valid, but then
    ``weights`` gives the shape); ``weights`` the certainty ``(M conv K) /
    sum(K)`` when already computed; ``where`` an optional (H, W) bool map of
    the pixels whose result is wanted (e.g. the inside of the FOV).
    """
    k = as_kernel(kernel)
    _check_plane_args(k, ridge)
    path = _pick_path(k, "auto")
    if mask is None:
        if weights is None:
            raise ValueError("plane_geometry needs a mask or the weights map")
        m = None
        shape = weights.shape[:2]
    else:
        m = as_mask(mask)
        shape = m.shape
    binary = None if m is None else _binary_u8(m)
    if weights is None:
        if m is None:
            weights = _weights(np.ones(shape, np.uint8), k, path)
        else:
            weights = _weights(m if binary is None else binary, k, path)
    band = weights >= min_weight
    if m is None or m.dtype == np.bool_:
        band &= weights < _COMPLETE
    if where is not None:
        band &= where
    ry, rx = k.shape[0] // 2, k.shape[1] // 2
    s2x, s2y = _axis_variances(k)
    # float32 keeps the window covariances to about 1e-7 of the squared block coordinates: far
    # below the ridge's floor (ridge * s2); without a ridge, singular windows must be told
    # from merely thin ones, which takes float64
    ftype = np.float32 if ridge >= _FLOAT32_RIDGE else np.float64
    depth = cv2.CV_64F if ftype == np.float64 else cv2.CV_32F
    raw = _raw_total(k, path)
    blocks = []
    for y0, y1, x0, x1 in _band_blocks(band, ry, rx):
        Y0, Y1, X0, X1 = _padded(y0, y1, x0, x1, k, shape)
        inner = (slice(y0 - Y0, y1 - Y0), slice(x0 - X0, x1 - X0))
        xs, ys = _block_coords(X0, X1), _block_coords(Y0, Y1)
        if m is None:
            mb = np.ones((Y1 - Y0, X1 - X0), np.uint8)
        else:
            mb = (binary if binary is not None else m)[Y0:Y1, X0:X1]
        # window sums of x^a y^b M: exact integers for a binary mask and a box kernel
        exact = (path == "box" and (m is None or binary is not None)
                 and _fits_int32(_reach(Y0, Y1, X0, X1) ** 2 * raw))
        ctype = np.int32 if exact else ftype
        sub = band[y0:y1, x0:x1]

        def moment(a: np.ndarray, inner: tuple[slice, slice] = inner,
                   sub: np.ndarray = sub) -> np.ndarray:  # the window sums at the block's band pixels
            return _filter(a, k, path, depth, raw=True)[inner][sub].astype(ftype, copy=False)

        xr, yc = xs.astype(ctype)[None, :], ys.astype(ctype)[:, None]
        xm, ym = np.multiply(mb, xr, dtype=ctype), np.multiply(mb, yc, dtype=ctype)
        if ftype == np.float32:  # the certainty map has it, to float32 rounding
            m0 = weights[y0:y1, x0:x1][sub] * ftype(raw)
        else:  # summed like the other moments, so that a one-pixel window is exactly singular
            m0 = moment(mb.astype(ctype))
        sx, sy = moment(xm), moment(ym)
        sxx, sxy, syy = moment(xm * xr), moment(xm * yc), moment(ym * yc)
        mx, my = sx / m0, sy / m0  # the window's centroid
        cxx = sxx / m0 - mx * mx + ftype(ridge * s2x)
        cxy = sxy / m0 - mx * my
        cyy = syy / m0 - my * my + ftype(ridge * s2y)
        det = cxx * cyy - cxy * cxy
        singular = det <= 1e-6 * max(s2x, 1.0) * max(s2y, 1.0)
        inv = np.where(singular, 0, 1 / np.where(singular, 1, det)).astype(ftype, copy=False)
        py, px = np.nonzero(sub)
        dx = xs[px + (x0 - X0)].astype(ftype) - mx  # from the window's centroid to the pixel
        dy = ys[py + (y0 - Y0)].astype(ftype) - my
        p = (cyy * dx - cxy * dy) * inv
        q = (cxx * dy - cxy * dx) * inv
        # plane = mean + p * (Sx/m0 - mx mean) + q * (Sy/m0 - my mean), with Sx = B(x I M):
        # dense maps over the block (identity where the pixel is not in the band)
        coef = np.zeros((3, y1 - y0, x1 - x0), np.float32)
        coef[0] = 1.0
        coef[0][sub] = 1 - p * mx - q * my
        coef[1][sub] = p / m0
        coef[2][sub] = q / m0
        blocks.append(((y0, y1, x0, x1), (Y0, Y1, X0, X1), len(px), coef))
    return PlaneGeometry(kernel=k, ridge=float(ridge), blocks=tuple(blocks))


#: From this ridge on, :func:`plane_geometry` computes the window covariances in float32.
_FLOAT32_RIDGE = 1e-2

_INT32_MAX = 2**31 - 1


def _padded(y0: int, y1: int, x0: int, x1: int, k: Kernel, shape: tuple[int, int]
            ) -> tuple[int, int, int, int]:
    """The rectangle that the window sums on ``(y0:y1, x0:x1)`` need: padded by the kernel's
    radius, and for the pyramid path by 4 cells more with its origin on the cell grid, so that
    a block's cells are the whole image's and its sums the same."""
    h, w = shape
    ry, rx = k.shape[0] // 2, k.shape[1] // 2
    if k.pyramid is None:
        return max(y0 - ry, 0), min(y1 + ry, h), max(x0 - rx, 0), min(x1 + rx, w)
    d = k.pyramid[0]
    ry, rx = ry + 4 * d, rx + 4 * d
    return max(y0 - ry, 0) // d * d, min(y1 + ry, h), max(x0 - rx, 0) // d * d, min(x1 + rx, w)


def _fits_int32(bound: float) -> bool:
    return bound < _INT32_MAX


def _reach(Y0: int, Y1: int, X0: int, X1: int) -> int:
    """The largest ``|coordinate|`` in a block (see :func:`_block_coords`), at least 1: what
    bounds its window sums for the int32 paths."""
    return max((X1 - X0) // 2, (Y1 - Y0) // 2, 1)


def _block_coords(lo: int, hi: int) -> np.ndarray:
    """Integer coordinates of pixels ``lo..hi-1`` measured from the block's middle pixel."""
    return np.arange(lo, hi, dtype=np.int64) - (lo + (hi - lo) // 2)


def _row(xs: np.ndarray, shape: tuple[int, int], dtype: DTypeLike) -> np.ndarray:
    """``xs`` repeated down ``shape[0]`` rows: a contiguous map of ``dtype``."""
    return np.ascontiguousarray(np.broadcast_to(xs.astype(dtype), shape))


def _col(ys: np.ndarray, shape: tuple[int, int], dtype: DTypeLike) -> np.ndarray:
    """``ys`` repeated along ``shape[1]`` columns."""
    return np.ascontiguousarray(np.broadcast_to(ys.astype(dtype)[:, None], shape))


def apply_plane(image: np.ndarray, mask: ArrayLike | None, mean: np.ndarray, geometry: PlaneGeometry,
                weighted: np.ndarray | None = None) -> np.ndarray:
    """Turn the zero-order masked ``mean`` of ``image`` (both (H, W) or (H, W, C); the mean
    float32, the image with non-finite pixels already dropped) into the first-order one, in
    place. ``weighted``, ``I M`` for a binary mask when the caller has it, saves computing it
    again."""
    if image.ndim == 2:  # one channel, as (H, W, 1) views of the same memory
        apply_plane(image[..., None], mask, mean[..., None], geometry,
                    None if weighted is None else weighted[..., None])
        return mean
    k = geometry.kernel
    path = _pick_path(k, "auto")
    raw = _raw_total(k, path)
    c = image.shape[2]
    m = None if mask is None else as_mask(mask)
    binary = _binary_u8(m) if m is not None else None
    if weighted is not None and (binary is None or weighted.shape != image.shape):
        weighted = None
    integral = image.dtype in (np.uint8, np.uint16)
    vmax = 255 if image.dtype == np.uint8 else 65535
    for i, ((y0, y1, x0, x1), (Y0, Y1, X0, X1), _, coef) in enumerate(geometry.blocks):
        coefs = geometry.coefficients(i, c)
        inner = (slice(y0 - Y0, y1 - Y0), slice(x0 - X0, x1 - X0))
        if weighted is not None:
            ib = weighted[Y0:Y1, X0:X1]
        elif m is not None:  # I M, in the image's own dtype for a binary mask
            ib = _masked_input(image[Y0:Y1, X0:X1], m[Y0:Y1, X0:X1], None if binary is None
                               else np.ascontiguousarray(binary[Y0:Y1, X0:X1]))
        else:
            ib = image[Y0:Y1, X0:X1]
        # x I M and y I M, all channels at once on the (rows, columns * channels) layout; their
        # window sums are exact int32 sums for 8/16-bit data while they fit
        exact = (path == "box" and integral and ib.dtype == image.dtype
                 and _fits_int32(vmax * _reach(Y0, Y1, X0, X1) * raw))
        ctype = np.int32 if exact else np.float32
        xrow, ycol = geometry.coordinates(i, c, ctype)
        flat = ib.reshape(Y1 - Y0, (X1 - X0) * c)  # a view: each row's pixels are contiguous
        sx = np.multiply(flat, xrow, dtype=ctype)
        sy = np.multiply(flat, ycol, dtype=ctype)
        shape = (Y1 - Y0, X1 - X0, c)
        sx = _filter(sx.reshape(shape), k, path, raw=True)[inner]
        sy = _filter(sy.reshape(shape), k, path, raw=True)[inner]
        view = mean[y0:y1, x0:x1]
        if coefs[0] is None:  # many channels: one by one
            for i in range(c):
                view[..., i] = view[..., i] * coef[0] + sx[..., i] * coef[1] + sy[..., i] * coef[2]
            continue
        if c == 1:
            view, sx, sy = view[..., 0], sx[..., 0], sy[..., 0]
        cv2.multiply(view, coefs[0], dst=view)  # in place, on the mean's own rows
        cv2.accumulateProduct(sx, coefs[1], view)
        cv2.accumulateProduct(sy, coefs[2], view)
    return mean
