"""Reading and writing image files: the only module that decodes or encodes.

Images come out as ``(H, W)`` grayscale or ``(H, W, 3)`` RGB arrays (OpenCV's
BGR order is converted here, once). An alpha channel is dropped. Writes are
atomic: a temporary file in the target folder is renamed into place, so an
interrupted write never leaves a partial output.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

from .errors import ImageReadError, MaskError, OutputExistsError
from .fov import binarize_mask

__all__ = [
    "IMAGE_EXTENSIONS",
    "OUTPUT_FORMATS",
    "read_image",
    "read_mask",
    "encode_image",
    "write_image",
    "write_bytes",
    "load_kernel",
    "remove_stale_temporaries",
]

#: File endings recognised as images (case-insensitive).
IMAGE_EXTENSIONS = (
    ".tif", ".tiff", ".png", ".jpg", ".jpeg", ".gif", ".bmp", ".ppm", ".pgm", ".pnm", ".webp", ".jp2",
)

#: Output formats: name -> file ending.
OUTPUT_FORMATS = {"png": ".png", "tif": ".tif"}

def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _file_mode()

#: Default limit on the number of pixels of a decoded image (decompression bombs).
DEFAULT_MAX_PIXELS = 200_000_000


def _read_bytes(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ImageReadError("file not found", path) from None
    except IsADirectoryError:
        raise ImageReadError("is a folder, not an image file", path) from None
    except PermissionError:
        raise ImageReadError("permission denied", path) from None
    except OSError as exc:
        raise ImageReadError(f"cannot read ({exc.strerror or exc})", path) from None
    if not data:
        raise ImageReadError("file is empty (0 bytes)", path)
    return data


def _decode(path: Path, data: bytes) -> np.ndarray:
    """Decode with OpenCV, falling back to imageio (GIF and other formats)."""
    arr = None
    if path.suffix.lower() != ".gif":
        buf = np.frombuffer(data, np.uint8)
        arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        if arr is not None and arr.ndim == 3:
            if arr.shape[2] == 3:
                arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
            elif arr.shape[2] == 4:
                arr = cv2.cvtColor(arr, cv2.COLOR_BGRA2RGBA)
    if arr is None:
        try:
            import warnings

            import imageio.v3 as iio

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # plugin deprecation noise while probing
                arr = iio.imread(data, extension=path.suffix.lower() or None)
        except Exception as exc:  # imageio raises many types for bad data
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "backend" in reason or len(reason) > 120:
                reason = "no decoder recognises its content"
            raise ImageReadError(
                f"cannot decode as an image (truncated, damaged or unsupported format: {reason})",
                path,
            ) from None
    return np.asarray(arr)


def _check_pixels(path, shape, max_pixels):
    if max_pixels is not None and shape[0] * shape[1] > max_pixels:
        raise ImageReadError(
            f"image has {shape[0] * shape[1]:,} pixels, above the limit of {max_pixels:,}"
            " (raise it with --max-pixels if the file is trusted)",
            path,
        )


def _header_pixels(data: bytes) -> int | None:
    """Width x height from the file header, without decoding pixels (None if unknown)."""
    try:
        import io as _io

        from PIL import Image

        with Image.open(_io.BytesIO(data)) as im:
            w, h = im.size
        return int(w) * int(h)
    except Exception:  # unknown or damaged header: the decoder will tell
        return None


def read_image(path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read an image file as ``(H, W)`` or ``(H, W, 3)`` RGB.

    uint8 and uint16 are kept; other integer types are kept as they are;
    an alpha channel is dropped (use a mask file for the field of view); a
    multi-frame file gives its first frame.

    Raises
    ------
    ImageReadError
        Naming the file and the problem (missing, empty, undecodable, too large).
    """
    path = Path(path)
    data = _read_bytes(path)
    if max_pixels is not None:
        n = _header_pixels(data)
        if n is not None and n > max_pixels:  # refuse before decoding (decompression bombs)
            raise ImageReadError(
                f"image has {n:,} pixels, above the limit of {max_pixels:,}"
                " (raise it with --max-pixels if the file is trusted)",
                path,
            )
    arr = _decode(path, data)
    if arr.ndim == 4 or (arr.ndim == 3 and arr.shape[-1] > 4):
        arr = arr[0]  # first frame
    if arr.ndim == 3:
        if arr.shape[-1] == 1:
            arr = arr[..., 0]
        elif arr.shape[-1] == 2:  # gray + alpha
            arr = arr[..., 0]
        elif arr.shape[-1] == 4:
            arr = arr[..., :3]
    if arr.ndim not in (2, 3) or min(arr.shape[:2]) < 1:
        raise ImageReadError(f"unsupported image shape {arr.shape}", path)
    _check_pixels(path, arr.shape, max_pixels)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ImageReadError(f"unsupported pixel type {arr.dtype}", path)
    return np.ascontiguousarray(arr)


