"""Named presets: the TOML configs that ship with the package (``configs/`` in the repository).

>>> "drive" in preset_names()
True
>>> preset_path("drive").name
'drive.toml'
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["preset_names", "preset_path", "preset_summary"]


def _folder() -> Path:
    return Path(str(resources.files(__package__) / "presets"))


def preset_names() -> list[str]:
    """The names of the shipped presets, sorted (``"default"``, ``"drive"``, ...)."""
    folder = _folder()
    return sorted(p.stem for p in folder.glob("*.toml")) if folder.is_dir() else []


def preset_path(name: str) -> Path:
    """The file of preset ``name`` (with or without ``.toml``).

    Raises
    ------
    KeyError
        If there is no such preset.
    """
    stem = name[:-5] if name.lower().endswith(".toml") else name
    path = _folder() / f"{stem}.toml"
    if "/" in stem or "\\\\" in stem or not path.is_file():
        raise KeyError(name)
    return path


def preset_summary(name: str) -> str:
    """The first comment line of preset ``name``: what it is for."""
    for line in preset_path(name).read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            return line.lstrip("# ").strip()
    return ""
