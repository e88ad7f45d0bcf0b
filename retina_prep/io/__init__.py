"""Files in and out: :mod:`.read` decodes (images, masks, kernel files), :mod:`.write`
encodes and writes atomically. The only part of the library that touches image files.
"""

from __future__ import annotations

from .read import (  # noqa: F401
    CAPTURE_ENV,
    DEFAULT_MAX_PIXELS,
    DICOM_EXTRA,
    IMAGE_EXTENSIONS,
    MAX_FILE_BYTES,
    MAX_KERNEL_FILE_BYTES,
    ORIENTED_EXTENSIONS,
    apply_orientation,
    is_dicom,
    load_kernel,
    read_image,
    read_mask,
)
from .write import (  # noqa: F401
    OUTPUT_FORMATS,
    PNG_LEVELS,
    check_png_level,
    encode_image,
    remove_stale_temporaries,
    write_bytes,
    write_image,
    write_outputs,
)

__all__ = [
    "IMAGE_EXTENSIONS",
    "OUTPUT_FORMATS",
    "DEFAULT_MAX_PIXELS",
    "read_image",
    "read_mask",
    "encode_image",
    "write_image",
    "write_bytes",
    "write_outputs",
    "load_kernel",
    "remove_stale_temporaries",
]
