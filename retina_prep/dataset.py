"""Finding images and pairing them with FOV masks, without decoding pixels.

Layouts understood:

* image files given directly;
* a DRIVE root (``training/`` and ``test/``, each with ``images/`` and ``mask/``);
* a split folder (``images/`` with ``mask/`` beside it);
* a plain folder of images, with masks named ``<stem>_mask.<ext>`` beside them.

Masks and labels (folders ``mask``, ``masks``, ``1st_manual``, ``2nd_manual``,
``manual*``, files ``*_mask.*``, ``*_manual*``) are never taken as images.
"""

from __future__ import annotations

import hashlib
import os
import stat
import string
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

from ._types import PathLike
from .errors import DatasetError
from .io import IMAGE_EXTENSIONS

__all__ = [
    "Pair", "find_pairs", "find_mask", "find_label", "detect_layout", "shard_pairs",
    "MASK_DIR_NAMES", "LABEL_DIR_NAMES",
]

#: Folder names holding masks.
MASK_DIR_NAMES = ("mask", "masks")
#: Folder names holding manual labels (never images to process).
LABEL_DIR_NAMES = (
    "1st_manual", "2nd_manual", "manual1", "manual2", "labels", "label",
    "truth", "ground_truth", "groundtruth", "gt", "vessels",
)
#: Folder names holding figures (outputs of retina-prep, never inputs).
FIGURE_DIR_NAMES = ("figures", "panels")
#: Folder names holding the images of a split.
IMAGE_DIR_NAMES = ("images", "image")


@dataclass(frozen=True)
class Pair:
    """One image to process.

    Attributes
    ----------
    image : Path
    mask : Path or None
        The FOV mask file, or None when none was given or found.
    mask_source : {"given", "dataset", "none"}
        ``given``: from ``--mask``/``--mask-dir``; ``dataset``: found by the
        layout conventions; ``none``: not found (estimate one).
    rel : PurePath
        Output path relative to the output folder, without a file ending.
    error : str or None
        Why this input cannot be processed although it was found (a folder that
        cannot be listed: ``image`` is the folder); processing it fails with
        this message, so a batch reports it and goes on.
    """

    image: Path
    mask: Path | None
    mask_source: str
    rel: PurePath
    error: str | None = None


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".")


#: File-name endings (of the stem, lower case) of masks and labels in known datasets:
#: DRIVE/HRF masks, DRIVE labels, CHASE_DB1 labels (_1stHO, _2ndHO), STARE labels (.ah, .vk).
LABEL_STEM_ENDINGS = ("_mask", "_fov", "_1stho", "_2ndho", ".ah", ".vk", "_weights")


def _is_mask_or_label_name(p: Path) -> bool:
    stem = p.stem.lower()
    return stem.endswith(LABEL_STEM_ENDINGS) or "_manual" in stem


