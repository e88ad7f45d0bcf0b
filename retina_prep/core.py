"""Masked (normalized) convolution on arrays.

This module is the numerical core of retina-prep. It knows nothing about
files, command lines or printing.

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

import functools
import math
from dataclasses import dataclass, field

import cv2
import numpy as np

__all__ = [
    "dtype_scale",
    "Kernel",
    "PATHS",
    "box_kernel",
    "gaussian_kernel",
    "sharpen_kernel",
    "laplacian_kernel",
    "sobel_kernel",
    "named_kernel",
    "KERNEL_NAMES",
    "as_kernel",
    "convolve",
    "masked_convolve",
    "mask_weights",
    "masked_filter",
    "masked_plane_mean",
    "plane_geometry",
    "apply_plane",
    "PlaneGeometry",
    "DEFAULT_RIDGE",
    "as_mask",
    "check_layout",
    "as_native",
    "finite_pixels",
    "MODES",
    "DEFAULT_MIN_WEIGHT",
]

#: Backend paths accepted by :func:`convolve` and :func:`masked_convolve`.
PATHS = ("auto", "box", "pyramid", "separable", "filter2d")

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
    pyramid : (int, float), optional
        ``(d, s)``: a large Gaussian filtered on a grid ``d`` times coarser
        with a Gaussian of ``s`` coarse pixels (the ``"pyramid"`` path: cost
        independent of the size); ``array`` is the exact Gaussian it stands for.
    """

    array: np.ndarray
    name: str = "custom"
    factors: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)
    is_box: bool = False
    pyramid: tuple[int, float] | None = None

    def __post_init__(self):
        arr = np.asarray(self.array, dtype=np.float64)
        if arr.ndim != 2 or arr.size == 0:
            raise ValueError(f"kernel must be a non-empty 2-D array, got shape {arr.shape}")
        if not np.all(np.isfinite(arr)):
            raise ValueError("kernel has non-finite entries (NaN or inf)")
        kh, kw = arr.shape
        if not np.any(arr):
            raise ValueError("kernel is all zeros")
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

    # computed once per kernel (the array is read-only): a kernel at the size cap has 16 M entries
    @functools.cached_property
    def total(self) -> float:
        """Sum of the kernel weights."""
        return float(self.array.sum())

    @functools.cached_property
    def is_nonnegative(self) -> bool:
        return bool(np.all(self.array >= 0))

    @functools.cached_property
    def is_symmetric(self) -> bool:
        """Unchanged by a half turn (what first-order normalization needs)."""
        if self.is_box:
            return True
        if self.factors is not None and all(np.allclose(f, f[::-1]) for f in self.factors):
            return True
        return bool(np.allclose(self.array, self.array[::-1, ::-1]))

    def positive(self) -> Kernel:
        """K+ = max(K, 0)."""
        return as_kernel(np.maximum(self.array, 0.0))

    def negative(self) -> Kernel:
        """K- = max(-K, 0), so that K = K+ - K-."""
        return as_kernel(np.maximum(-self.array, 0.0))

    def absolute(self) -> Kernel:
        """|K|, whose normalized convolution with M is the certainty map."""
        return self if self.is_nonnegative else as_kernel(np.abs(self.array))


def dtype_scale(dtype) -> float:
    """Factor from 8-bit units to ``dtype`` units.

    uint8: 1; uint16: 65535/255 = 257 (so I0 = 128 becomes 32896); other
    integer types likewise ``max / 255``; floats: 1/255 (values in ``[0, 1]``).
    """
    dt = np.dtype(dtype)
    if np.issubdtype(dt, np.integer):
        return np.iinfo(dt).max / 255.0
    return 1.0 / 255.0


def box_kernel(size: int) -> Kernel:
    """Mean filter of ``size x size`` pixels (the mask-convolution paper, eq. 9): weights ``1/size**2``.

    Parameters
    ----------
    size : int
        Odd side in pixels.

    Returns
    -------
    Kernel
        Box structure (the fast path).

    Examples
    --------
    >>> float(box_kernel(5).array.sum().round(6))
    1.0
    """
    size = _odd_size(size, "box size")
    w = 1.0 / (size * size)
    one = np.full(size, 1.0 / size)
    return Kernel(np.full((size, size), w), name=f"box {size}", factors=(one, one), is_box=True)


