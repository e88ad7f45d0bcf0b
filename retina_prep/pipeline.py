"""Per-image steps: read an image and its mask, process, write the output.

These glue :mod:`io`, :mod:`fov` and the array functions together for one
:class:`~retina_prep.dataset.Pair`; :mod:`batch` runs them over many.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .batch import Result
from .clahe import CLAHE_COLOURS, DEFAULT_CLIP_LIMIT, DEFAULT_TILES, masked_clahe
from .convolution import MODES, masked_filter
from .dataset import Pair, find_label
from .errors import MaskError, Notice, OutputExistsError, RetinaPrepError
from .figures import PANEL_WIDTH
from .first_order import DEFAULT_RIDGE
from .fov import (
    channel_max,
    check_fov_mask,
    erode_mask,
    estimate_fov,
    feather_mask,
    fov_diameter,
    trim_rim,
)
from .geometry import Transform, fov_bounds, fov_transform, warp
from .io import (
    DEFAULT_MAX_PIXELS,
    IMAGE_EXTENSIONS,
    OUTPUT_FORMATS,
    check_png_level,
    encode_image,
    read_image,
    read_mask,
)
from .kernels import Kernel, make_kernel
from .normalize import (
    DEFAULT_SCALE,
    DEFAULT_TARGET,
    KERNELS,
    METHODS,
    ORDERS,
    PreparedMask,
    check_kernel_args,
    dtype_scale,
    normalize_illumination,
    prepare_mask,
)

if TYPE_CHECKING:  # (steps import this module)
    from .steps import Caches

__all__ = [
    "MaskSettings", "NormalizeSettings", "OutputSettings", "load_pair", "output_path",
    "normalize_pair", "mask_pair", "resolve_erode", "parse_erode", "resolve_order",
    "AUTO_ERODE_FRACTION", "RIM_CHOICES",
    "trim_mask",
    "GeometrySettings",
    "apply_geometry",
    "read_transforms",
    "match_transform",
    "restore_pair",
    "restore_outputs",
    "FilterSettings",
    "filter_array",
    "filter_pair",
    "filter_columns",
    "normalize_columns",
    "compare_pair",
    "normalize_loaded",
    "normalize_outputs",
    "filter_outputs",
    "mask_outputs",
    "read_fov",
    "evaluate_pair",
    "read_labels",
]

#: Rim handling: "auto" trims the transition rim (:func:`~retina_prep.fov.trim_rim`),
#: "none" keeps it (the mask as given), "default" is "auto" for every mask except a mask file
#: that `retina-prep mask` wrote with its rim already trimmed (used as given).
RIM_CHOICES = ("default", "auto", "none")

#: What ``normalize`` can do: the local mean (the mask-convolution paper), masked local
#: standardization, and masked CLAHE (:mod:`retina_prep.clahe`).
NORMALIZE_METHODS = (*METHODS, "clahe")

#: ``erode="auto"`` erodes by this fraction of the FOV diameter (6 px on DRIVE).
AUTO_ERODE_FRACTION = 0.011


@dataclass(frozen=True)
class MaskSettings:
    """How the FOV mask of an image is obtained and trimmed."""

    auto_mask: bool = False  # estimate the mask even when a mask file exists
    erode: float | str = 0  # pixels, or "auto"
    rim: str = "default"  # "auto", "none", or "default": auto unless the file is trimmed already
    feather: float = 0.0  # pixels of soft margin (0: binary mask)
    max_pixels: int | None = DEFAULT_MAX_PIXELS
    ignore_orientation: bool = False  # pixels as stored, not turned by the EXIF orientation
    check: bool = True  # refuse mask files that are not a FOV mask of their image (check_fov_mask)

    def __post_init__(self) -> None:
        parse_erode(self.erode)
        if self.rim not in RIM_CHOICES:
            raise ValueError(f"unknown rim handling {self.rim!r}; valid: {', '.join(RIM_CHOICES)}")


@dataclass(frozen=True)
class OutputSettings:
    """How a step writes its files, apart from what it computes: the file format, and what
    happens to outputs that exist (refused; ``overwrite``: replaced; ``keep_existing``:
    kept, the others written -- resuming a run)."""

    format: str = "png"
    overwrite: bool = False
    keep_existing: bool = False
    png_level: int | None = None  # zlib level 0-9; None: OpenCV's default (fast and small)

    def __post_init__(self) -> None:
        if self.format not in OUTPUT_FORMATS:
            raise ValueError(
                f"unknown format {self.format!r}; valid formats: {', '.join(OUTPUT_FORMATS)}")
        if self.overwrite and self.keep_existing:
            raise ValueError("overwrite and keep_existing exclude each other")
        check_png_level(self.png_level)

    def encode(self, image: np.ndarray) -> bytes:
        """``image`` encoded in this format."""
        return encode_image(image, self.format, png_level=self.png_level)


@dataclass(frozen=True)
class GeometrySettings:
    """The geometry of the outputs, for learning pipelines (see :mod:`~retina_prep.geometry`):
    processing runs at native resolution (windows keep their physical size), then the
    result is cropped to the FOV's bounding square (``crop``) and/or resized to ``resize`` x
    ``resize``; the mask (``write_mask``) and label images (``labels``: ``"auto"`` by
    dataset conventions, or a folder) are cut the same way and written alongside."""

    crop: bool = False
    resize: int | None = None
    write_mask: bool = False
    labels: str | Path | None = None

    def __post_init__(self) -> None:
        if self.resize is not None and (isinstance(self.resize, bool) or int(self.resize) != self.resize
                                        or self.resize < 1):
            raise ValueError(f"resize must be a number of pixels >= 1, got {self.resize!r}")

    @property
    def transforms(self) -> bool:
        """Whether outputs are cut or resized."""
        return self.crop or self.resize is not None

    def outputs(self, image_out: Path) -> dict[str, Path]:
        """The extra files beside an output image ``OUT/<rel>.<ext>``, by role: ``"mask"``
        (``<rel>_mask.png``) and ``"labels"`` (``<rel>_label.png``), as asked for."""
        extra = {}
        if self.write_mask:
            extra["mask"] = image_out.with_name(image_out.stem + "_mask.png")
        if self.labels is not None:
            extra["labels"] = image_out.with_name(image_out.stem + "_label.png")
        return extra


@dataclass(frozen=True)
class NormalizeSettings:
    """Options of illumination normalization (see :func:`normalize_illumination`)."""

    window: int | str | None = None  # None: "auto", or 2*ceil(3*sigma)+1 for a Gaussian's sigma
    kernel: str = "mean"
    sigma: float | str | None = None  # pixels, or "auto" (gaussian: the FOV diameter / 60)
    target: float = DEFAULT_TARGET
    fill: float = 0.0
    ignore_mask: bool = False
    method: str = "mean"
    scale: float = DEFAULT_SCALE
    gain: float = 1.0  # method "mean": I0 + gain * (I - mean)
    value_range: tuple[float, float] | None = None  # None: the dtype's range
    order: int | str = "auto"  # 0, 1, or "auto": 1 when the mask is trimmed (see resolve_order)
    ridge: float = DEFAULT_RIDGE
    clip_limit: float = DEFAULT_CLIP_LIMIT  # method "clahe" (masked CLAHE)
    tiles: int = DEFAULT_TILES  # method "clahe": an N x N grid
    clahe_on: str = "lab"  # method "clahe": L of Lab, each channel, or one channel

    def __post_init__(self) -> None:
        if self.order not in ("auto", *ORDERS):
            raise ValueError(f"order must be 0, 1 or 'auto', got {self.order!r}")
        if not (math.isfinite(self.ridge) and self.ridge >= 0):
            raise ValueError(f"ridge must be a number >= 0, got {self.ridge!r}")
        if self.order == 1 and self.method != "mean":
            raise ValueError("order 1 applies to method 'mean' only")
        if self.method not in NORMALIZE_METHODS:
            raise ValueError(f"unknown method {self.method!r}; valid methods:"
                             f" {', '.join(NORMALIZE_METHODS)}")
        if not (math.isfinite(self.clip_limit) and self.clip_limit >= 0):
            raise ValueError(f"clip limit must be a number >= 0, got {self.clip_limit!r}")
        if not 1 <= int(self.tiles) <= 256:
            raise ValueError(f"tiles must be 1 to 256, got {self.tiles!r}")
        if self.clahe_on not in CLAHE_COLOURS:
            raise ValueError(f"CLAHE on {self.clahe_on!r}? valid: {', '.join(CLAHE_COLOURS)}")
        if not (math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"scale must be a positive number, got {self.scale!r}")
        if not (math.isfinite(self.gain) and self.gain > 0):
            raise ValueError(f"gain must be a positive number, got {self.gain!r}")
        if self.gain != 1 and self.method != "mean":
            raise ValueError("gain applies to method 'mean' only (standardize has scale)")
        # the kernel's name, size and sigma are checked where kernels are made
        if self.kernel not in KERNELS:
            raise ValueError(f"unknown kernel {self.kernel!r}; valid kernels: {', '.join(KERNELS)}")
        check_kernel_args(self.kernel, self.window, self.sigma)
        if not math.isfinite(self.target):
            raise ValueError("target must be a finite number")


def parse_erode(erode: float | str) -> float | str:
    """An erosion setting checked: a finite number of pixels >= 0, or ``"auto"``."""
    if isinstance(erode, str):
        if erode.strip().lower() == "auto":
            return "auto"
        try:
            erode = float(erode)
        except ValueError:
            raise ValueError(f"erode must be a number of pixels or 'auto', got {erode!r}") from None
    try:
        value = float(erode)
    except (TypeError, ValueError):
        raise ValueError(f"erode must be a number of pixels or 'auto', got {erode!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"erode must be >= 0 pixels, got {erode!r} (negative or not finite)")
    if value > MAX_ERODE:
        raise ValueError(f"erode must be at most {MAX_ERODE} pixels, got {erode!r}")
    return value


#: The deepest erosion taken (a mistyped 1e300 failed per image with an OverflowError).
MAX_ERODE = 10_000


def resolve_erode(erode: float | str, mask: np.ndarray) -> int:
    """Erosion in pixels: a number >= 0, or ``"auto"`` (a fraction of the FOV diameter)."""
    erode = parse_erode(erode)
    if erode == "auto":
        return int(round(AUTO_ERODE_FRACTION * fov_diameter(mask)))
    return int(round(float(erode)))


def load_pair(pair: Pair, settings: MaskSettings = MaskSettings(),
              value_range: tuple[float, float] | None = None, caches: Caches | None = None
              ) -> tuple[np.ndarray, np.ndarray, dict]:
    """Read the image and its mask (or estimate one), trim its rim and erode it as
    ``settings`` say (``value_range``: what the image's values span, if not its dtype's range).
    With ``caches`` (:class:`~retina_prep.steps.Caches`), a mask file read for an earlier image
    with the same settings is not read again (it is then read-only).

    Returns
    -------
    image : ndarray
    mask : (H, W) bool ndarray, eroded
    info : dict
        ``mask_source`` ("given", "dataset", "estimated"), ``erode`` (px),
        and ``warnings`` (list of :class:`~retina_prep.errors.Notice`).
    """
    image, _, mask, info = _load(pair, settings, value_range, caches)
    return image, mask, info


def _mask_key(pair: Pair, settings: MaskSettings) -> tuple | None:
    """The cache key of the trimmed mask of ``pair``, or None when it is not cacheable (no mask
    file, or a rim trim that looks at the image: rim "auto", and "default")."""
    if pair.mask is None or settings.auto_mask or settings.rim != "none":
        return None  # rim "auto" and "default" trim each image's mask by looking at the image
    try:
        st = os.stat(pair.mask)
    except OSError:
        return None  # read_mask reports it
    return (os.path.abspath(pair.mask), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
            pair.mask_source, settings)


def _load(pair: Pair, settings: MaskSettings, value_range: tuple[float, float] | None = None,
          caches: Caches | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict]:
    """Image, untrimmed FOV, trimmed mask and info (see :func:`load_pair`); ``value_range`` is
    what the image's values span, for the rim trim, when it is not the dtype's range. With
    ``caches`` (:class:`~retina_prep.steps.Caches`) a mask file met before is not read again."""
    meta: dict = {}
    image = read_image(pair.image, max_pixels=settings.max_pixels,
                       orientation=not settings.ignore_orientation, meta=meta)
    key = None if caches is None else _mask_key(pair, settings)
    hit = None if caches is None or key is None else caches.masks.get(key)
    if hit is not None:
        fov, mask, info, uses = hit
        _check_mask_file(fov, image, pair, settings)  # the file passed; this image must fit it
        uses[0] += 1
        return image, fov, mask, {**info, **meta, "warnings": []}
    file_meta: dict = {}
    fov, source, warnings, est = read_fov(pair, image, settings, return_estimate=True,
                                          meta=file_meta)
    # a mask `mask` wrote with its rim trimmed (see mask_pair) is not trimmed twice by default
    pre_trimmed = file_meta.get("text", {}).get(MASK_TEXT_KEY) == MASK_TRIMMED
    mask, info = trim_mask(image, fov, settings, path=pair.mask or pair.image,
                           trimmed=pre_trimmed, value_range=value_range)
    info = {"mask_source": source, **info}
    if pre_trimmed:
        info["mask_trimmed"] = True
    if est is not None:
        info["fov_estimate"] = est.summary()
    if caches is not None and key is not None and not warnings:
        for a in (fov, mask):
            a.setflags(write=False)  # shared by the images of this mask: read-only
        caches.masks.put(key, (fov, mask, dict(info), [0]))
    return image, fov, mask, {**info, **meta, "warnings": warnings}


def _check_mask_file(mask: np.ndarray, image: np.ndarray, pair: Pair, settings: MaskSettings,
                     gray_fraction: float | None = None) -> None:
    """A mask file must have the image's size and (unless ``settings.check`` is off) look like
    the image's field of view (:func:`~retina_prep.fov.check_fov_mask`, naming the file)."""
    if mask.shape != image.shape[:2]:
        raise MaskError(
            f"mask {pair.mask} is {mask.shape[1]}x{mask.shape[0]} px but the image is"
            f" {image.shape[1]}x{image.shape[0]} px",
            pair.image,
        )
    if settings.check:
        try:
            check_fov_mask(mask, image, gray_fraction=gray_fraction)
        except MaskError as exc:
            raise type(exc)(exc.message, pair.mask) from None


