"""Standard geometry for learning pipelines: crop to the field of view, resize to a fixed square,
and map results back onto the original photograph.

Every transform is an affine map of pixel coordinates, original -> output, stored as a 2x3
matrix ``A`` with ``[x_out, y_out] = A @ [x, y, 1]``; coordinates are those of pixel
centres (pixel ``(0, 0)`` has its centre at ``(0, 0)``), the convention of
``cv2.warpAffine``. Cropping is a translation; resizing a square of ``side`` pixels to
``size`` scales by ``s = size / side`` about pixel edges, so that the square's outer edges map
onto the output's: ``x_out = s * (x - x0) + (s - 1) / 2``.

Nothing here reads or writes files.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
from numpy.typing import ArrayLike

__all__ = [
    "Transform",
    "fov_bounds",
    "fov_square",
    "fov_transform",
    "warp",
    "to_original",
    "points_to_original",
    "points_to_output",
    "INTERPOLATIONS",
]

#: Interpolations by name, for :func:`warp` and :func:`to_original`. ``"area"`` (pixel-area
#: averaging) is for shrinking images; it warps as ``"linear"`` when enlarging.
INTERPOLATIONS = {"nearest": cv2.INTER_NEAREST, "linear": cv2.INTER_LINEAR,
                  "cubic": cv2.INTER_CUBIC, "area": cv2.INTER_AREA}


@dataclass(frozen=True)
class Transform:
    """How an output image was cut from an original photograph.

    Attributes
    ----------
    matrix : (2, 3) tuple of tuples
        Original -> output pixel coordinates (see the module docstring).
    original_size, output_size : (width, height)
    crop : (x0, y0, side) or None
        The square cut from the original (it may reach outside the image: padded), before
        any resize.
    """

    matrix: tuple[tuple[float, float, float], tuple[float, float, float]]
    original_size: tuple[int, int]
    output_size: tuple[int, int]
    crop: tuple[int, int, int] | None = None

    @property
    def array(self) -> np.ndarray:
        """The matrix as a (2, 3) float64 array."""
        return np.array(self.matrix, dtype=np.float64)

    @property
    def inverse(self) -> np.ndarray:
        """Output -> original, (2, 3)."""
        return cv2.invertAffineTransform(self.array)

    @property
    def scale(self) -> float:
        """Output pixels per original pixel."""
        return float(self.matrix[0][0])

    def to_dict(self) -> dict:
        """A JSON-ready record (the manifest's ``geometry``)."""
        return {"matrix": [list(r) for r in self.matrix], "original_size": list(self.original_size),
                "output_size": list(self.output_size),
                "crop": None if self.crop is None else list(self.crop)}

    @classmethod
    def from_dict(cls, d: dict) -> Transform:
        """The inverse of :meth:`to_dict`; raises ``ValueError`` naming what is missing."""
        try:
            m = np.asarray(d["matrix"], dtype=np.float64)
            orig = tuple(int(v) for v in d["original_size"])
            out = tuple(int(v) for v in d["output_size"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a geometry record ({exc})") from None
        if m.shape != (2, 3) or not np.all(np.isfinite(m)) or len(orig) != 2 or len(out) != 2:
            raise ValueError("a geometry record needs a 2x3 matrix and two (width, height) sizes")
        crop = d.get("crop")
        box = None if crop is None else (int(crop[0]), int(crop[1]), int(crop[2]))
        return cls(matrix=_rows(m), original_size=(orig[0], orig[1]),
                   output_size=(out[0], out[1]), crop=box)


def _rows(m: np.ndarray) -> tuple[tuple[float, float, float], tuple[float, float, float]]:
    (a, b, c), (d, e, f) = (tuple(float(v) for v in row) for row in m)
    return (a, b, c), (d, e, f)


def fov_bounds(mask: ArrayLike) -> tuple[int, int, int, int]:
    """The bounding box ``(x, y, width, height)`` of the mask's pixels."""
    m = np.asarray(mask)
    if m.ndim != 2:
        raise ValueError(f"mask must be (H, W), got shape {m.shape}")
    u8 = m.view(np.uint8) if m.dtype == np.bool_ else (m > 0).view(np.uint8)
    x, y, w, h = cv2.boundingRect(np.ascontiguousarray(u8))
    if w == 0 or h == 0:
        raise ValueError("the mask is empty: no field of view to crop to")
    return int(x), int(y), int(w), int(h)


def fov_square(mask: ArrayLike) -> tuple[int, int, int]:
    """The FOV's bounding square ``(x0, y0, side)``: centred on the bounding box of the mask,
    as wide as its longer side. Where the disc is cut by the frame, the square reaches
    outside the image (the cut side is restored, centred on the disc)."""
    x, y, w, h = fov_bounds(mask)
    side = max(w, h)
    return x - (side - w) // 2, y - (side - h) // 2, side


def fov_transform(mask: ArrayLike, *, crop: bool = True, size: int | None = None) -> Transform:
    """The transform of cropping to the FOV's bounding square (:func:`fov_square`) and/or
    resizing to ``size`` x ``size`` (without ``crop``, the whole image is resized to that
    square, its aspect changed)."""
    m = np.asarray(mask)
    h, w = m.shape[:2]
    if size is not None and (int(size) != size or size < 1):
        raise ValueError(f"size must be a whole number of pixels >= 1, got {size!r}")
    if crop:
        x0, y0, side = fov_square(m)
        sx = sy = 1.0 if size is None else size / side
        box = (x0, y0, side)
        src_w = src_h = side
    else:
        x0 = y0 = 0
        sx, sy = (1.0, 1.0) if size is None else (size / w, size / h)
        box = None
        src_w, src_h = w, h
    out = (src_w, src_h) if size is None else (int(size), int(size))
    matrix = np.array([[sx, 0.0, -sx * x0 + (sx - 1) / 2],
                       [0.0, sy, -sy * y0 + (sy - 1) / 2]])
    return Transform(matrix=_rows(matrix), original_size=(w, h), output_size=out, crop=box)


def warp(array: ArrayLike, transform: Transform, *, interpolation: str = "area",
         fill: float = 0) -> np.ndarray:
    """``array`` (an original-sized image, mask or label map) cut and resized as ``transform``
    says; outside the original: ``fill``. A boolean array is warped with nearest neighbour and
    stays boolean. ``"area"`` averages pixel areas when shrinking (the usual choice for
    images) and interpolates linearly when enlarging."""
    a = _sized(array, transform.original_size, "the transform is for")
    w, h = transform.original_size
    if a.dtype == np.bool_:
        return warp(a.view(np.uint8), transform, interpolation="nearest", fill=int(bool(fill))) > 0
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"unknown interpolation {interpolation!r}; valid: {', '.join(INTERPOLATIONS)}")
    if transform.crop is not None:  # cut the square out (padding with fill), then resize
        x0, y0, side = transform.crop
        top, left = max(0, -y0), max(0, -x0)
        bottom, right = max(0, y0 + side - h), max(0, x0 + side - w)
        inner = a[max(0, y0):min(h, y0 + side), max(0, x0):min(w, x0 + side)]
        if top or left or bottom or right:
            inner = cv2.copyMakeBorder(np.ascontiguousarray(inner), top, bottom, left, right,
                                       cv2.BORDER_CONSTANT, value=_border_value(a, fill))
        src = inner
    else:
        src = a
    out_w, out_h = transform.output_size
    if src.shape[1] == out_w and src.shape[0] == out_h:
        return np.array(src, copy=True)
    shrinking = out_w < src.shape[1] and out_h < src.shape[0]
    flag = INTERPOLATIONS[interpolation]
    if interpolation == "area" and not shrinking:
        flag = cv2.INTER_LINEAR
    if flag == cv2.INTER_NEAREST:  # OpenCV's plain nearest is not centre-aligned
        flag = cv2.INTER_NEAREST_EXACT
    res = cv2.resize(np.ascontiguousarray(src), (out_w, out_h), interpolation=flag)
    return res.reshape((out_h, out_w) + a.shape[2:])


def _sized(array: ArrayLike, size: tuple[int, int], what: str) -> np.ndarray:
    """``array`` as an ndarray, checked to be ``size`` (width, height)."""
    a = np.asarray(array)
    w, h = size
    if a.shape[:2] != (h, w):
        raise ValueError(f"array is {a.shape[1]}x{a.shape[0]} px but {what} {w}x{h} px")
    return a


def _border_value(a: np.ndarray, fill: float) -> tuple[float, ...]:
    c = 1 if a.ndim == 2 else a.shape[2]
    return (float(fill),) * min(c, 4)


def to_original(array: ArrayLike, transform: Transform, size: tuple[int, int] | None = None, *,
                interpolation: str = "linear", fill: float = 0,
                shape: tuple[int, ...] | None = None) -> np.ndarray:
    """Map an output-sized ``array`` (a probability map, a label map with
    ``interpolation="nearest"``) back onto the original pixel grid: the inverse of
    :func:`warp`. The grid is the transform's original size by default; ``shape``
    ``(height, width)`` (e.g. ``image.shape[:2]``) or ``size`` ``(width, height)`` give another.
    A ``size`` that is the original size transposed (a shape passed as a size) is refused.
    Pixels the output does not cover get ``fill``. A boolean array stays boolean (nearest)."""
    if shape is not None:
        if size is not None:
            raise ValueError("give shape (height, width) or size (width, height), not both")
        size = (int(shape[1]), int(shape[0]))
    if size is not None:
        ow, oh = transform.original_size
        if tuple(int(v) for v in size) == (oh, ow) and ow != oh:
            raise ValueError(f"size is (width, height) = {tuple(size)}, the original size"
                             f" {transform.original_size} transposed: for image.shape[:2] pass"
                             " shape=, or size=(width, height)")
    a = _sized(array, transform.output_size, "the transform's output is")
    if a.dtype == np.bool_:
        return to_original(a.view(np.uint8), transform, size, interpolation="nearest",
                           fill=int(bool(fill))) > 0
    if interpolation not in INTERPOLATIONS or interpolation == "area":
        raise ValueError(f"interpolation must be nearest, linear or cubic, got {interpolation!r}")
    w, h = size if size is not None else transform.original_size
    res = cv2.warpAffine(np.ascontiguousarray(a), transform.array, (int(w), int(h)),
                         flags=INTERPOLATIONS[interpolation] | cv2.WARP_INVERSE_MAP,
                         borderMode=cv2.BORDER_CONSTANT, borderValue=_border_value(a, fill))
    return res.reshape((int(h), int(w)) + a.shape[2:])


def points_to_original(xy: ArrayLike, transform: Transform) -> np.ndarray:
    """Output pixel coordinates ``(N, 2)`` (x, y; e.g. a lesion box's corners) -> original."""
    p = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    inv = transform.inverse
    return p @ inv[:, :2].T + inv[:, 2]


def points_to_output(xy: ArrayLike, transform: Transform) -> np.ndarray:
    """Original pixel coordinates ``(N, 2)`` -> output."""
    p = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    a = transform.array
    return p @ a[:, :2].T + a[:, 2]
