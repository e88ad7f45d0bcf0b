"""The numerical core under its first name: kernels (:mod:`.kernels`), masked convolution
(:mod:`.convolution`) and first-order normalized convolution (:mod:`.first_order`).

Kept so that ``from retina_prep.core import masked_convolve`` goes on working; new code
imports from the three modules.
"""

from __future__ import annotations

from .convolution import (
    DEFAULT_MIN_WEIGHT,
    MODES,
    PATHS,
    as_mask,
    as_native,
    check_layout,
    convolve,
    dtype_scale,
    finite_pixels,
    mask_weights,
    masked_convolve,
    masked_filter,
    set_where,
)
from .first_order import DEFAULT_RIDGE, PlaneGeometry, apply_plane, masked_plane_mean, plane_geometry
from .kernels import (
    KERNEL_NAMES,
    Kernel,
    as_kernel,
    box_kernel,
    gaussian_kernel,
    laplacian_kernel,
    named_kernel,
    sharpen_kernel,
    sobel_kernel,
)

__all__ = [
    "dtype_scale", "Kernel", "PATHS", "box_kernel", "gaussian_kernel", "sharpen_kernel",
    "laplacian_kernel", "sobel_kernel", "named_kernel", "KERNEL_NAMES", "as_kernel", "convolve",
    "masked_convolve", "mask_weights", "masked_filter", "masked_plane_mean", "plane_geometry",
    "apply_plane", "PlaneGeometry", "DEFAULT_RIDGE", "as_mask", "check_layout", "as_native",
    "finite_pixels", "set_where", "MODES", "DEFAULT_MIN_WEIGHT",
]