def read_fov(pair: Pair, image: np.ndarray, settings: MaskSettings = MaskSettings(), *,
             return_estimate: bool = False, meta: dict | None = None) -> tuple:
    """The untrimmed FOV of ``pair``: from its mask file, else estimated.

    Returns (mask, source, warnings), and the :class:`~retina_prep.fov.FovEstimate`
    (None for mask files) with ``return_estimate``. An estimate of low
    confidence adds a warning. ``meta`` receives what :func:`~retina_prep.io.read_mask`
    read beside a mask file's pixels.
    """
    warnings = []
    est = None
    if pair.mask is not None and not settings.auto_mask:
        meta = {} if meta is None else meta
        mask = read_mask(pair.mask, max_pixels=settings.max_pixels,
                         orientation=not settings.ignore_orientation, meta=meta)
        _check_mask_file(mask, image, pair, settings, meta.get("gray_fraction"))
        source = pair.mask_source
    else:
        try:
            est = estimate_fov(image, details=True)
        except MaskError as exc:
            raise MaskError(exc.message, pair.image) from None
        mask = est.mask
        source = "estimated"
        if not settings.auto_mask:
            warnings.append(Notice("estimated-mask", "no mask found; using an estimated field"
                                   " of view", pair.image))
        if est.low_confidence:
            # one wording for every image (the score is in the manifest), so a batch counts them
            # as one kind of warning
            warnings.append(Notice("low-confidence", "estimated field of view has low confidence"
                                   " (part of its contour is not a clear disc edge)", pair.image,
                                   advice="check it, or give a mask file",
                                   confidence=round(float(est.confidence), 4)))
    if return_estimate:
        return mask, source, warnings, est
    return mask, source, warnings


