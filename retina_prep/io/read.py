"""Reading image, mask and kernel files: the only place that decodes.

Images come out as ``(H, W)`` grayscale or ``(H, W, 3)`` RGB arrays (OpenCV's
BGR order is converted here, once). An alpha channel is dropped. Special files,
huge files, decompression bombs and files a decoder calls damaged are refused
with a one-line error naming the file.
"""

from __future__ import annotations

import atexit
import contextlib
import io as _io
import os
import re
import stat as _stat
import struct
import tempfile
import typing
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import cv2
import numpy as np

from .._types import PathLike
from ..errors import (
    ImageReadError,
    ImageTooLargeError,
    MaskError,
    RetinaPrepError,
)
from ..fov import _binarize_plane, _gray_fraction, _mask_plane
from ..kernels import MAX_KERNEL_SIZE, Kernel, as_kernel

if TYPE_CHECKING:
    import PIL.Image

__all__ = ["IMAGE_EXTENSIONS", "DEFAULT_MAX_PIXELS", "CAPTURE_ENV", "read_image", "read_mask",
           "load_kernel", "apply_orientation", "is_dicom"]

#: File endings recognised as images (case-insensitive).
IMAGE_EXTENSIONS = (
    ".tif", ".tiff", ".png", ".jpg", ".jpeg", ".gif", ".bmp", ".ppm", ".pgm", ".pnm", ".webp", ".jp2",
    ".dcm", ".dicom",
)

#: The optional extra that reads DICOM (pydicom with JPEG and JPEG 2000 decoders).
DICOM_EXTRA = "retina-prep[dicom] (pip install '.[dicom]' in the repository)"


#: Files larger than this are refused before reading (a link to /dev/zero, a runaway file).
MAX_FILE_BYTES = 4 * 1024**3

#: Default limit on the number of pixels of a decoded image (decompression bombs).
DEFAULT_MAX_PIXELS = 200_000_000


def _read_bytes(path: Path) -> bytes:
    """The bytes of a regular file (links resolved); special files and huge files are refused."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise ImageReadError("file not found", path) from None
    except PermissionError:
        raise ImageReadError("permission denied", path) from None
    except (OSError, ValueError, RuntimeError) as exc:
        raise ImageReadError(f"cannot read ({getattr(exc, 'strerror', None) or exc})", path) from None
    if _stat.S_ISDIR(st.st_mode):
        raise ImageReadError("is a folder, not an image file", path)
    if not _stat.S_ISREG(st.st_mode):
        raise ImageReadError("not a regular file (a device, pipe or socket)", path)
    if st.st_size > MAX_FILE_BYTES:
        raise ImageReadError(f"file is larger than {MAX_FILE_BYTES // 1024**3} GiB", path)
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


def _decode_gif(data: bytes) -> np.ndarray | None:
    """A GIF's first frame with Pillow, as imageio gives it (a palette in its palette's mode,
    RGB); None where Pillow cannot (imageio then tries, and words the error). Pillow is loaded
    anyway for headers; imageio costs start-up time."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(_io.BytesIO(data), formats=["GIF"]) as im:
                im.seek(0)
                if im.mode == "P":
                    im = im.convert(im.palette.mode)
                return np.asarray(im)
    except Exception:
        return None


#: Set (to 1) by the command line, in the environment so that its worker processes have it too:
#: what native decoders print on the process's stderr during a decode (libpng, libjpeg) is
#: captured and reported with the file's name instead. Off for the library: it redirects file
#: descriptor 2 for the whole process, which a program with threads of its own may not expect.
CAPTURE_ENV = "RETINA_PREP_CAPTURE_DECODER_MESSAGES"

_sink: tuple[int, typing.IO[bytes]] | None = None  # (pid, temporary file) the messages go to