#: Gaussians with sigma >= this and no explicit size run on the pyramid path (see gaussian_kernel).
GAUSSIAN_PYRAMID_SIGMA = 16.0
#: The pyramid's coarse grid is ``floor(sigma / this)`` pixels wide, so that its Gaussian spans
#: at least this many coarse pixels per sigma.
PYRAMID_CELLS_PER_SIGMA = 12.0


def _pyramid(sigma: float) -> tuple[int, float]:
    """``(d, s)``: the coarse grid's cell size and the Gaussian there. Area averaging (variance
    ``(d^2 - 1) / 12``) and linear interpolation back (about ``d^2 / 6``) blur too, so the coarse
    Gaussian takes the rest of ``sigma^2``."""
    d = max(2, int(sigma // PYRAMID_CELLS_PER_SIGMA))
    rest = sigma * sigma - (d * d - 1) / 12 - d * d / 6
    return d, math.sqrt(rest) / d


def _natural_size(sigma: float) -> int:
    """A Gaussian's width when none is given: ``2 * ceil(3 * sigma) + 1`` px."""
    return 2 * math.ceil(3 * sigma) + 1


def _gaussian_1d(sigma: float, size: int | None = None) -> np.ndarray:
    """The normalized 1-D Gaussian of ``size`` (odd) taps, by default its natural width."""
    if size is None:
        size = _natural_size(sigma)
    x = np.arange(size) - size // 2
    g = np.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def gaussian_kernel(sigma: float, size: int | None = None, *, exact: bool | None = None) -> Kernel:
    """Gaussian kernel with standard deviation ``sigma`` pixels, normalized to sum 1.

    ``size`` defaults to ``2 * ceil(3 * sigma) + 1``; a smaller size truncates
    the Gaussian (the mask-convolution paper uses size 50 with sigma 20; sizes here are odd, so
    use 51).

    Large Gaussians: with ``sigma >= GAUSSIAN_PYRAMID_SIGMA`` (16) and no
    ``size``, the kernel runs on the pyramid path: the image is averaged over ``d x d``
    cells (``d = max(2, floor(sigma / 12))``), filtered there with the Gaussian of the
    remaining variance, and interpolated back linearly, at a cost independent
    of sigma. Masked convolution divides numerator and denominator filtered
    the same way (a linear operator with non-negative weights), so the
    normalization stays exact; the masked mean departs from the exact
    Gaussian's by under 0.05 gray levels on fundus photographs (measured up
    to sigma 80 at HRF size; the box cascade it replaced was off by up to
    1.3). ``exact=True`` always gives the true (separable) Gaussian.

    Parameters
    ----------
    sigma : float
        Standard deviation in pixels (> 0).
    size : int, optional
        Odd side; default ``2 * ceil(3 * sigma) + 1``.
    exact : bool, optional
        True: never the pyramid path.

    Returns
    -------
    Kernel
        Separable (``factors``), possibly on the pyramid path (``pyramid``).

    Examples
    --------
    >>> gaussian_kernel(2.0).array.shape
    (13, 13)
    """
    sigma = float(sigma)
    if not (math.isfinite(sigma) and sigma > 0):
        raise ValueError(f"sigma must be a positive number, got {sigma!r}")
    natural = size is None
    if exact is None:
        exact = not natural or sigma < GAUSSIAN_PYRAMID_SIGMA
    if natural:
        size = _natural_size(sigma)
        if size > MAX_KERNEL_SIZE:
            raise ValueError(f"sigma {sigma:g} needs a kernel of {size} px, above the largest,"
                             f" {MAX_KERNEL_SIZE} px (sigma at most"
                             f" {(MAX_KERNEL_SIZE - 1) // 6})")
    g = _gaussian_1d(sigma, _odd_size(size, "gaussian size"))
    if not exact and natural and sigma >= GAUSSIAN_PYRAMID_SIGMA:
        d, s = _pyramid(sigma)
        return Kernel(np.outer(g, g), name=f"gaussian sigma {sigma:g} (pyramid 1/{d})",
                      factors=(g, g), pyramid=(d, s))
    return Kernel(np.outer(g, g), name=f"gaussian {len(g)} sigma {sigma:g}", factors=(g, g))


def sharpen_kernel() -> Kernel:
    """The mask-convolution paper's 5x5 sharpen kernel (section V, Fig. 9); it sums to 1."""
    a = np.array(
        [[-1, -1, -1, -1, -1],
         [-1, 2, 2, 2, -1],
         [-1, 2, 8, 2, -1],
         [-1, 2, 2, 2, -1],
         [-1, -1, -1, -1, -1]],
        dtype=np.float64,
    ) / 8.0
    return Kernel(a, name="sharpen 5x5")


def laplacian_kernel() -> Kernel:
    """The 3x3 Laplacian [[0, 1, 0], [1, -4, 1], [0, 1, 0]] (sums to 0)."""
    return Kernel(np.array([[0, 1, 0], [1, -4, 1], [0, 1, 0]], np.float64), name="laplacian 3x3")


def sobel_kernel(axis: str) -> Kernel:
    """3x3 Sobel derivative along ``"x"`` (columns) or ``"y"`` (rows), as a convolution kernel."""
    d = np.array([1.0, 0.0, -1.0])  # convolution flips: response = right - left
    s = np.array([1.0, 2.0, 1.0])
    if axis == "x":
        return Kernel(np.outer(s, d), name="sobel x", factors=(s, d))
    if axis == "y":
        return Kernel(np.outer(d, s), name="sobel y", factors=(d, s))
    raise ValueError(f"sobel axis must be 'x' or 'y', got {axis!r}")


#: A Gaussian sized by its window alone gets sigma = size / GAUSSIAN_SIZE_PER_SIGMA
#: (the mask-convolution paper: size 50, sigma 20).
GAUSSIAN_SIZE_PER_SIGMA = 2.5

#: Kernel names accepted by :func:`named_kernel`.
KERNEL_NAMES = ("mean", "gaussian", "sharpen", "laplacian", "sobel-x", "sobel-y")


def named_kernel(name: str, *, size: int | None = None, sigma: float | None = None) -> Kernel:
    """A kernel by name: ``mean`` (needs size), ``gaussian`` (sigma, optional size),
    ``sharpen``, ``laplacian``, ``sobel-x``, ``sobel-y`` (fixed sizes)."""
    if name == "mean":
        if size is None:
            raise ValueError("the mean kernel needs a size")
        if sigma is not None:
            raise ValueError("sigma applies to the gaussian kernel only")
        return box_kernel(size)
    if name == "gaussian":
        if sigma is None:
            if size is None:
                raise ValueError("the gaussian kernel needs a sigma or a size")
            sigma = size / GAUSSIAN_SIZE_PER_SIGMA
        return gaussian_kernel(sigma, size)
    fixed = {"sharpen": sharpen_kernel, "laplacian": laplacian_kernel,
             "sobel-x": lambda: sobel_kernel("x"), "sobel-y": lambda: sobel_kernel("y")}
    if name not in fixed:
        raise ValueError(f"unknown kernel {name!r}; valid kernels: {', '.join(KERNEL_NAMES)}")
    if sigma is not None:
        raise ValueError(f"sigma does not apply to the {name} kernel")
    k = fixed[name]()
    if size is not None and size != k.shape[0]:
        raise ValueError(f"the {name} kernel is {k.shape[0]}x{k.shape[1]}; it takes no other size")
    return k


def as_kernel(kernel) -> Kernel:
    """Return ``kernel`` as a :class:`Kernel`, detecting box and separable structure.

    Parameters
    ----------
    kernel : Kernel or (kh, kw) array_like
        Odd sizes; kept as it is when already a :class:`Kernel`.

    Returns
    -------
    Kernel

    Examples
    --------
    >>> import numpy as np
    >>> k = as_kernel(np.ones((3, 3)) / 9)
    >>> k.is_box, k.array.shape
    (True, (3, 3))
    """
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


#: The largest side of a box or Gaussian kernel, in pixels. A kernel is held as a 2-D array:
#: a mistyped window (30001 for 3001) would otherwise take 14 GB and half a minute to build;
#: 4001 px (a 128 MB array) is wider than the field of view of any fundus camera.
MAX_KERNEL_SIZE = 4001


def _odd_size(size, what: str) -> int:
    if isinstance(size, bool) or int(size) != size:
        raise ValueError(f"{what} must be an odd whole number of pixels, got {size!r}")
    size = int(size)
    if size < 1 or size % 2 == 0:
        raise ValueError(f"{what} must be an odd number >= 1, got {size}")
    if size > MAX_KERNEL_SIZE:
        raise ValueError(f"{what} {size} is above the largest kernel, {MAX_KERNEL_SIZE} px (wider"
                         " than any field of view: a window as wide as the image averages over"
                         " all of it)")
    return size


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


def as_native(arr) -> np.ndarray:
    """``arr`` as an array in the machine's byte order (a big-endian ``>u2`` image from a FITS or
    raw reader is the same uint16 data; kept as it was, it would not count as uint16)."""
    arr = np.asarray(arr)
    return arr if arr.dtype.isnative else arr.astype(arr.dtype.newbyteorder("="))


def _as_image(image) -> np.ndarray:
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


def _as_float_image(image) -> np.ndarray:
    return _as_image(image).astype(np.float32, copy=False)


def as_mask(mask, shape: tuple[int, int] | None = None) -> np.ndarray:
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


def _binary_u8(mask) -> np.ndarray | None:
    """A boolean mask as a 0/1 uint8 view (no copy); None for float weight masks."""
    m = np.asarray(mask)
    if m.dtype == np.bool_:
        return m.view(np.uint8)
    return None


def _as_weights(mask, shape: tuple[int, int] | None) -> np.ndarray:
    return as_mask(mask, shape).astype(np.float32, copy=False)


def _drop_nonfinite(img: np.ndarray, mask):
    """Non-finite pixels (NaN, inf in any channel) of a float image become invalid: weight 0.

    Returns ``(image, mask)``: unchanged when every pixel is finite, else a
    copy of the image with those pixels zeroed and the mask without them.
    """
    return _drop_pixels(img, mask, finite_pixels(img))


def _drop_pixels(img: np.ndarray, mask, finite: np.ndarray | None):
    """:func:`_drop_nonfinite` with the image's :func:`finite_pixels` already known."""
    if finite is None:
        return img, mask
    img = np.where(finite[..., None] if img.ndim == 3 else finite, img, np.float32(0.0))
    if mask is None:
        return img, finite
    if mask.dtype == np.bool_:
        return img, mask & finite
    return img, mask * finite


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


def _strips(h: int, w: int):
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

    def __init__(self, num, den=None, *, inverse=None, scale: float = 1.0, floor: float = 0.0,
                 weighted=None):
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


def _separable_weights(k: Kernel, shape: tuple[int, int]):
    """For a rank-one kernel, the certainty of an all-valid image, ``(M conv K) / sum(K)`` with
    ``M = 1`` inside the image rectangle, as its two 1-D factors ``(wy, wx)``; None when the
    kernel is not rank one."""
    if k.pyramid is not None or k.factors is None:
        return None
    ky, kx = (np.asarray(f, np.float64) for f in k.factors)

    def along(n, f):  # zero-padded convolution of n ones with f, centred
        c = len(f) // 2
        return np.convolve(np.ones(n), f, mode="full")[c:c + n] / f.sum()

    return along(shape[0], ky), along(shape[1], kx)


def _rect_parts(img: np.ndarray, k: Kernel, path: str):
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

    def divide(rows, cols, weights):
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


def _mean_parts(image, mask, k: Kernel, *, min_weight: float = DEFAULT_MIN_WEIGHT,
                rect_fast: bool = True, want_weights: bool = False, inverse=None,
                keep_weighted: bool = False):
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


def _mean_divisor(mask, k: Kernel, *, min_weight: float = DEFAULT_MIN_WEIGHT):
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


def _normalized_mean(weighted, m, k: Kernel, path: str, min_weight: float):
    """Weighted mean of valid pixels under ``k`` (>= 0): (mean, weights, undefined)."""
    weights = _weights(m, k, path)
    mean = _MeanParts(_filter(weighted, k, path), weights, scale=1.0 / k.total,
                      floor=min_weight).mean()
    return mean, weights, weights < min_weight


def set_where(arr: np.ndarray, where: np.ndarray, value) -> np.ndarray:
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


def masked_convolve(
    image,
    mask,
    kernel,
    *,
    min_weight: float = DEFAULT_MIN_WEIGHT,
    fill: float | None = np.nan,
    path: str = "auto",
    return_weights: bool = False,
):
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
    image,
    mask,
    kernel,
    *,
    mode: str = "normalized",
    min_weight: float = DEFAULT_MIN_WEIGHT,
    fill: float | None = np.nan,
    path: str = "auto",
):
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
        Value where no valid pixel is in the window (None: 0).
    path : {"auto", "box", "pyramid", "separable", "filter2d"}
        The OpenCV path (``auto`` picks the fastest the kernel allows).

    Returns
    -------
    result : float32 ndarray, shape of ``image``
        ``fill`` where no valid pixel is in the window (or below ``min_weight``).
    validity : (H, W) float32 ndarray in [0, 1]
        The updated mask, to chain filters: pass it as the next ``mask``.
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
    image,
    mask,
    kernel,
    *,
    ridge: float = DEFAULT_RIDGE,
    min_weight: float = DEFAULT_MIN_WEIGHT,
    fill: float | None = np.nan,
    return_weights: bool = False,
):
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


