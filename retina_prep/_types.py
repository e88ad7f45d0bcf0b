"""Type aliases the modules share (for annotations; nothing here runs)."""

from __future__ import annotations

import os

#: A file path as the library takes it: a ``str`` or any ``os.PathLike`` (``pathlib.Path``).
PathLike = str | os.PathLike[str]