def _squash(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def _is_skipped_dir(name: str) -> bool:
    n = name.lower()
    return (n in MASK_DIR_NAMES or n in LABEL_DIR_NAMES or n in FIGURE_DIR_NAMES
            or n.startswith("manual") or n.startswith(".") or "groundtruth" in _squash(n)
            or n.startswith("labels"))


class _Listings:
    """Folder listings read once each, so pairing N images with masks beside them costs one
    listing per folder, not one per image (which made pairing quadratic in the folder's size)."""

    def __init__(self) -> None:
        self._masks: dict[str, dict[str, str]] = {}
        self._near: dict[str, dict[str, str]] = {}
        self._entries: dict[str, dict[str, tuple[int, int]] | None] = {}
        self._devices: dict[str, int] = {}

    def entries(self, folder: str) -> dict[str, tuple[int, int]] | None:
        """The entries of ``folder`` by name: ``(kind, inode)``, kind a ``stat.S_IF*`` file type
        from the listing itself (no call per file; 0 for a symbolic link, which the caller
        stats), or None when the folder cannot be listed."""
        if folder in self._entries:
            return self._entries[folder]
        listed: dict[str, tuple[int, int]] = {}
        out: dict[str, tuple[int, int]] | None = listed
        try:
            with os.scandir(folder or ".") as it:
                for entry in it:
                    try:
                        if entry.is_symlink():
                            kind = 0
                        elif entry.is_dir(follow_symlinks=False):
                            kind = stat.S_IFDIR
                        elif entry.is_file(follow_symlinks=False):
                            kind = stat.S_IFREG
                        else:
                            kind = 0  # (a FIFO, a device: the caller stats it)
                        listed[entry.name] = (kind, entry.inode())
                    except OSError:
                        listed[entry.name] = (0, 0)
        except OSError:
            out = None
        self._entries[folder] = out
        return out

    def stat_of(self, path: str) -> tuple[int, int, int] | None:
        """``(mode, device, inode)`` of ``path`` as ``os.stat`` gives them (type bits only), from
        its folder's listing when the listing knows it; None if it does not exist. A link,
        and a name the listing does not hold, are stat-ed."""
        folder, name = os.path.split(path)
        listed = self.entries(folder) if name not in ("", ".", "..") else None
        kind, inode = listed.get(name, (0, 0)) if listed is not None else (0, 0)
        if kind:
            dev = self._devices.get(folder)
            if dev is None:
                dev = self._devices[folder] = os.stat(folder or ".").st_dev
            if kind == stat.S_IFDIR:  # a mount point reports another device: ask the folder
                st = os.stat(path)
                return st.st_mode, st.st_dev, st.st_ino
            return kind, dev, inode
        try:
            st = os.stat(path)
        except (OSError, ValueError):
            return None
        return st.st_mode, st.st_dev, st.st_ino

    def masks(self, folder: str) -> dict[str, str]:
        """The mask files of ``folder`` by the stem of their image (lower case): the first, in
        sorted order, of the image files named ``<stem>_mask.*`` and ``<stem>_fov.*``."""
        found = self._masks.get(folder)
        if found is None:
            groups: dict[str, list[str]] = {}
            for name, (kind, _) in (self.entries(folder) or {}).items():
                low = name.lower()
                if not ("_mask" in low or "_fov" in low) or name.startswith("."):
                    continue
                base, ext = os.path.splitext(low)
                if ext not in IMAGE_EXTENSIONS:
                    continue
                end = "_mask" if base.endswith("_mask") else "_fov" if base.endswith("_fov") else None
                if end is None:
                    continue
                full = os.path.join(folder, name)
                if kind != stat.S_IFREG and not (kind == 0 and os.path.isfile(full)):
                    continue
                groups.setdefault(base[: -len(end)], []).append(full)
            found = {stem: min(paths) for stem, paths in groups.items()}
            self._masks[folder] = found
        return found

    def masks_near(self, parent: str) -> dict[str, str]:
        """The mask of every image stem of folder ``parent``, from the folders
        :func:`find_mask` looks in, the first folder winning (one dict per folder of images)."""
        near = self._near.get(parent)
        if near is None:
            up = os.path.dirname(parent) if parent else ".."
            folders = [os.path.join(up, n) for n in MASK_DIR_NAMES]
            folders += [os.path.join(parent, n) for n in MASK_DIR_NAMES]
            folders.append(parent or ".")
            near = {}
            for folder in reversed(folders):
                near.update(self.masks(folder))
            self._near[parent] = near
        return near


def find_mask(image: Path, *, _listings: _Listings | None = None) -> Path | None:
    """Find the FOV mask of ``image`` by dataset conventions, or None.

    Looks for ``<stem>_mask.<ext>`` in ``mask/`` or ``masks/`` beside the
    image's folder (DRIVE: ``images/21_training.tif`` ->
    ``mask/21_training_mask.gif``), then in the image's own folder.

    Parameters
    ----------
    image : path-like

    Returns
    -------
    Path or None
    """
    path = os.fspath(image)
    parent, name = os.path.split(path)
    stem = os.path.splitext(name)[0].lower()
    listings = _listings or _Listings()
    found = listings.masks_near(parent).get(stem)
    return None if found is None else Path(found)


def find_label(image: Path) -> Path | None:
    """The manual vessel label of ``image`` by dataset conventions, or None.

    DRIVE: ``1st_manual/<NN>_manual1.gif`` beside ``images/``; HRF:
    ``manual1/<stem>.tif``; CHASE_DB1: ``<stem>_1stHO.png`` beside the image;
    STARE: ``<stem>.ah.ppm`` beside the image or in ``labels-ah/``.
    """
    image = Path(image)
    stem = image.stem
    up = image.parent.parent
    candidates = [
        up / "1st_manual" / f"{stem.split('_')[0]}_manual1.gif",
        up / "manual1" / f"{stem}.tif",
        up / "manual1" / f"{stem}.png",
        image.parent / f"{stem}_1stHO.png",
        image.parent / f"{stem}.ah.ppm",
        up / "labels-ah" / f"{stem}.ah.ppm",
    ]
    for c in candidates:
        if c.is_file():
            return c
    return None


def detect_layout(pairs: Sequence[Pair]) -> str:
    """A name for the dataset layout the pairs came from (for display)."""
    names = [p.image.name for p in pairs]
    parts = {part.lower() for p in pairs for part in p.image.parts}
    if any((p.image.parent.parent / "1st_manual").is_dir() for p in pairs):
        return "DRIVE"
    if any(n.lower().startswith("idrid_") for n in names):
        return "IDRiD"
    if any(n.lower().startswith("image_") and n.lower().endswith(".jpg") for n in names):
        return "CHASE_DB1"
    if any(n.lower().startswith("im") and n.lower().endswith(".ppm") for n in names):
        return "STARE"
    if "images" in parts and any((p.image.parent.parent / "manual1").is_dir() for p in pairs):
        return "HRF"
    if "images" in parts:
        return "split folder (images/ + mask/)"
    return "plain folder"


def _walk_images(root: Path, unreadable: list[tuple[Path, str]] | None = None) -> list[Path]:
    """Images below ``root``, sorted, skipping mask and label folders and files. Folders that
    cannot be listed (permissions, a path longer than the system allows) are appended to
    ``unreadable`` as ``(folder, reason)``, not skipped in silence."""
    out: list[Path] = []

    def onerror(exc: OSError) -> None:
        if unreadable is not None:
            unreadable.append((Path(exc.filename if exc.filename is not None else root),
                               exc.strerror or str(exc)))

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror):
        dirnames[:] = sorted(d for d in dirnames if not _is_skipped_dir(d))
        for name in sorted(filenames):
            p = Path(dirpath) / name
            if _is_image(p) and not _is_mask_or_label_name(p):
                out.append(p)
    return out