@contextlib.contextmanager
def _decoder_messages() -> Iterator[list[str]]:
    """Collect, into the list it yields, the lines written to file descriptor 2 inside the
    block (when :data:`CAPTURE_ENV` is set; else nothing is redirected and the list stays
    empty)."""
    said: list[str] = []
    if os.environ.get(CAPTURE_ENV) != "1":
        yield said
        return
    global _sink
    if _sink is None or _sink[0] != os.getpid():  # one per process: forks must not share it
        try:
            _sink = (os.getpid(), tempfile.TemporaryFile())
            atexit.register(_sink[1].close)  # (closed at exit: no ResourceWarning)
        except OSError:  # no writable temporary folder: the decoders' lines show as they are
            yield said
            return
    sink = _sink[1]
    sink.seek(0)
    sink.truncate()
    saved = os.dup(2)
    try:  # redirected inside the try: a signal's exception right after still restores it
        os.dup2(sink.fileno(), 2)
        yield said
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        sink.seek(0)
        text = sink.read(8192).decode("utf-8", "replace")
        said.extend(line.strip() for line in text.splitlines() if line.strip())


def _damage(said: list[str]) -> str | None:
    """The first of a decoder's messages that says the pixels it returned are not all the
    file's (a truncated or corrupt JPEG: libjpeg fills in gray and carries on); None when
    there is none. Messages about metadata or bytes after the image (libpng's warnings,
    libjpeg's 'extraneous bytes', 'bad ICC marker', an unknown JFIF revision) are not damage."""
    for line in said:
        low = line.lower()
        if "premature end of jpeg file" in low or (
                low.startswith("corrupt jpeg data") and "extraneous bytes" not in low
                and "icc" not in low):
            return line
    return None


def _tiff_tags(data: bytes, wanted: tuple[int, ...] = (274, 277, 322)) -> dict[int, int]:
    """Single-valued tags of a TIFF's first directory (orientation 274, samples per pixel 277,
    tile width 322 by default); {} for other files."""
    if data[:4] not in (b"II*\x00", b"MM\x00*"):
        return {}
    end = "<" if data[:2] == b"II" else ">"
    found: dict[int, int] = {}
    try:
        (ifd,) = struct.unpack(end + "I", data[4:8])
        (count,) = struct.unpack(end + "H", data[ifd:ifd + 2])
        for i in range(min(count, 512)):
            entry = data[ifd + 2 + 12 * i: ifd + 14 + 12 * i]
            tag, kind = struct.unpack(end + "HH", entry[:4])
            if tag in wanted:
                fmt = "H" if kind == 3 else "I"
                found[tag] = int(struct.unpack(end + fmt, entry[8:8 + struct.calcsize(fmt)])[0])
    except struct.error:
        return {}
    return found


def _opencv_misreads_tiff(data: bytes) -> bool:
    """TIFFs OpenCV decodes wrongly: RGB with extra samples (the samples taken for columns),
    and tiled ones with an EXIF orientation (8-bit tiles scrambled by its RGBA-tile path)."""
    tags = _tiff_tags(data)
    return tags.get(277, 1) > 4 or (322 in tags and tags.get(274, 1) != 1)


def _decode_by(path: Path, data: bytes) -> tuple[np.ndarray, str]:
    """Decode with OpenCV (GIF with Pillow), falling back to imageio; and which decoder did it:
    ``"opencv"``, ``"pillow"`` or ``"imageio"``. Pixels a decoder reports as damaged (see
    :func:`_damage`) are refused, not returned."""
    arr = None
    said: list[str] = []
    if path.suffix.lower() == ".gif":
        gif = _decode_gif(data)
        if gif is not None:
            return gif, "pillow"
    elif _opencv_misreads_tiff(data):
        pass  # imageio (tifffile) reads it; the orientation is applied afterwards
    else:
        buf = np.frombuffer(data, np.uint8)
        try:
            with _decoder_messages() as said:
                arr = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)
        except cv2.error:
            raise ImageReadError("cannot decode as an image (too large or damaged for OpenCV)",
                                 path) from None
        damage = _damage(said) if arr is not None else None
        if damage is not None:
            raise ImageReadError(f"damaged image data: the decoder says {damage!r}", path)
        if arr is not None:
            arr = _swap_red_blue(arr)
    if arr is None:
        try:
            import imageio.v3 as iio  # imported on first use: it costs start-up time

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # plugin deprecation noise while probing
                arr = iio.imread(data, extension=path.suffix.lower() or None)  # type: ignore[arg-type]
        except Exception as exc:  # imageio raises many types for bad data
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            if "backend" in reason or len(reason) > 120:
                reason = "no decoder recognises its content"
            elif "Could not read index" in reason:  # imageio found no frame it could read
                reason = "no image data could be read from it"
            if said:  # OpenCV's decoder said why it failed (e.g. libpng's 'bad adaptive filter')
                reason = said[0][:160]
            raise ImageReadError(
                f"cannot decode as an image (truncated, damaged or unsupported format: {reason})",
                path,
            ) from None
        return np.asarray(arr), "imageio"
    return np.asarray(arr), "opencv"