def trim_mask(image: np.ndarray, mask: np.ndarray, settings: MaskSettings, *,
              path: str | os.PathLike | None = None, trimmed: bool = False,
              value_range: tuple[float, float] | None = None) -> tuple[np.ndarray, dict]:
    """Apply rim trimming and erosion as ``settings`` say; returns (mask, info).

    ``rim="default"`` trims every mask, estimated or from a file, unless ``trimmed`` says the
    mask file had its rim trimmed when it was written."""
    rim = settings.rim
    if rim == "default":
        rim = "none" if trimmed else "auto"
    px = resolve_erode(settings.erode, mask)
    rim_info: dict[str, Any] = {}
    try:
        if rim == "auto":
            mask, rim_info = trim_rim(image, mask, value_range=value_range, return_info=True)
        mask = erode_mask(mask, px)
    except MaskError as exc:
        raise MaskError(exc.message, path) from None
    if settings.feather:
        mask = feather_mask(mask, settings.feather)
    return mask, {"rim": rim, **rim_info, "erode": px, "feather": settings.feather}


def output_path(outdir: str | os.PathLike, pair: Pair, fmt: str) -> Path:
    """Where the output of ``pair`` goes: ``OUTDIR/<rel>.<ext>``."""
    return Path(outdir) / pair.rel.with_suffix(OUTPUT_FORMATS[fmt])