def _rel_for(path: Path, root: Path | None) -> PurePath:
    if root is None:
        return PurePath(path.stem)
    try:
        relative = path.relative_to(root)
    except ValueError:  # one of them relative to the working folder
        relative = Path(os.path.abspath(path)).relative_to(os.path.abspath(root))
    parts = [p for p in relative.parent.parts if p.lower() not in IMAGE_DIR_NAMES]
    return PurePath(*parts, path.stem)


def find_pairs(
    inputs: Sequence[PathLike],
    *,
    mask: PathLike | None = None,
    mask_dir: PathLike | None = None,
    mask_pattern: str | None = None,
    exclude: Sequence[PathLike] = (),
    missing_ok: bool = False,
    base: PathLike | None = None,
) -> list[Pair]:
    """Find the images named by ``inputs`` and pair each with its mask.

    Parameters
    ----------
    inputs : sequence of path-like
        Image files and/or folders (DRIVE root, split folder, plain folder).
    mask : path-like, optional
        One mask file for every image (one camera, one field of view); its
        size must match each image's.
    mask_dir : path-like, optional
        Folder of masks named by ``mask_pattern``.
    mask_pattern : str, optional
        File name in ``mask_dir`` with ``{stem}`` (the image name without
        ending), for example ``"{stem}_fov.png"``. Default: ``<stem>_mask``
        or ``<stem>_fov`` with any image ending (what ``retina-prep mask``
        writes, and DRIVE's ``.gif``). The name stays inside ``mask_dir``.
    exclude : sequence of path-like
        Folders whose contents are never taken as inputs (the output folder); an input
        folder that is one of them, or inside one, is refused.
    missing_ok : bool
        Keep paths that do not exist as pairs (reading them then fails, for
        that image only) instead of raising.
    base : path-like, optional
        Image files named one by one (not found in a folder) get output names
        relative to ``base``, mirroring their sub-folders (``base/patientX/
        left.jpg`` -> ``patientX/left``) as folder inputs do; without it they
        are named by their file name alone.

    Returns
    -------
    list of Pair, in input order, folders sorted.

    Raises
    ------
    DatasetError
        If an input does not exist, ``mask`` is used with several images, or
        a folder holds no image.
    """
    if mask_pattern is not None:
        check_mask_pattern(mask_pattern)
    excluded = [Path(e).resolve() for e in exclude]
    found: list[tuple[Path, Path | None]] = []
    unreadable: list[tuple[Path, str, Path]] = []
    known: dict[int, tuple[int, int]] = {}  # the file identity of inputs stat-ed here, by index
    listings = _Listings()  # (each folder listed once: its files need no call each)
    for item in inputs:
        p = Path(item)
        try:
            st = listings.stat_of(os.fspath(p))
        except (OSError, ValueError):
            st = None
        mode = st[0] if st is not None else 0
        if stat.S_ISDIR(mode):
            if _inside_any(p, excluded):
                raise DatasetError("the input folder is the output folder or inside it; outputs"
                                   " are never taken as inputs: choose another output folder", p)
            bad: list[tuple[Path, str]] = []
            imgs = [f for f in _walk_images(p, bad) if not _inside_any(f, excluded)]
            unreadable += [(folder, why, p) for folder, why in bad]
            if not imgs and not bad:
                raise DatasetError("no image files found in this folder", p)
            found.extend((f, p) for f in imgs)
        elif stat.S_ISREG(mode) or p.is_symlink() or (missing_ok and not p.exists()):
            folder_name = os.path.basename(os.path.dirname(os.fspath(p)))
            if not (_is_mask_or_label_name(p) or (folder_name and _is_skipped_dir(folder_name))):
                if st is not None and stat.S_ISREG(mode):
                    known[len(found)] = (st[1], st[2])
                found.append((p, _base_of(p, base)))
        else:
            raise DatasetError("no such file or folder", p)

    if not found and not unreadable:
        raise DatasetError("no images to process (mask and label files are never taken as images)")
    found = _unique(found, known)
    pairs = []
    m: Path | None
    for img, root in found:
        if mask is not None:
            m, src = Path(mask), "given"
        elif mask_dir is not None:
            if mask_pattern is None:
                hit = listings.masks(os.fspath(mask_dir)).get(img.stem.lower())
                m = Path(hit) if hit else Path(mask_dir) / f"{img.stem}_mask.png"
            else:
                m = Path(mask_dir) / mask_pattern.format(stem=img.stem)
            src = "given"
        else:
            m = find_mask(img, _listings=listings)
            src = "dataset" if m is not None else "none"
        pairs.append(Pair(img, m, src, _rel_for(img, root)))
    for folder, why, root in unreadable:  # each fails with one line; the rest is processed
        pairs.append(Pair(folder, None, "none", _rel_for(folder / "(folder)", root),
                          error=f"cannot read this folder ({why}); the images in it were not"
                                " processed"))
    return pairs


