"""Error types of retina-prep.

Every error the library raises on purpose derives from :class:`RetinaPrepError`.
Errors about a particular file carry its path, so a batch can report
``<file>: <problem>`` in one line.
"""

from __future__ import annotations

import os
from typing import Any

__all__ = [
    "RetinaPrepError",
    "ImageReadError",
    "MaskError",
    "NotAMaskError",
    "OutputExistsError",
    "DatasetError",
    "ImageTooLargeError",
    "ValueRangeError",
    "FormatError",
    "Notice",
]


class RetinaPrepError(Exception):
    """Root of all retina-prep errors.

    Parameters
    ----------
    message : str
        What went wrong.
    path : str or os.PathLike, optional
        The file the error is about.
    code : str, optional
        A stable name of the problem (the class's :attr:`code` by default), for callers that
        react to it or word their own advice: never parse the message.
    advice : str, optional
        How to fix it, in the library's terms (its parameter names); shown in parentheses
        after the message.
    **params
        The numbers and names the message was made from (``pixels``, ``limit``, ...).

    Examples
    --------
    >>> err = RetinaPrepError("image is empty", "a.png")
    >>> str(err), err.code
    ('a.png: image is empty', 'error')
    """

    #: The default :attr:`code` of errors of this class.
    code: str = "error"

    def __init__(self, message: str, path: str | os.PathLike[str] | None = None, *,
                 code: str | None = None, advice: str | None = None, **params: Any) -> None:
        super().__init__(message)
        self.message = message
        self.path = None if path is None else os.fspath(path)
        if code is not None:
            self.code = code
        self.advice = advice
        self.params = params
        for name, value in params.items():  # (``err.pixels`` as ``err.params["pixels"]``)
            setattr(self, name, value)

    def __str__(self) -> str:
        return self.describe()

    def describe(self, *, advice: bool = True) -> str:
        """``"<path>: <message> (<advice>)"``; without the advice when ``advice`` is false (for
        callers that give their own)."""
        text = self.message if self.advice is None or not advice else f"{self.message} ({self.advice})"
        if self.path is None:
            return text
        return f"{printable(self.path)}: {text}"

    def __reduce__(self) -> tuple[Any, ...]:  # (keyword arguments survive pickling to and from workers)
        return (_rebuild, (type(self), self.message, self.path, self.code, self.advice,
                           self.params))


def _rebuild(cls: type[RetinaPrepError], message: str, path: str | None, code: str,
             advice: str | None, params: dict[str, Any]) -> RetinaPrepError:
    err = cls.__new__(cls)
    RetinaPrepError.__init__(err, message, path, code=code, advice=advice, **params)
    return err


class Notice:
    """A warning about one image: a stable :attr:`code`, the image's path, the parameters,
    the text and the advice (in the library's terms), as :class:`RetinaPrepError` has them.

    ``str(notice)`` is ``"<path>: <text> (<advice>)"``.

    Examples
    --------
    >>> n = Notice("estimated-mask", "no mask found; using an estimated field of view", "a.png")
    >>> str(n), n.code
    ('a.png: no mask found; using an estimated field of view', 'estimated-mask')
    """

    __slots__ = ("code", "text", "path", "advice", "params")

    def __init__(self, code: str, text: str, path: str | os.PathLike[str] | None = None, *,
                 advice: str | None = None, **params: Any) -> None:
        self.code = code
        self.text = text
        self.path = None if path is None else os.fspath(path)
        self.advice = advice
        self.params = params

    def __str__(self) -> str:
        text = self.text if self.advice is None else f"{self.text}; {self.advice}"
        return text if self.path is None else f"{printable(self.path)}: {text}"

    def __repr__(self) -> str:
        return f"Notice({self.code!r}, {str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Notice) and str(self) == str(other) and self.code == other.code

    def __hash__(self) -> int:
        return hash((self.code, str(self)))

    def __reduce__(self) -> tuple[Any, ...]:
        return (_notice, (self.code, self.text, self.path, self.advice, self.params))


def _notice(code: str, text: str, path: str | None, advice: str | None,
            params: dict[str, Any]) -> Notice:
    return Notice(code, text, path, advice=advice, **params)


def printable(name: str | os.PathLike[str]) -> str:
    """A file name on one line: control characters (newlines) escaped, undecodable bytes shown."""
    text = os.fspath(name) if not isinstance(name, str) else name
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii")
                   for ch in text)


class ImageReadError(RetinaPrepError):
    """An image file cannot be read or decoded."""

    code = "read-error"


class MaskError(RetinaPrepError):
    """A field-of-view mask is unreadable, empty, or does not fit its image."""

    code = "mask-error"


class NotAMaskError(MaskError):
    """A mask file that does not look like a field-of-view mask of its image: a photograph,
    an inverted mask, or one whose inside is mostly the image's dark background."""

    code = "not-a-mask"


class OutputExistsError(RetinaPrepError):
    """An output file exists and overwriting was not asked for."""

    code = "output-exists"


class DatasetError(RetinaPrepError):
    """Inputs cannot be found or paired."""

    code = "dataset-error"


class ImageTooLargeError(ImageReadError):
    """An image declares more pixels than the limit (a decompression bomb, or a trusted huge file).

    ``pixels`` and ``limit`` hold the numbers, so a caller can word its own advice.
    """

    code = "too-large"
    pixels: int = 0
    limit: int = 0


class ValueRangeError(RetinaPrepError, ValueError):
    """An image's values do not fit the value range assumed for its dtype (say the range)."""

    code = "value-range"


class FormatError(RetinaPrepError, ValueError):
    """An output format cannot hold the image (a float image as PNG)."""

    code = "format"