def _check_output(out: Path, pair: Pair, overwrite: bool, keep_existing: bool = False) -> None:
    """Refuse to overwrite an input (ever) or an existing output (without ``overwrite``;
    with ``keep_existing`` an existing output is kept and not an error)."""
    if not out.exists():
        return
    for src in (pair.image, pair.mask):
        if src is not None and os.path.exists(src) and os.path.samefile(out, src):
            raise RetinaPrepError("output would overwrite an input; choose another output folder",
                                  out)
    if not overwrite and not (keep_existing and out.is_file()):
        raise OutputExistsError("output exists", out)


#: The PNG text entry `mask` writes into a mask whose rim it trimmed (or eroded): read back as a
#: mask file, it counts as trimmed, so order "auto" is the same as on the estimate itself.
MASK_TEXT_KEY, MASK_TRIMMED = "retina-prep", "fov mask, rim trimmed"


def _trimmed(info: dict) -> bool:
    """Whether a mask's rim was removed: trimmed here, eroded, or by `mask` before (its file)."""
    return info.get("rim") == "auto" or bool(info.get("erode")) or bool(info.get("mask_trimmed"))


def resolve_order(order: int | str, mask_info: dict | None,
                  name: str | os.PathLike | None = None) -> int:
    """The order to run: ``"auto"`` is 1 when the mask was trimmed (rim trim or erosion, as
    ``mask_info`` from :func:`load_pair` says) and 0 otherwise. An explicit 1 on an untrimmed
    mask adds a warning about image ``name`` to ``mask_info["warnings"]``, since a plane
    extrapolates a dark rim inward."""
    info = mask_info or {}
    trimmed = _trimmed(info)
    if order == "auto":
        return 1 if trimmed else 0
    if order == 1 and mask_info is not None and not trimmed:
        mask_info.setdefault("warnings", []).append(Notice(
            "order1-untrimmed", "order 1 on an untrimmed mask extrapolates any dark rim at the"
            " margin inward", name, advice="trim the rim (rim 'auto') or erode the mask"))
    return int(order)


def _run_normalize(image: np.ndarray, mask: np.ndarray | PreparedMask | None, kernel: Kernel | None,
                   settings: NormalizeSettings, ignore_mask: bool, order: int = 0) -> np.ndarray:
    if settings.method == "clahe":
        if settings.value_range is not None:  # (masked_clahe refuses other dtypes itself)
            raise ValueError("CLAHE takes 8- or 16-bit images as they are, not a value range")
        return masked_clahe(image, None if ignore_mask or mask is None else np.asarray(mask) > 0,
                            clip_limit=settings.clip_limit, tiles=settings.tiles,
                            colour=settings.clahe_on, fill=settings.fill)
    return normalize_illumination(
        image, mask, kernel=kernel, target=settings.target, fill=settings.fill,
        ignore_mask=ignore_mask, method=settings.method, scale=settings.scale, gain=settings.gain,
        value_range=settings.value_range, order=order, ridge=settings.ridge,
    )


