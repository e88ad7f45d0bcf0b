"""retina-prep: masked illumination normalization of retinal fundus photographs.

The library works on NumPy arrays; the ``retina-prep`` command is a thin
layer over it.

>>> import numpy as np, retina_prep as rp
>>> image = np.full((64, 64, 3), 90, np.uint8)
>>> mask = np.zeros((64, 64), bool); mask[8:56, 8:56] = True
>>> out = rp.normalize_illumination(image, mask, window=15)
>>> int(out[10, 10, 1]), int(out[0, 0, 1])
(128, 0)
"""

from __future__ import annotations

__version__ = "0.1.0"

from typing import TYPE_CHECKING

#: Where each public name lives: the package imports a module on first use of one of its
#: names, so `import retina_prep` (and the command line's start-up) stays light.
_LAZY = {
    "clahe": ("masked_clahe",),
    "convolution": ("as_mask", "convolve", "mask_weights", "masked_convolve", "masked_filter"),
    "kernels": ("Kernel", "as_kernel", "box_kernel", "gaussian_kernel"),
    "dataset": ("Pair", "find_mask", "find_pairs"),
    "errors": ("DatasetError", "ImageReadError", "MaskError", "NotAMaskError", "OutputExistsError",
               "RetinaPrepError"),
    "fov": ("binarize_mask", "check_fov_mask", "erode_mask", "estimate_fov", "fov_diameter",
            "trim_rim"),
    "io": ("read_image", "read_mask", "write_image"),
    "normalize": ("PreparedMask", "image_range", "make_kernel", "normalize_illumination",
                  "prepare_mask", "resolve_window"),
}
_WHERE = {name: module for module, names in _LAZY.items() for name in names}


#: Submodules reachable as attributes (``rp.geometry.to_original``) without importing them first.
_SUBMODULES = ("core", "kernels", "convolution", "first_order", "normalize", "fov", "io",
               "dataset", "geometry", "pipeline", "steps", "batch", "reports", "evaluate",
               "figures", "metrics", "synthetic", "errors", "clahe", "presets")


def __getattr__(name: str) -> Any:
    import importlib

    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'retina_prep' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value  # later uses skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_WHERE) | set(_SUBMODULES))


if TYPE_CHECKING:  # for type checkers and editors: the same names, imported eagerly
    from typing import Any

    from .clahe import masked_clahe
    from .convolution import as_mask, convolve, mask_weights, masked_convolve, masked_filter
    from .dataset import Pair, find_mask, find_pairs
    from .errors import (
        DatasetError,
        ImageReadError,
        MaskError,
        NotAMaskError,
        OutputExistsError,
        RetinaPrepError,
    )
    from .fov import binarize_mask, check_fov_mask, erode_mask, estimate_fov, fov_diameter, trim_rim
    from .io import read_image, read_mask, write_image
    from .kernels import Kernel, as_kernel, box_kernel, gaussian_kernel
    from .normalize import (
        PreparedMask,
        image_range,
        make_kernel,
        normalize_illumination,
        prepare_mask,
        resolve_window,
    )

__all__ = [
    "__version__",
    "Kernel",
    "as_kernel",
    "box_kernel",
    "gaussian_kernel",
    "convolve",
    "masked_convolve",
    "masked_filter",
    "as_mask",
    "image_range",
    "mask_weights",
    "Pair",
    "find_pairs",
    "find_mask",
    "RetinaPrepError",
    "ImageReadError",
    "MaskError",
    "NotAMaskError",
    "OutputExistsError",
    "DatasetError",
    "binarize_mask",
    "erode_mask",
    "trim_rim",
    "check_fov_mask",
    "estimate_fov",
    "fov_diameter",
    "read_image",
    "read_mask",
    "write_image",
    "make_kernel",
    "normalize_illumination",
    "masked_clahe",
    "prepare_mask",
    "PreparedMask",
    "resolve_window",
]
