"""Error types of retina-prep.

Every error the library raises on purpose derives from :class:`RetinaPrepError`.
Errors about a particular file carry its path, so a batch can report
``<file>: <problem>`` in one line.
"""

from __future__ import annotations

import os

__all__ = [
    "RetinaPrepError",
    "ImageReadError",
    "MaskError",
    "NotAMaskError",
    "OutputExistsError",
    "DatasetError",
    "ImageTooLargeError",
    "ValueRangeError",
]


class RetinaPrepError(Exception):
    """Root of all retina-prep errors.

    Parameters
    ----------
    message : str
        What went wrong, and where possible how to fix it.
    path : str or os.PathLike, optional
        The file the error is about.
    """

    def __init__(self, message: str, path: str | os.PathLike | None = None):
        super().__init__(message)
        self.message = message
        self.path = None if path is None else os.fspath(path)

    def __str__(self) -> str:
        if self.path is None:
            return self.message
        return f"{printable(self.path)}: {self.message}"


def printable(name) -> str:
    """A file name on one line: control characters (newlines) escaped, undecodable bytes shown."""
    text = os.fspath(name) if not isinstance(name, str) else name
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                   for ch in text)


class ImageReadError(RetinaPrepError):
    """An image file cannot be read or decoded."""


class MaskError(RetinaPrepError):
    """A field-of-view mask is unreadable, empty, or does not fit its image."""


class NotAMaskError(MaskError):
    """A mask file that does not look like a field-of-view mask of its image: a photograph,
    an inverted mask, or one whose inside is mostly the image's dark background."""


class OutputExistsError(RetinaPrepError):
    """An output file exists and overwriting was not asked for."""


class DatasetError(RetinaPrepError):
    """Inputs cannot be found or paired."""


class ImageTooLargeError(ImageReadError):
    """An image declares more pixels than the limit (a decompression bomb, or a trusted huge file).

    ``pixels`` and ``limit`` hold the numbers, so a caller can word its own advice.
    """

    def __init__(self, message, path=None, *, pixels: int = 0, limit: int = 0):
        super().__init__(message, path)
        self.pixels, self.limit = pixels, limit


class ValueRangeError(RetinaPrepError, ValueError):
    """An image's values do not fit the value range assumed for its dtype (say the range)."""