def _base_of(path: Path, base: PathLike | None) -> Path | None:
    """``base`` as the root of a file named on its own (the file must lie under it)."""
    if base is None:
        return None
    b = Path(base)
    try:
        Path(os.path.abspath(path)).relative_to(os.path.abspath(b))
    except ValueError:
        raise DatasetError(f"is not under the base folder {b}", path) from None
    return Path(os.path.abspath(b))


def check_mask_pattern(pattern: str) -> None:
    """Refuse a mask pattern that is not a plain file name with ``{stem}``.

    Only the field ``{stem}`` is allowed (no attribute access, indexing,
    conversions or format specs), and the name may not leave the mask
    folder (no ``/``, ``..`` or absolute paths).

    Raises
    ------
    DatasetError
    """
    try:
        parts = list(string.Formatter().parse(pattern))
    except ValueError as exc:
        raise DatasetError(f"mask pattern {pattern!r} is not valid ({exc})") from None
    fields = [(f, spec, conv) for _, f, spec, conv in parts if f is not None]
    if not fields or any(f != "stem" or spec or conv for f, spec, conv in fields):
        raise DatasetError(f"mask pattern {pattern!r} must contain {{stem}} and no other field")
    name = pattern.replace("{stem}", "x")
    if "/" in name or "\\" in name or name in (".", "..") or os.path.isabs(name):
        raise DatasetError(f"mask pattern {pattern!r} must be a file name inside the mask folder")


