"""Encoding and writing files: atomic (a temporary file in the target folder, renamed or
hard-linked into place), several files of one image together or not at all, and the
cleaning of temporaries a killed run left.
"""

from __future__ import annotations

import os
import re
import secrets
import struct
import tempfile
import time
import zlib
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np
from numpy.typing import ArrayLike

from .._types import PathLike
from ..convolution import as_native
from ..errors import (
    FormatError,
    OutputExistsError,
)
from .read import _swap_red_blue

__all__ = ["OUTPUT_FORMATS", "PNG_LEVELS", "check_png_level", "encode_image", "write_image",
           "write_bytes", "write_outputs", "remove_stale_temporaries"]

#: Output formats: name -> file ending.
OUTPUT_FORMATS = {"png": ".png", "tif": ".tif"}


#: Temporary files of atomic writes start with this (and end in ``.part``); only they are cleaned.
_TEMP_PREFIX = ".retina-prep-tmp-"


def _file_mode(folder: PathLike) -> int:
    """The mode a new file gets in ``folder`` (0o666 less the umask), without changing the umask:
    a probe file is created with 0o666 and its mode read back."""
    probe = os.path.join(folder, f"{_TEMP_PREFIX}{secrets.token_hex(4)}.mode")
    fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
    try:
        os.close(fd)
        return os.stat(probe).st_mode & 0o777
    finally:
        os.unlink(probe)


_MODE_CACHE: dict = {}





#: PNG compression levels accepted by :func:`encode_image` (zlib's); None is OpenCV's default,
#: which is both the fastest and the smallest on fundus images (see docs/performance.md).
PNG_LEVELS = tuple(range(10))


def check_png_level(level: object) -> None:
    """Raise ``ValueError`` unless ``level`` is a PNG compression level (0-9) or None."""
    if level is not None and (isinstance(level, bool) or level not in PNG_LEVELS):
        raise ValueError(f"png_level must be 0..9 or None, got {level!r}")


def encode_image(image: ArrayLike, fmt: str = "png", *, png_level: int | None = None,
                 text: dict[str, str] | None = None) -> bytes:
    """Encode ``(H, W)`` or ``(H, W, 3)`` RGB uint8/uint16 (or float for tif) as bytes.

    TIFF takes uint8, uint16, float32 and float64; float16 is written as
    float32 (the same values: OpenCV has no float16 TIFF and wrote garbage);
    any other dtype is refused.

    ``png_level`` (0-9) sets zlib's compression level for PNG: 0 stores, 9
    compresses hardest; None keeps OpenCV's default (fast, with a filter and
    strategy chosen for speed). ``text`` (PNG only) adds Latin-1 ``tEXt``
    entries, keyword to value.
    """
    if fmt not in OUTPUT_FORMATS:
        raise ValueError(f"unknown format {fmt!r}; valid formats: {', '.join(OUTPUT_FORMATS)}")
    check_png_level(png_level)
    arr = as_native(image)
    if fmt == "png" and arr.dtype not in (np.uint8, np.uint16):
        raise FormatError(f"PNG holds 8- or 16-bit images, not {arr.dtype}", code="png-dtype",
                          advice="write TIFF (format 'tif')", dtype=str(arr.dtype))
    if fmt == "tif":
        if arr.dtype == np.float16:
            arr = arr.astype(np.float32)
        elif arr.dtype not in (np.uint8, np.uint16, np.float32, np.float64):
            raise ValueError(f"TIFF output holds uint8, uint16 or float images, not {arr.dtype}")
    if arr.ndim == 3 and arr.shape[2] == 3:
        arr = _swap_red_blue(arr)
    params = [cv2.IMWRITE_PNG_COMPRESSION, png_level] if fmt == "png" and png_level is not None \
        else []
    ok, buf = cv2.imencode(OUTPUT_FORMATS[fmt], arr, params)
    if not ok:
        raise ValueError(f"OpenCV cannot encode a {arr.dtype} {arr.shape} array as {fmt}")
    data = buf.tobytes()
    if text and fmt == "png":
        chunks = b"".join(_png_chunk(b"tEXt", k.encode("latin-1") + b"\0" + v.encode("latin-1"))
                          for k, v in text.items())
        data = data[:_PNG_AFTER_IHDR] + chunks + data[_PNG_AFTER_IHDR:]
    return data