def normalize_loaded(image: np.ndarray, mask: np.ndarray,
                     settings: NormalizeSettings = NormalizeSettings(),
                     mask_info: dict | None = None, name: str | os.PathLike | None = None, *,
                     caches: Caches | None = None) -> tuple[np.ndarray, Kernel, int]:
    """Normalize an image already read (and its prepared mask): ``(result, kernel, order)``.
    ``mask_info`` (from :func:`load_pair`) decides ``order="auto"`` and gets any warning
    about image ``name`` (see :func:`resolve_order`). With ``caches``, a mask file's mask that
    earlier images used too is prepared once (its filters and plane geometry)."""
    kernel = make_kernel(settings.kernel, settings.window, settings.sigma, mask=mask)
    order = resolve_order(settings.order if settings.method == "mean" else 0, mask_info, name)
    if mask_info is not None and settings.value_range is None:
        few = _few_bits(image)
        if few:
            mask_info.setdefault("warnings", []).append(Notice(
                "few-bits", f"16-bit image with {few}-bit values: I0 and the output use the"
                " whole 16-bit range, so the result is nearly flat gray", name,
                advice=f"if the data is {few}-bit, give value range 0,{2 ** few - 1}",
                bits=few, high=2 ** few - 1))
    if (caches is not None and settings.method == "mean" and not settings.ignore_mask
            and mask is not None and caches.shared(mask)):
        # a mask shared with earlier images: its filters and plane geometry are computed once
        key = (id(mask), settings.kernel, settings.window, settings.sigma, order, settings.ridge)
        prepared = caches.prepared.get(key)
        if prepared is None or prepared.mask is not mask:
            prepared = prepare_mask(mask, kernel=kernel, order=order, ridge=settings.ridge)
            caches.prepared.put(key, prepared)
        result = _run_normalize(image, prepared, None, settings, False, order)
    else:
        result = _run_normalize(image, mask, kernel, settings, settings.ignore_mask, order)
    return result, kernel, order


def _few_bits(image: np.ndarray) -> int | None:
    """For a uint16 image whose values all fit in at most 14 bits (10-, 12- and 14-bit sensor
    data stored in 16-bit files), that bit count; else None."""
    if image.dtype != np.uint16:
        return None
    top = int(image.max())
    bits = max(8, top.bit_length())
    return bits if bits <= 14 else None


def normalize_outputs(pair: Pair, outdir: str | os.PathLike,
                      output: OutputSettings = OutputSettings(),
                      panels_dir: str | os.PathLike | None = None,
                      geometry: GeometrySettings = GeometrySettings()
                      ) -> list[Path]:
    """The files :func:`normalize_pair` writes: the image, the mask and label images that
    ``geometry`` asks for, and the panel with ``panels_dir``
    (:meth:`~retina_prep.steps.NormalizeStep.outputs`)."""
    from .steps import NormalizeStep

    return NormalizeStep(Path(outdir), output_settings=output,
                         panels_dir=None if panels_dir is None else Path(panels_dir),
                         geometry=geometry).output_list(pair)


def apply_geometry(pair: Pair, result: np.ndarray, fov: np.ndarray, mask: np.ndarray,
                   geometry: GeometrySettings, *, fill: float = 0.0,
                   max_pixels: int | None = DEFAULT_MAX_PIXELS
                   ) -> tuple[np.ndarray, dict[str, np.ndarray], Transform | None, dict | None]:
    """Cut ``result`` (and the mask and labels ``geometry`` asks for) as it says.

    ``fov`` is the untrimmed field of view (its bounding square is the crop), ``mask`` the
    trimmed mask the result was computed with (written with ``write_mask``). Returns
    ``(result, extras, transform, info)``: ``extras`` the cut arrays asked for, by role
    (``"mask"``, ``"labels"``: the files of :meth:`GeometrySettings.outputs`);
    ``transform`` (for other arrays of the image) and ``info``, the record for the manifest,
    are None when nothing was cut or resized.
    """
    info = None
    transform = None
    if geometry.transforms:
        transform = fov_transform(fov, crop=geometry.crop, size=geometry.resize)
        x, y, w, h = fov_bounds(fov)
        info = {**transform.to_dict(), "fov_centre": [x + (w - 1) / 2, y + (h - 1) / 2],
                "fov_radius": max(w, h) / 2, "fov_bounds": [x, y, x + w, y + h]}
        # the padding gets the value the result already has outside the FOV (the fill, in the
        # result's own units and range); with no outside pixel, fill (8-bit units) scaled
        outside = ~(mask > 0)
        if outside.any():
            level = float(np.asarray(result[outside][0]).ravel()[0])
        else:
            level = fill * dtype_scale(result.dtype)
            if np.issubdtype(result.dtype, np.integer):
                limits = np.iinfo(result.dtype)
                level = float(np.clip(round(level), limits.min, limits.max))
        result = warp(result, transform, interpolation="area", fill=level)
    cut_mask = mask > 0
    if transform is not None:
        # the cut mask (nearest) decides what is inside: area averaging blends the margin's
        # outermost pixels with the fill, and those are set to the fill, as outside the FOV
        cut_mask = warp(cut_mask, transform)
        result[~cut_mask] = level
    extras: dict[str, np.ndarray] = {}
    if geometry.write_mask:
        extras["mask"] = cut_mask.view(np.uint8) * np.uint8(255)
    if geometry.labels is not None:
        label_path = (find_label(pair.image) if geometry.labels == "auto"
                      else _label_in(geometry.labels, pair.image))
        if label_path is None:
            where = "by dataset conventions" if geometry.labels == "auto" else f"in {geometry.labels}"
            raise RetinaPrepError(f"no label image found {where}", pair.image)
        labels = read_image(label_path, max_pixels=max_pixels)
        if labels.ndim == 3 and (labels == labels[..., :1]).all():
            labels = np.ascontiguousarray(labels[..., 0])  # gray stored as RGB (DRIVE's GIFs)
        if labels.shape[:2] != fov.shape:
            raise MaskError(f"labels are {labels.shape[1]}x{labels.shape[0]} px but the image is"
                            f" {fov.shape[1]}x{fov.shape[0]} px", label_path)
        extras["labels"] = warp(labels, transform, interpolation="nearest") if transform else labels
        if info is not None:
            info["labels"] = str(label_path)
    return result, extras, transform, info