def _swap_red_blue(arr: np.ndarray) -> np.ndarray:
    """OpenCV's BGR(A) as RGB(A), or back (the same swap); other layouts as they are."""
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        return arr
    if arr.dtype in (np.uint8, np.uint16, np.float32):  # the depths cvtColor takes: fastest
        return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB if arr.shape[2] == 3 else cv2.COLOR_BGRA2RGBA)
    return np.ascontiguousarray(arr[..., [2, 1, 0, 3][:arr.shape[2]]])  # float64, int32 TIFFs


def _check_count(path: PathLike, n: int, max_pixels: int | None) -> None:
    if max_pixels is not None and n > max_pixels:
        raise ImageTooLargeError(
            f"image has {n:,} pixels, above the limit of {max_pixels:,}", path,
            advice="raise max_pixels if the file is trusted", pixels=n, limit=max_pixels)


def _check_pixels(path: PathLike, shape: tuple[int, ...], max_pixels: int | None) -> None:
    _check_count(path, int(shape[0]) * int(shape[1]), max_pixels)


#: Pillow plugins (module, format) by file ending: opening with the one plugin skips Pillow's
#: loading of all its plugins (about 60 ms per process, on the first TIFF).
_PIL_FORMATS = {".tif": ("TiffImagePlugin", "TIFF"), ".tiff": ("TiffImagePlugin", "TIFF"),
                ".jpg": ("JpegImagePlugin", "JPEG"), ".jpeg": ("JpegImagePlugin", "JPEG"),
                ".png": ("PngImagePlugin", "PNG"), ".webp": ("WebPImagePlugin", "WEBP")}


def _open_pil(data: bytes, suffix: str) -> PIL.Image.Image:
    """``PIL.Image.open`` of ``data``, trying the plugin its ending names first (a file whose
    content does not match its ending is then opened by every plugin)."""
    import importlib

    from PIL import Image, UnidentifiedImageError

    plugin = _PIL_FORMATS.get(suffix.lower())
    if plugin is not None:
        try:
            importlib.import_module(f"PIL.{plugin[0]}")
            return Image.open(_io.BytesIO(data), formats=[plugin[1]])
        except (ImportError, UnidentifiedImageError):
            pass
    return Image.open(_io.BytesIO(data))


def _header(data: bytes, suffix: str = "") -> tuple[int | None, int]:
    """``(width x height, EXIF orientation)`` from the file header, without decoding pixels
    (one Pillow parse; pixels None and orientation 1 where unknown). ``suffix``, the file's
    ending, picks the Pillow plugin to try first.

    Pillow refuses headers above twice its own limit with ``DecompressionBombError``;
    the size it names is taken from the message.
    """

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with _open_pil(data, suffix) as im:
                w, h = im.size
                try:
                    turn = int(im.getexif().get(0x0112, 1))
                except Exception:  # a damaged EXIF block: as stored
                    turn = 1
        return int(w) * int(h), turn if 1 <= turn <= 8 else 1
    except Image.DecompressionBombError as exc:
        found = re.search(r"\((\d+) pixels\)", str(exc))
        return (int(found.group(1)) if found else 2**62), 1
    except Exception:  # unknown or damaged header: the decoder will tell
        return None, 1