def _band_blocks(band: np.ndarray, ry: int, rx: int, one_block: bool = False):
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


    def coordinates(self, i: int, c: int, ctype) -> tuple[np.ndarray, np.ndarray]:
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


def plane_geometry(mask, kernel, weights=None, *, ridge: float = DEFAULT_RIDGE,
                   min_weight: float = DEFAULT_MIN_WEIGHT, where=None) -> PlaneGeometry:
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

        def moment(a, inner=inner, sub=sub):  # the window sums at the block's band pixels
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


def _padded(y0: int, y1: int, x0: int, x1: int, k: Kernel, shape: tuple[int, int]):
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


def _fits_int32(bound) -> bool:
    return bound < _INT32_MAX


def _reach(Y0: int, Y1: int, X0: int, X1: int) -> int:
    """The largest ``|coordinate|`` in a block (see :func:`_block_coords`), at least 1: what
    bounds its window sums for the int32 paths."""
    return max((X1 - X0) // 2, (Y1 - Y0) // 2, 1)


def _block_coords(lo: int, hi: int) -> np.ndarray:
    """Integer coordinates of pixels ``lo..hi-1`` measured from the block's middle pixel."""
    return np.arange(lo, hi, dtype=np.int64) - (lo + (hi - lo) // 2)


def _row(xs: np.ndarray, shape: tuple[int, int], dtype) -> np.ndarray:
    """``xs`` repeated down ``shape[0]`` rows: a contiguous map of ``dtype``."""
    return np.ascontiguousarray(np.broadcast_to(xs.astype(dtype), shape))


def _col(ys: np.ndarray, shape: tuple[int, int], dtype) -> np.ndarray:
    """``ys`` repeated along ``shape[1]`` columns."""
    return np.ascontiguousarray(np.broadcast_to(ys.astype(dtype)[:, None], shape))


def apply_plane(image, mask, mean: np.ndarray, geometry: PlaneGeometry,
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