def normalize_pair(
    pair: Pair,
    outdir: str | os.PathLike,
    settings: NormalizeSettings = NormalizeSettings(),
    mask_settings: MaskSettings = MaskSettings(),
    *,
    panels_dir: str | os.PathLike | None = None,
    panels_compare: bool = False,
    output: OutputSettings = OutputSettings(),
    panel_width: int | None = PANEL_WIDTH,
    geometry: GeometrySettings = GeometrySettings(),
    caches: Caches | None = None,
) -> Result:
    """Normalize one image and write ``OUTDIR/<rel>.<format>``: a
    :class:`~retina_prep.steps.NormalizeStep` run once (see there).

    With ``panels_dir``, also write a labelled panel ``PANELS/<rel>.png``:
    original | normalized, or with ``panels_compare`` the mask-convolution
    paper's Fig. 4: without IN | IN without mask | IN with mask. The outputs
    of an image are written together or not at all; ``output`` says the
    format and what happens to outputs that exist. ``caches`` lets images
    that share one mask file read and prepare it once.
    """
    from .steps import Caches, NormalizeStep

    return NormalizeStep(Path(outdir), settings, mask_settings, output,
                         None if panels_dir is None else Path(panels_dir), panels_compare,
                         panel_width, geometry, caches or Caches())(pair)


def mask_outputs(pair: Pair, outdir: str | os.PathLike) -> list[Path]:
    """The file :func:`mask_pair` writes: ``OUTDIR/<rel>_mask.png``."""
    from .steps import MaskStep

    return MaskStep(Path(outdir)).output_list(pair)


def mask_pair(pair: Pair, outdir: str | os.PathLike, mask_settings: MaskSettings = MaskSettings(), *,
              overwrite: bool = False, thumb_width: int | None = None) -> Result:
    """Estimate the FOV of one image and write ``OUTDIR/<rel>_mask.png`` (0/255): a
    :class:`~retina_prep.steps.MaskStep` run once.

    Existing mask files are not used: the mask always comes from the image.
    With ``thumb_width``, ``result.products["thumb"]`` holds a thumbnail with
    the contour drawn, for a contact sheet.
    """
    from .steps import MaskStep

    return MaskStep(Path(outdir), mask_settings, overwrite, thumb_width)(pair)


@dataclass(frozen=True)
class FilterSettings:
    """Options of masked filtering (see :func:`~retina_prep.core.masked_filter`)."""

    kernel: Kernel | str  # a Kernel, or a name sized by window/sigma per image (make_kernel)
    mode: str = "normalized"
    ignore_mask: bool = False
    window: int | str | None = None  # for named kernels: pixels, "auto", or None (make_kernel)
    sigma: float | None = None
    offset: float | None = None  # 8-bit units; None: mid-gray for zero-sum kernels, else 0
    fill: float = 0.0
    dtype: str = "same"  # "same" as the input, or "float32" (tif only)
    write_weights: bool = False  # also the validity map <rel>_weights

    def __post_init__(self) -> None:
        if not isinstance(self.kernel, (Kernel, str)):
            raise ValueError("a kernel (a Kernel or a kernel name) is required")
        check_kernel_args(self.kernel, self.window, self.sigma)
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; valid modes: {', '.join(MODES)}")
        if self.dtype not in ("same", "float32"):
            raise ValueError(f"dtype must be 'same' or 'float32', got {self.dtype!r}")

    def check_output(self, output: OutputSettings) -> None:
        """Raise ``ValueError`` when the output format cannot hold what these settings make."""
        if self.dtype == "float32" and output.format != "tif":
            raise ValueError("float32 output needs format tif")

    def offset_for(self, kernel: Kernel) -> float:
        """The offset added to the result: mid-gray for zero-sum kernels unless given."""
        if self.offset is not None:
            return self.offset
        return DEFAULT_TARGET if abs(kernel.total) < 1e-9 else 0.0


def filter_array(image: np.ndarray, mask: np.ndarray | None, settings: FilterSettings
                 ) -> tuple[np.ndarray, np.ndarray, Kernel]:
    """Filter one image as ``settings`` say; returns (output array, validity map, kernel)."""
    kernel = make_kernel(settings.kernel, settings.window, settings.sigma, mask=mask)
    result, validity = masked_filter(
        image, None if settings.ignore_mask else mask, kernel, mode=settings.mode, fill=0.0,
    )
    in_scale = dtype_scale(image.dtype)
    result += np.float32(settings.offset_for(kernel) * in_scale)
    inside = np.ones(image.shape[:2], bool) if mask is None else np.asarray(mask) > 0
    if settings.dtype == "float32":
        out = result
        out[~inside] = np.float32(settings.fill * in_scale)
        return out.astype(np.float32, copy=False), validity, kernel
    dt = image.dtype
    if np.issubdtype(dt, np.integer):
        info = np.iinfo(dt)
        np.clip(result, info.min, info.max, out=result)
        np.rint(result, out=result)
    result[~inside] = settings.fill * in_scale
    return result.astype(dt), validity, kernel