def _probe(path: Path, data: bytes, max_pixels: int | None) -> int:
    """Refuse a file whose header declares more than ``max_pixels`` pixels (before decoding,
    against decompression bombs); its EXIF orientation (1 for formats without one)."""
    oriented = path.suffix.lower() in ORIENTED_EXTENSIONS
    if max_pixels is None and not oriented:
        return 1
    pixels, turn = _header(data, path.suffix)
    if max_pixels is not None and pixels is not None:
        _check_count(path, pixels, max_pixels)
    return turn if oriented else 1


#: File endings whose EXIF orientation is honoured (phone-based fundus adapters write it).
ORIENTED_EXTENSIONS = (".jpg", ".jpeg", ".tif", ".tiff", ".png", ".webp")


#: The inverse of each EXIF orientation's turn.
_UNDO = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}


def _orient(path: Path, turn: int, arr: np.ndarray, decoder: str, honour: bool,
            meta: dict | None) -> np.ndarray:
    """Turn decoded pixels as the file's EXIF orientation ``turn`` says (``honour``), or keep
    them as stored. OpenCV's TIFF decoder applies a TIFF's orientation itself (no flag stops
    it), so there the turn is undone instead when the orientation is to be ignored."""
    if turn == 1:
        return arr
    turned_by_opencv = decoder == "opencv" and path.suffix.lower() in (".tif", ".tiff")
    if honour:
        if meta is not None:
            meta["orientation"] = turn
        return arr if turned_by_opencv else apply_orientation(arr, turn)
    return apply_orientation(arr, _UNDO[turn]) if turned_by_opencv else arr


def apply_orientation(arr: np.ndarray, orientation: int) -> np.ndarray:
    """``arr`` turned from its stored orientation into the displayed one (EXIF 1-8)."""
    ops = {
        1: lambda a: a,
        2: lambda a: a[:, ::-1],  # mirrored left-right
        3: lambda a: a[::-1, ::-1],  # rotated 180
        4: lambda a: a[::-1],  # mirrored top-bottom
        5: lambda a: a.swapaxes(0, 1),  # transposed
        6: lambda a: np.rot90(a, -1),  # stored rotated: turn 90 clockwise
        7: lambda a: a[::-1, ::-1].swapaxes(0, 1),  # transversed
        8: lambda a: np.rot90(a, 1),  # turn 90 counter-clockwise
    }
    return np.ascontiguousarray(ops[orientation](arr))


def read_image(path: PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
               orientation: bool = True, meta: dict[str, Any] | None = None) -> np.ndarray:
    """Read an image file as ``(H, W)`` or ``(H, W, 3)`` RGB.

    uint8 and uint16 are kept; other integer types are kept as they are;
    an alpha channel is dropped (use a mask file for the field of view); a
    multi-frame file gives its first frame. With ``orientation`` (the
    default), an EXIF orientation (JPEG, TIFF, PNG, WebP) turns the pixels as
    viewers show them. ``meta``, a dict, receives what was read beside the
    pixels: ``orientation`` (when not 1), and for DICOM files ``pixel_spacing``.

    Parameters
    ----------
    path : path-like
    max_pixels : int or None
        Refuse images declaring more pixels (decompression bombs); None: no limit.
    orientation : bool
        Apply the EXIF orientation.
    meta : dict, optional
        Filled with what was read beside the pixels.

    Returns
    -------
    (H, W) or (H, W, 3) ndarray

    Raises
    ------
    ImageReadError
        Naming the file and the problem (missing, empty, undecodable, too large).
    """
    path = Path(path)
    data = _read_bytes(path)
    arr = _decode_any(path, data, max_pixels, orientation, meta)
    extra_samples = arr.ndim == 3 and 4 < arr.shape[-1] <= 16 < min(arr.shape[:2])
    if arr.ndim == 4 or (arr.ndim == 3 and arr.shape[-1] > 4 and not extra_samples):
        arr = arr[0]  # first frame
    if arr.ndim == 3:
        if arr.shape[-1] == 1:
            arr = arr[..., 0]
        elif arr.shape[-1] == 2:  # gray + alpha
            arr = arr[..., 0]
        elif arr.shape[-1] == 4 and data[:8] == b"\x89PNG\r\n\x1a\n" and data[25:26] == b"\x04":
            arr = arr[..., 0]  # a gray + alpha PNG, which OpenCV decodes as four channels
        elif arr.shape[-1] >= 4:  # RGBA, or RGB with extra samples (a 5-channel TIFF)
            arr = arr[..., :3]
    if arr.ndim not in (2, 3) or min(arr.shape[:2]) < 1:
        raise ImageReadError(f"unsupported image shape {arr.shape}", path)
    _check_pixels(path, arr.shape, max_pixels)
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8) * 255
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ImageReadError(f"unsupported pixel type {arr.dtype}", path)
    return np.ascontiguousarray(arr)


