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
    "OutputExistsError",
    "DatasetError",
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
        return f"{self.path}: {self.message}"


class ImageReadError(RetinaPrepError):
    """An image file cannot be read or decoded."""


class MaskError(RetinaPrepError):
    """A field-of-view mask is unreadable, empty, or does not fit its image."""


class OutputExistsError(RetinaPrepError):
    """An output file exists and overwriting was not asked for."""


class DatasetError(RetinaPrepError):
    """Inputs cannot be found or paired."""