def filter_outputs(pair: Pair, outdir: str | os.PathLike, settings: FilterSettings,
                   output: OutputSettings = OutputSettings(),
                   geometry: GeometrySettings = GeometrySettings()) -> list[Path]:
    """The files :func:`filter_pair` writes: the image, ``<rel>_weights`` on request, and the
    mask and label images ``geometry`` asks for."""
    from .steps import FilterStep

    return FilterStep(Path(outdir), settings, output_settings=output,
                      geometry=geometry).output_list(pair)


def filter_pair(pair: Pair, outdir: str | os.PathLike, settings: FilterSettings,
                mask_settings: MaskSettings = MaskSettings(), *,
                output: OutputSettings = OutputSettings(),
                geometry: GeometrySettings = GeometrySettings()) -> Result:
    """Filter one image; write ``OUTDIR/<rel>.<format>`` and, on request, ``<rel>_weights``
    (together or not at all; ``output`` as in :func:`normalize_pair`); ``geometry`` as there
    (the weights are cut with linear interpolation). A :class:`~retina_prep.steps.FilterStep`
    run once."""
    from .steps import FilterStep

    return FilterStep(Path(outdir), settings, mask_settings, output, geometry)(pair)


def filter_columns(image: np.ndarray, mask: np.ndarray, kernel: Kernel, *,
                   mode: str = "normalized") -> list[tuple[str, np.ndarray]]:
    """The mask-convolution paper's Fig. 7-9 columns: original | on black BG | on white BG | mask convolution.

    The background outside the FOV is filled with black (zero padding) or
    white and filtered by plain convolution; the third column is masked
    filtering. Every result is cut to the FOV afterwards, as in the paper.
    """
    plain = FilterSettings(kernel=kernel, ignore_mask=True)
    masked = FilterSettings(kernel=kernel, mode=mode)
    inside = np.asarray(mask) > 0
    top = np.iinfo(image.dtype).max if np.issubdtype(image.dtype, np.integer) else 1.0
    sel = inside[..., None] if image.ndim == 3 else inside
    black = filter_array(np.where(sel, image, 0).astype(image.dtype), mask, plain)[0]
    white = filter_array(np.where(sel, image, top).astype(image.dtype), mask, plain)[0]
    return [("original", image), ("(a) on black BG", black), ("(b) on white BG", white),
            ("(c) mask convolution", filter_array(image, mask, masked)[0])]


def normalize_columns(image: np.ndarray, mask: np.ndarray, kernel: Kernel, *,
                      settings: NormalizeSettings = NormalizeSettings(),
                      done: dict[bool, np.ndarray] | None = None,
                      order: int = 0) -> list[tuple[str, np.ndarray]]:
    """The mask-convolution paper's Fig. 4 columns: without IN | IN without mask | IN with mask.

    ``done`` maps ``ignore_mask`` (True/False) to results already computed.
    """
    done = dict(done or {})
    for ignore in (True, False):
        if ignore not in done:
            done[ignore] = _run_normalize(image, mask, kernel, settings, ignore, order)
    return [("(a) without IN", image), ("(b) IN without mask", done[True]),
            ("(c) IN with mask", done[False])]


def clahe_columns(image: np.ndarray, mask: np.ndarray, *, clip_limit: float = DEFAULT_CLIP_LIMIT,
                  tiles: int = DEFAULT_TILES, colour: str = "lab") -> list[tuple[str, np.ndarray]]:
    """original | CLAHE of the whole image (OpenCV's, the background included) | masked CLAHE."""
    def run(m: np.ndarray | None) -> np.ndarray:
        return masked_clahe(image, m, clip_limit=clip_limit, tiles=tiles, colour=colour)

    return [("(a) original", image), ("(b) CLAHE, no mask (OpenCV)", run(None)),
            ("(c) masked CLAHE", run(np.asarray(mask) > 0))]


def compare_pair(pair: Pair, out_path: str | os.PathLike, *, kernel: Kernel | str = "gaussian",
                 window: int | str | None = None,
                 sigma: float | None = None, mask_settings: MaskSettings = MaskSettings(),
                 normalize: bool = False, inset: str | tuple | None = "auto", profile: bool = True,
                 overwrite: bool = False, thumb_width: int | None = None,
                 panel_width: int | None = PANEL_WIDTH, order: int | str = "auto",
                 clahe: tuple[float, int] | None = None) -> Result:
    """Write one comparison figure for ``pair`` to ``out_path``: a
    :class:`~retina_prep.steps.CompareStep` run once.

    ``kernel`` is a :class:`Kernel`, or a kernel name sized by ``window`` and
    ``sigma`` for this image (see :func:`~retina_prep.kernels.make_kernel`). With ``clahe``
    ``(clip_limit, tiles)``, the figure is :func:`clahe_columns` instead.
    """
    from .steps import CompareStep

    out_path = Path(out_path)
    return CompareStep(out_path.parent, out_path, kernel, window, sigma, mask_settings, normalize,
                       inset, profile, overwrite, thumb_width, panel_width, order, clahe)(pair)


def evaluate_pair(pair: Pair, *, window: int | str = "auto", kernel_name: str = "mean",
                  target: float = DEFAULT_TARGET, methods: tuple[str, ...] | list[str] | None = None,
                  mask_settings: MaskSettings = MaskSettings(),
                  labels: str | os.PathLike | None = "auto") -> Result:
    """Evaluate one image (see :mod:`retina_prep.evaluate`); the numbers go in
    ``result.products["evaluation"]``. An :class:`~retina_prep.steps.EvaluateStep` run once.

    ``labels``: "auto" (dataset conventions), None, or a folder holding a
    file named after the image stem (or its number prefix, as DRIVE's).
    """
    from .steps import EvaluateStep

    return EvaluateStep(window, kernel_name, target, None if methods is None else tuple(methods),
                        mask_settings, labels)(pair)