def _decode_file(path: Path, data: bytes, max_pixels: int | None, orientation: bool,
                 meta: dict[str, Any] | None) -> np.ndarray:
    """The pixels of an image file's bytes, as viewers show them (``orientation``) or as
    stored: its header checked against ``max_pixels`` before decoding (decompression bombs)."""
    turn = _probe(path, data, max_pixels)
    arr, decoder = _decode_by(path, data)
    return _orient(path, turn, arr, decoder, orientation, meta)


def _decode_any(path: Path, data: bytes, max_pixels: int | None, orientation: bool,
                meta: dict[str, Any] | None) -> np.ndarray:
    """The pixels of an image or mask file: DICOM (see :func:`_decode_dicom`) or any other."""
    if is_dicom(path, data):
        return _decode_dicom(path, data, meta, max_pixels)
    return _decode_file(path, data, max_pixels, orientation, meta)


def is_dicom(path: Path, data: bytes) -> bool:
    """A DICOM file: named .dcm/.dicom, or with the 'DICM' marker after its 128-byte preamble."""
    return Path(path).suffix.lower() in (".dcm", ".dicom") or data[128:132] == b"DICM"


def _decode_dicom(path: Path, data: bytes, meta: dict[str, Any] | None,
                  max_pixels: int | None) -> np.ndarray:
    """The pixels of a DICOM file (with the :data:`DICOM_EXTRA` installed): colour images in
    RGB (YBR converted), a multi-frame file's first frame; ``meta`` gets ``pixel_spacing``
    (mm per pixel, row then column) where the header has it, and ``frames``."""
    try:
        import pydicom
    except ImportError:
        raise ImageReadError(f"is a DICOM file; reading DICOM needs the optional extra:"
                             f" {DICOM_EXTRA}", path) from None
    try:
        ds = pydicom.dcmread(_io.BytesIO(data), force=True)
        if "PixelData" not in ds:
            raise ImageReadError("DICOM file holds no image (no pixel data)", path)
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
        _check_count(path, rows * cols, max_pixels)
        arr = np.asarray(ds.pixel_array)
    except ImageReadError:
        raise
    except Exception as exc:  # pydicom and its decoder plugins raise many types
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageReadError(f"cannot decode the DICOM pixel data ({reason[:160]})", path) from None
    if frames > 1:
        arr = arr[0]  # the first frame (documented); the count goes into the manifest
    if meta is not None:
        spacing = ds.get("PixelSpacing") or ds.get("ImagerPixelSpacing")
        if spacing is not None and len(spacing) == 2:
            meta["pixel_spacing"] = [float(spacing[0]), float(spacing[1])]
        meta["frames"] = frames
    return arr