def read_mask(path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read a field-of-view mask file as a boolean ``(H, W)`` array.

    GIF (palette, RGB or with a frame axis), TIFF, PNG, JPEG and the other
    formats of :func:`read_image`. A pixel above half the mask's maximum is
    inside.

    Raises
    ------
    MaskError
        If the file cannot be read or the mask is empty.
    """
    path = Path(path)
    try:
        arr = _decode(path, _read_bytes(path))
    except ImageReadError as exc:
        raise MaskError(f"mask {exc.message}", path) from None
    return binarize_mask(arr, path=path)


def load_kernel(path):
    """Read a kernel from ``.npy`` or a text matrix (whitespace or comma separated, ``#`` comments).

    Raises
    ------
    RetinaPrepError
        If the file is missing, unreadable or not a valid kernel (odd sizes, finite, not all zero).
    """
    from .core import Kernel, as_kernel
    from .errors import RetinaPrepError

    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            text = path.read_text()
            rows = []
            for line in text.splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    rows.append([float(x) for x in line.replace(",", " ").split()])
            if len({len(r) for r in rows}) > 1:
                raise ValueError("rows have different lengths")
            arr = np.array(rows, dtype=np.float64)
        k = as_kernel(np.atleast_2d(np.asarray(arr, dtype=np.float64)))
    except FileNotFoundError:
        raise RetinaPrepError("kernel file not found", path) from None
    except (OSError, ValueError) as exc:
        raise RetinaPrepError(f"not a valid kernel ({exc})", path) from None
    return Kernel(k.array, name=f"custom {path.name}", factors=k.factors, is_box=k.is_box)


def encode_image(image, fmt: str = "png") -> bytes:
    """Encode ``(H, W)`` or ``(H, W, 3)`` RGB uint8/uint16 (or float32 for tif) as bytes."""
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"unknown format {fmt!r}; valid formats: {', '.join(OUTPUT_FORMATS)}")
    arr = np.asarray(image)
    if fmt == "png" and arr.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"PNG holds 8- or 16-bit images, not {arr.dtype}; write TIFF (--format tif)")
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(OUTPUT_FORMATS[fmt], arr)
    if not ok:
        raise ValueError(f"OpenCV cannot encode a {arr.dtype} {arr.shape} array as {fmt}")
    return buf.tobytes()


def write_bytes(path, data: bytes, *, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file + rename).

    Raises
    ------
    OutputExistsError
        If ``path`` exists and ``overwrite`` is False.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise OutputExistsError("output exists (use --overwrite to replace it)", path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, _FILE_MODE)  # mkstemp makes 0600 files; outputs get the usual mode
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def write_image(path, image, *, fmt: str | None = None, overwrite: bool = False) -> Path:
    """Encode ``image`` and write it atomically; the format follows the file ending by default."""
    path = Path(path)
    if fmt is None:
        ext = path.suffix.lower()
        fmt = {".png": "png", ".tif": "tif", ".tiff": "tif"}.get(ext)
        if fmt is None:
            raise ValueError(f"cannot tell the output format from {path.name!r}; use .png or .tif")
    if path.exists() and not overwrite:  # refuse before the work of encoding
        raise OutputExistsError("output exists (use --overwrite to replace it)", path)
    return write_bytes(path, encode_image(image, fmt), overwrite=overwrite)


_TEMP_NAME = re.compile(r"^\..+\.[A-Za-z0-9_]{8}\.part$")


def remove_stale_temporaries(folder, *, older_than: float = 600.0) -> int:
    """Delete temporary files that :func:`write_bytes` left behind (a run killed with SIGKILL).

    Only files named like its temporaries and older than ``older_than``
    seconds are removed, so concurrent runs writing into the same folder are
    not disturbed. Returns how many were removed.
    """
    now = time.time()
    removed = 0
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            if _TEMP_NAME.match(name):
                p = os.path.join(dirpath, name)
                try:
                    if now - os.stat(p).st_mtime > older_than:
                        os.unlink(p)
                        removed += 1
                except OSError:
                    pass
    return removed