def read_labels(path: str | os.PathLike, fov: np.ndarray, *,
                max_pixels: int | None = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Read a vessel label image for an image whose field of view is ``fov``: boolean ``(H, W)``.

    Raises :class:`MaskError` (naming ``path``) unless the file holds two values at most (a
    binary label image), has the image's size and marks vessel pixels inside the FOV.
    """
    raw = read_image(path, max_pixels=max_pixels)
    gray = channel_max(raw)
    if gray.shape != fov.shape:
        raise MaskError(f"labels are {gray.shape[1]}x{gray.shape[0]} px but the image is"
                        f" {fov.shape[1]}x{fov.shape[0]} px", path)
    g = gray.astype(np.float64)
    lo, hi = float(g.min()), float(g.max())
    if hi > lo:
        # two values; JPEG-compressed labels keep almost all pixels near the two extremes
        near = (g <= lo + 0.1 * (hi - lo)) | (g >= hi - 0.1 * (hi - lo))
        if near.mean() < 0.99:
            raise MaskError("labels are not binary (a gray-level image, not vessel / background);"
                            " is this the right folder?", path)
    vessels = g > (lo + hi) / 2 if hi > lo else np.zeros(gray.shape, bool)
    inside = fov > 0
    if not np.any(vessels & inside):
        raise MaskError("labels mark no vessel pixel inside the field of view", path)
    return vessels


def _label_in(folder: str | os.PathLike | None, image: Path) -> Path | None:
    if folder is None:
        return None
    folder = Path(folder)
    stem = Path(image).stem
    for pattern in (f"{stem}.*", f"{stem}_*", f"{stem.split('_')[0]}_*"):
        for c in sorted(folder.glob(pattern)):
            if c.suffix.lower() in IMAGE_EXTENSIONS:
                return c
    return None



def read_transforms(manifest: str | os.PathLike) -> dict[str, dict]:
    """The geometry records of a manifest (``normalize --crop/--resize``), by output path:
    ``{output: {"geometry": ..., "input": ..., "output": ...}}`` (a later run's record wins).

    Raises :class:`RetinaPrepError` naming the file if it cannot be read or holds no record
    with a geometry.
    """
    path = Path(manifest)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise RetinaPrepError(f"cannot read the manifest ({getattr(exc, 'strerror', None) or exc})",
                              path) from None
    found: dict[str, dict] = {}
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut by an interrupted run
        if not isinstance(rec, dict) or rec.get("type") != "image" or rec.get("status") != "done":
            continue
        g = (rec.get("params") or {}).get("geometry")
        outs = rec.get("outputs") or []
        if g and outs:
            found[str(outs[0])] = {"geometry": g, "input": rec.get("input"), "output": outs[0]}
    if not found:
        raise RetinaPrepError("the manifest records no cropped or resized image (run normalize"
                              " with --crop fov or --resize N)", path)
    return found


def match_transform(pred: Path, transforms: dict[str, dict],
                    rel: str | os.PathLike | None = None) -> dict | None:
    """The record of the output a prediction file belongs to, or None.

    The output's name (without ending) is the prediction's, or begins it followed by ``_``,
    ``-`` or ``.``; the longest such name wins. Where outputs in different folders share that
    name, the one whose folders end like the prediction's ``rel`` (its path under the folder
    given) wins; if that still leaves several, :class:`RetinaPrepError` says so.
    """
    stem = Path(pred).stem
    best: list[str] = []
    best_len = -1
    for key in transforms:
        out_stem = Path(key).stem
        if stem == out_stem or (stem.startswith(out_stem) and stem[len(out_stem)] in "_-."):
            if len(out_stem) > best_len:
                best, best_len = [key], len(out_stem)
            elif len(out_stem) == best_len:
                best.append(key)
    if len(best) > 1 and rel is not None:
        parents = Path(rel).parent.parts
        if parents:
            best = [k for k in best if Path(k).parent.parts[-len(parents):] == parents] or best
    if len(best) > 1:
        raise RetinaPrepError(f"several outputs in the manifest are named like this prediction"
                              f" ({', '.join(sorted(Path(k).name for k in best)[:3])} in different"
                              " folders); keep the outputs' folders when giving predictions",
                              pred)
    return transforms[best[0]] if best else None


def restore_outputs(pair: Pair, outdir: str | os.PathLike,
                    output: OutputSettings = OutputSettings()) -> list[Path]:
    """The file :func:`restore_pair` writes: ``OUTDIR/<rel>.<format>``."""
    from .steps import RestoreStep

    return RestoreStep(Path(outdir), {}, output_settings=output).output_list(pair)


def restore_pair(pair: Pair, outdir: str | os.PathLike, transforms: dict[str, dict], *,
                 interpolation: str = "linear", output: OutputSettings = OutputSettings(),
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> Result:
    """Map the prediction ``pair.image`` (made on a cut output) back onto its original
    photograph's pixel grid, and write ``OUTDIR/<rel>.<format>``: a
    :class:`~retina_prep.steps.RestoreStep` run once."""
    from .steps import RestoreStep

    return RestoreStep(Path(outdir), transforms, interpolation, output, max_pixels)(pair)