def read_mask(path: PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS,
              orientation: bool = True, meta: dict[str, Any] | None = None) -> np.ndarray:
    """Read a field-of-view mask file as a boolean ``(H, W)`` array.

    GIF (palette, RGB or with a frame axis), TIFF, PNG, JPEG and the other
    formats of :func:`read_image`, DICOM included. A pixel above half the
    mask's maximum is inside. ``meta``, a dict, receives ``text``: a PNG's
    text entries (as ``retina-prep mask`` writes them), and ``gray_fraction``
    (:func:`~retina_prep.fov.mask_gray_fraction`: how much of the file is
    neither dark nor bright, for :func:`~retina_prep.fov.check_fov_mask`).

    Parameters
    ----------
    path : path-like
    max_pixels : int or None
    orientation : bool
    meta : dict, optional

    Returns
    -------
    (H, W) bool ndarray

    Raises
    ------
    MaskError
        If the file cannot be read or the mask is empty.
    """
    path = Path(path)
    try:
        data = _read_bytes(path)
        raw = _decode_any(path, data, max_pixels, orientation, None)
        plane, alpha = _mask_plane(raw, path)  # once, for the mask and its gray fraction
        mask = _binarize_plane(plane, alpha, path)
        if meta is not None:
            meta["text"] = _png_text(data)
            meta["gray_fraction"] = _gray_fraction(plane)
        _check_pixels(path, mask.shape, max_pixels)  # formats whose header Pillow cannot read
    except ImageReadError as exc:
        raise MaskError(f"mask {exc.message}", path) from None
    return mask


#: The largest kernel file read (a float64 kernel at the size cap is 128 MB as .npy).
MAX_KERNEL_FILE_BYTES = 256 << 20


def load_kernel(path: PathLike) -> Kernel:
    """Read a kernel from ``.npy`` or a text matrix (whitespace or comma separated, ``#`` comments).

    Raises
    ------
    RetinaPrepError
        If the file is missing, unreadable or not a valid kernel (odd sizes, finite, not all zero).
    """

    path = Path(path)
    try:
        data = _read_bytes(path)  # a regular file: a FIFO given as a kernel would block np.load
    except ImageReadError as exc:
        raise RetinaPrepError(f"kernel {exc.message}", path) from None
    if len(data) > MAX_KERNEL_FILE_BYTES:
        raise RetinaPrepError(f"kernel file is larger than {MAX_KERNEL_FILE_BYTES >> 20} MB", path)
    try:
        if path.suffix.lower() == ".npy":
            arr = np.load(_io.BytesIO(data), allow_pickle=False)
        else:
            text = data.decode("utf-8")
            rows = []
            for line in text.splitlines():
                line = line.split("#", 1)[0].strip()
                if line:
                    rows.append([float(x) for x in line.replace(",", " ").split()])
            if len({len(r) for r in rows}) > 1:
                raise ValueError("rows have different lengths")
            arr = np.array(rows, dtype=np.float64)
        if max(np.shape(arr), default=0) > MAX_KERNEL_SIZE:
            raise ValueError(f"{'x'.join(map(str, np.shape(arr)))} is above the largest kernel,"
                             f" {MAX_KERNEL_SIZE} px a side")
        k = as_kernel(np.atleast_2d(np.asarray(arr, dtype=np.float64)))
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        raise RetinaPrepError(f"not a valid kernel ({exc})", path) from None
    return Kernel(k.array, name=f"custom {path.name}", factors=k.factors, is_box=k.is_box)




def _png_text(data: bytes) -> dict[str, str]:
    """The ``tEXt`` entries before a PNG's image data ({} for other formats)."""
    out: dict[str, str] = {}
    if data[:8] != b"\x89PNG\r\n\x1a\n":
        return out
    pos = 8
    while pos + 8 <= len(data):
        size, kind = struct.unpack(">I", data[pos:pos + 4])[0], data[pos + 4:pos + 8]
        if kind == b"IDAT" or pos + 12 + size > len(data):
            break
        if kind == b"tEXt":
            key, _, value = data[pos + 8:pos + 8 + size].partition(b"\0")
            out[key.decode("latin-1")] = value.decode("latin-1")
        pos += 12 + size
    return out