def _inside_any(f: Path, folders: Iterable[Path]) -> bool:
    try:
        r = f.resolve()
    except (OSError, RuntimeError):  # a symlink loop: not inside anything, reading will fail
        return False
    return any(r.is_relative_to(e) for e in folders)


def _unique(found: list[tuple[Path, Path | None]], known: dict[int, tuple[int, int]] | None = None
            ) -> list[tuple[Path, Path | None]]:
    """Drop repeated inputs (the same file named twice, or through links), keeping the first.
    ``known``: file identities already read, by index in ``found``."""
    seen: set = set()
    out = []
    known = known or {}
    for i, (img, root) in enumerate(found):
        try:
            if i in known:
                key: object = known[i]
            else:
                st = os.stat(img)  # one call, where a real path costs one per path component
                key = (st.st_dev, st.st_ino)
        except (OSError, ValueError):
            try:
                key = os.path.realpath(img)
            except (OSError, ValueError, RuntimeError):
                key = str(img)
        if key not in seen:
            seen.add(key)
            out.append((img, root))
    return out


def shard_pairs(pairs: Sequence[Pair], k: int, n: int) -> list[Pair]:
    """The pairs of shard ``k`` of ``n`` (1-based): a deterministic 1/n of them.

    The pairs are ordered by a hash of their output path (``rel``) and dealt
    out in turn, so shard sizes differ by at most one, and a pair's shard is
    the same on every machine whatever the order of the inputs (given the
    same set of inputs, as every task of a job array sees). The n shards
    cover every pair exactly once. Returned in input order.
    """
    if not 1 <= k <= n:
        raise ValueError(f"shard {k}/{n}: K must be between 1 and N")
    keyed = sorted(pairs, key=lambda p: (hashlib.sha1(os.fsencode(p.rel.as_posix())).digest(),
                                         os.fsencode(os.fspath(p.image))))
    mine = {id(p) for i, p in enumerate(keyed) if i % n == k - 1}
    return [p for p in pairs if id(p) in mine]


#: Environment variables of array jobs: (index variable, first index, count variable).
ARRAY_JOB_VARIABLES = (
    ("SLURM_ARRAY_TASK_ID", None, "SLURM_ARRAY_TASK_COUNT"),  # first index: SLURM_ARRAY_TASK_MIN
    ("JOB_COMPLETION_INDEX", 0, None),  # Kubernetes indexed Job
    ("AWS_BATCH_JOB_ARRAY_INDEX", 0, None),  # AWS Batch array job
)


def shard_from_environment(n: int | None = None, environ: Mapping[str, str] | None = None) -> tuple[int, int]:
    """``(k, n)`` of this task of an array job, from SLURM, Kubernetes or AWS Batch variables.

    SLURM gives the index, the first index, the step and the count
    (``--array=0-9``, ``1-10``, or stepped: ``--array=0-8:2`` is 5 tasks,
    0, 2, ... 8); a Kubernetes indexed Job (``JOB_COMPLETION_INDEX``) and an
    AWS Batch array job (``AWS_BATCH_JOB_ARRAY_INDEX``) give a 0-based index
    only, so ``n`` (the number of tasks) must be given. Raises ``ValueError``
    saying what is missing.
    """
    env = os.environ if environ is None else environ
    for var, first, count_var in ARRAY_JOB_VARIABLES:
        if var not in env:
            continue
        step = 1
        try:
            index = int(env[var])
            if first is None:  # SLURM
                first = int(env.get("SLURM_ARRAY_TASK_MIN", "0"))
                step = int(env.get("SLURM_ARRAY_TASK_STEP", "1") or "1")
            if n is None and count_var and count_var in env:
                n = int(env[count_var])
        except ValueError:
            raise ValueError(f"{var}={env[var]!r} is not a whole number") from None
        if n is None:
            raise ValueError(f"{var} gives this task's index but not the number of tasks:"
                             " give it as auto/N")
        if step < 1 or (index - first) % step:
            raise ValueError(f"{var}={index} is not on the array's steps of {step} from {first}")
        k = (index - first) // step + 1
        if not 1 <= k <= n:
            raise ValueError(f"{var}={index} does not fit {n} tasks starting at {first}"
                             + (f" in steps of {step}" if step > 1 else ""))
        return k, n
    names = ", ".join(v for v, _, _ in ARRAY_JOB_VARIABLES)
    raise ValueError(f"no array job found: none of {names} is set")