#: A PNG's signature (8 bytes) and IHDR chunk (4 + 4 + 13 + 4 bytes): chunks may follow.
_PNG_AFTER_IHDR = 33


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def write_bytes(path: PathLike, data: bytes, *, overwrite: bool = False) -> Path:
    """Write ``data`` to ``path`` atomically (temporary file + rename).

    The temporary file sits in the target folder, named ``.retina-prep-tmp-*.part``
    (short, so long output names still fit). Without ``overwrite`` the final
    name is claimed with a hard link, which fails if another process created
    it in the meantime (no check-then-rename race).

    Raises
    ------
    OutputExistsError
        If ``path`` exists and ``overwrite`` is False.
    """
    return write_outputs([(path, data)], overwrite=overwrite)[0]


def _stage(path: Path, data: bytes) -> str:
    """Write ``data`` to a new temporary beside ``path`` (with the usual file mode); its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = os.fspath(path.parent)
    mode = _MODE_CACHE.get(folder)
    if mode is None:
        mode = _MODE_CACHE[folder] = _file_mode(folder)
    fd, tmp = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.chmod(tmp, mode)  # mkstemp makes 0600 files; outputs get the usual mode
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return tmp


def _place(tmp: str, path: Path, overwrite: bool) -> None:
    """Move the temporary ``tmp`` to ``path``; without ``overwrite``, claim the name exclusively."""
    if overwrite:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)
    except FileExistsError:
        raise OutputExistsError("output exists", path) from None
    except OSError:  # no hard links here (some network file systems): rename
        if path.exists():
            raise OutputExistsError("output exists", path) from None
        os.replace(tmp, path)
    else:
        os.unlink(tmp)


def write_outputs(items: Sequence[tuple[PathLike, bytes | Callable[[], bytes]]], *,
                  overwrite: bool = False, keep_existing: bool = False) -> list[Path]:
    """Write several files as one unit: all of them, or none.

    ``items`` is a sequence of ``(path, data)`` where ``data`` is bytes or a
    callable returning bytes (called only when the file is to be written).
    Every file is first written to a temporary beside its target; only when
    all temporaries exist are they moved into place. If any step fails, the
    temporaries and the files this call already put in place are removed
    (a file replaced with ``overwrite`` cannot be brought back).

    With ``keep_existing``, targets that exist as regular files are kept as
    they are (a resumed run completing an image whose outputs are partly
    there); the others are written.

    Raises
    ------
    OutputExistsError
        If a target exists and neither ``overwrite`` nor ``keep_existing`` is set.
    """
    targets = [(Path(p), d) for p, d in items]
    todo = []
    for path, data in targets:
        if keep_existing and path.is_file():
            continue
        if (path.exists() or path.is_symlink()) and not overwrite:
            raise OutputExistsError("output exists", path)
        todo.append((path, data))
    staged: list[tuple[str, Path]] = []
    placed: list[Path] = []
    try:
        for path, data in todo:
            staged.append((_stage(path, data() if callable(data) else data), path))
        for tmp, path in staged:
            try:
                _place(tmp, path, overwrite)
            except OutputExistsError:
                if keep_existing and path.is_file():
                    # another run resuming the same folder placed it meanwhile: complete too
                    _unlink_quietly(tmp)
                    continue
                raise
            placed.append(path)
    except BaseException:
        for tmp, _ in staged:
            _unlink_quietly(tmp)
        for path in placed:
            _unlink_quietly(path)
        raise
    return [p for p, _ in targets]


def _unlink_quietly(path: PathLike) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def write_image(path: PathLike, image: ArrayLike, *, fmt: str | None = None, overwrite: bool = False,
                text: dict[str, str] | None = None) -> Path:
    """Encode ``image`` and write it atomically; the format follows the file ending by default.
    ``text``: PNG ``tEXt`` entries (see :func:`encode_image`).

    Parameters
    ----------
    path : path-like
    image : (H, W) or (H, W, 3) ndarray
        RGB; uint8 or uint16 for PNG; TIFF also float32.
    fmt : {"png", "tif"}, optional
        Default: from the ending.
    overwrite : bool
        Replace an existing file (else :class:`~retina_prep.errors.OutputExistsError`).
    text : dict, optional

    Returns
    -------
    Path
        The file written.
    """
    path = Path(path)
    if fmt is None:
        ext = path.suffix.lower()
        fmt = {".png": "png", ".tif": "tif", ".tiff": "tif"}.get(ext)
        if fmt is None:
            raise ValueError(f"cannot tell the output format from {path.name!r}; use .png or .tif")
    if path.exists() and not overwrite:  # refuse before the work of encoding
        raise OutputExistsError("output exists", path)
    return write_bytes(path, encode_image(image, fmt, text=text), overwrite=overwrite)


_TEMP_NAME = re.compile(r"^\.retina-prep-tmp-[A-Za-z0-9_]{8}\.(part|mode)$")


def remove_stale_temporaries(folder: PathLike, *, older_than: float = 600.0) -> int:
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
