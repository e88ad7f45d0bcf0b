"""Kernels: what a local mean or a filter weighs its window with.

A :class:`Kernel` is an odd-sized 2-D array with what the fast paths need to
know about it (box, rank-one factors, a pyramid plan for large Gaussians).
:func:`make_kernel` is the one rule by which every command and library call
turns a name, a window and a sigma into a kernel.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

__all__ = ["Kernel", "box_kernel", "gaussian_kernel", "sharpen_kernel", "laplacian_kernel",
           "sobel_kernel", "named_kernel", "as_kernel", "KERNEL_NAMES", "MAX_KERNEL_SIZE",
           "GAUSSIAN_PYRAMID_SIGMA", "GAUSSIAN_SIZE_PER_SIGMA"]

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

    def __post_init__(self) -> None:
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


def as_kernel(kernel: Kernel | ArrayLike) -> Kernel:
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


def _rank_one_factors(arr: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
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


def _odd_size(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.number)) \
            or int(value) != value:
        raise ValueError(f"{what} must be an odd whole number of pixels, got {value!r}")
    size = int(value)
    if size < 1 or size % 2 == 0:
        raise ValueError(f"{what} must be an odd number >= 1, got {size}")
    if size > MAX_KERNEL_SIZE:
        raise ValueError(f"{what} {size} is above the largest kernel, {MAX_KERNEL_SIZE} px (wider"
                         " than any field of view: a window as wide as the image averages over"
                         " all of it)")
    return size


# ------------------------------------------------------------------ the one rule

#: Local-mean kernels (those a window sizes).
KERNELS = ("mean", "gaussian")

#: ``window="auto"``: the window is this fraction of the FOV diameter
#: (21 px on DRIVE, whose field of view is about 540 px wide).
AUTO_WINDOW_FRACTION = 0.04

#: ``sigma="auto"``: this fraction of the FOV diameter (R / 30, Ben Graham's scale).
AUTO_SIGMA_FRACTION = 1.0 / 60.0


def _is_auto(value: object) -> bool:
    return isinstance(value, str) and value.strip().lower() == "auto"


def _fov_diameter(mask: ArrayLike) -> float:
    from .fov.masks import fov_diameter  # (fov's estimator imports this module)

    return fov_diameter(mask)


def resolve_window(window: int | str, mask: ArrayLike | None = None) -> int:
    """Window size in pixels: an odd int, or ``"auto"`` (a fraction of the FOV diameter).

    ``"auto"`` uses :data:`AUTO_WINDOW_FRACTION` of
    :func:`~retina_prep.fov.fov_diameter` rounded down to an odd number (at
    least 3); it needs a mask.

    Parameters
    ----------
    window : int or "auto"
    mask : (H, W) bool array_like, optional
        Needed for ``"auto"``.

    Returns
    -------
    int
        Odd, >= 1.

    Examples
    --------
    >>> resolve_window(21)
    21
    >>> import numpy as np
    >>> disc = np.hypot(*np.mgrid[-270:271, -270:271]) <= 270
    >>> resolve_window("auto", disc)  # 0.04 of a 541 px field of view
    21
    """
    if isinstance(window, str):
        if not _is_auto(window):
            try:
                window = int(window)
            except ValueError:
                raise ValueError(
                    f"window must be an odd number of pixels or 'auto', got {window!r}") from None
        else:
            if mask is None:
                raise ValueError("window 'auto' needs a field-of-view mask")
            size = AUTO_WINDOW_FRACTION * _fov_diameter(mask)
            return max(3, 2 * int(math.floor(size / 2)) + 1)
    if isinstance(window, bool) or int(window) != window or window < 1 or int(window) % 2 == 0:
        raise ValueError(f"window must be an odd number of pixels >= 1, got {window!r}")
    return int(window)


def make_kernel(name: str | Kernel = "mean", window: int | str | None = None,
                sigma: float | str | None = None, *, mask: ArrayLike | None = None) -> Kernel:
    """The kernel a command or a library call runs: the one rule by which a name, a window and
    a sigma become a :class:`Kernel`.

    Parameters
    ----------
    name : str or Kernel
        One of :data:`KERNEL_NAMES`; a :class:`Kernel` is returned as it is (it has its own
        size: ``window`` and ``sigma`` must then be None).
    window : int, "auto" or None
        For ``mean`` and ``gaussian``: an odd side in pixels (a Gaussian is truncated to it),
        or ``"auto"``, :data:`AUTO_WINDOW_FRACTION` of the FOV diameter of ``mask``. None is
        ``"auto"``, except for a Gaussian given a ``sigma``, which then spans
        ``2*ceil(3*sigma)+1`` pixels (large ones run on the pyramid path). Fixed kernels
        (sharpen, laplacian, sobel) keep their own size for None and ``"auto"``.
    sigma : float or "auto", optional
        A Gaussian's sigma in pixels; without one it is ``window / 2.5`` (the
        mask-convolution paper's size 50, sigma 20). ``"auto"`` is
        :data:`AUTO_SIGMA_FRACTION` of the FOV diameter of ``mask``: R / 30, Ben Graham's
        scale (sigma 10 for a radius of 300 px).
    mask : (H, W) bool array_like, optional
        The field of view, for ``"auto"`` sizes.

    Returns
    -------
    Kernel

    Examples
    --------
    >>> make_kernel("mean", 21).is_box
    True
    >>> make_kernel("gaussian", sigma=5.0).shape
    (31, 31)
    """
    if isinstance(name, Kernel):
        if window is not None or sigma is not None:
            raise ValueError("window and sigma apply to named kernels only")
        return name
    if isinstance(sigma, str):
        if not _is_auto(sigma) or name != "gaussian":
            raise ValueError(f"sigma must be a number of pixels (or 'auto' for the gaussian"
                             f" kernel), got {sigma!r}")
        if mask is None:
            raise ValueError("sigma 'auto' is a fraction of the FOV diameter: it needs a mask")
        sigma = AUTO_SIGMA_FRACTION * _fov_diameter(mask)
    if name in KERNELS:
        if window is None and name == "gaussian" and sigma is not None:
            return named_kernel(name, sigma=sigma)
        return named_kernel(name, size=resolve_window("auto" if window is None else window, mask),
                            sigma=sigma)
    if name not in KERNEL_NAMES:
        raise ValueError(f"unknown kernel {name!r}; valid kernels: {', '.join(KERNEL_NAMES)}")
    if _is_auto(window):
        window = None
    return named_kernel(name, size=None if window is None else resolve_window(window), sigma=sigma)


def check_kernel_args(name: Kernel | str, window: int | str | None = None,
                      sigma: float | str | None = None) -> None:
    """Raise ``ValueError`` now if :func:`make_kernel` would refuse these arguments for any
    image (an ``"auto"`` size, which needs the image's mask, is probed with a small one)."""
    if isinstance(name, Kernel):
        make_kernel(name, window, sigma)
        return
    sized_by_sigma = window is None and name == "gaussian" and sigma is not None
    probe = 3 if (window is None or _is_auto(window)) and name in KERNELS and not sized_by_sigma \
        else window
    if _is_auto(sigma) and name == "gaussian":
        sigma = 1.0
    make_kernel(name, probe, sigma)
