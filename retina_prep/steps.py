"""Steps: one object per command, naming the files it writes for a pair and making them.

A step is a frozen dataclass built from a command's settings. For one
:class:`~retina_prep.dataset.Pair` it

- names its outputs by role (:meth:`Step.outputs`: ``{"image": path, "mask": path, ...}``),
- makes them without writing anything (:meth:`Step.render`: the bytes of each role, the
  warnings and the manifest record), and
- runs (``step(pair)``): refuses outputs it may not write, renders, writes every file or none,
  and returns a :class:`~retina_prep.batch.Result`.

The batch engine, ``--dry-run``, ``-o -`` and ``-o FILE`` all go through these, so each command
has one code path. A step holds the run's :class:`Caches`; pickled to a worker process, the
cache is that worker's own for the whole run.

>>> from pathlib import Path
>>> step = NormalizeStep(Path("out"), geometry=GeometrySettings(write_mask=True))
>>> pair = Pair(Path("in/01.tif"), None, "none", Path("01"))
>>> {role: str(path) for role, path in step.outputs(pair).items()}
{'image': 'out/01.png', 'mask': 'out/01_mask.png'}
"""

from __future__ import annotations

import functools
import os
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from .batch import Result, Status
from .dataset import Pair, find_label
from .errors import Notice, RetinaPrepError
from .evaluate import METHODS as METHODS_EVALUATED
from .evaluate import evaluate_image
from .figures import PANEL_WIDTH, panel, thumbnail
from .fov import LOW_CONFIDENCE
from .geometry import Transform, to_original, warp
from .io import DEFAULT_MAX_PIXELS, encode_image, read_image, write_outputs
from .kernels import Kernel, make_kernel, resolve_window
from .normalize import DEFAULT_TARGET
from .pipeline import (
    MASK_TEXT_KEY,
    MASK_TRIMMED,
    FilterSettings,
    GeometrySettings,
    MaskSettings,
    NormalizeSettings,
    OutputSettings,
    _check_output,
    _label_in,
    _load,
    _trimmed,
    apply_geometry,
    clahe_columns,
    filter_array,
    filter_columns,
    match_transform,
    normalize_columns,
    normalize_loaded,
    output_path,
    read_labels,
    resolve_order,
)

__all__ = ["Caches", "Rendered", "Step", "NormalizeStep", "FilterStep", "MaskStep", "CompareStep",
           "EvaluateStep", "RestoreStep"]


class _LRU:
    """A small least-recently-used map."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.items: OrderedDict[Any, Any] = OrderedDict()

    def get(self, key: Any) -> Any:
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        return None

    def put(self, key: Any, value: Any) -> None:
        self.items[key] = value
        self.items.move_to_end(key)
        while len(self.items) > self.size:
            self.items.popitem(last=False)

    def __len__(self) -> int:
        return len(self.items)


class Caches:
    """What a run keeps from one image to the next: mask files read and trimmed, by the file's
    identity (path, device, inode, size, mtime) and the mask settings, so that images sharing
    one mask file (one mask per camera) read it once; and the prepared mask
    (:func:`~retina_prep.normalize.prepare_mask`) of a mask met more than once (its filters and
    plane geometry computed once).

    Owned by a run: make one per run and give it to its steps; :meth:`clear` forgets
    everything. A step sent to a worker process takes its cache along by name: every image
    of the run that worker gets finds the same (the worker's own) cache.

    Parameters
    ----------
    masks : int
        Mask files kept.
    prepared : int
        Prepared masks kept (one: about 8 bytes per pixel plus the margin band's plane
        coefficients).
    """

    def __init__(self, masks: int = 8, prepared: int = 1) -> None:
        self.token = uuid.uuid4().hex
        self.masks = _LRU(masks)
        self.prepared = _LRU(prepared)

    def clear(self) -> None:
        """Forget every mask kept."""
        self.masks.items.clear()
        self.prepared.items.clear()

    def shared(self, mask: np.ndarray) -> bool:
        """Whether ``mask`` is a kept mask file's that an earlier image used already."""
        return any(v[1] is mask and v[3][0] > 0 for v in self.masks.items.values())

    def __reduce__(self) -> tuple:
        return (_caches_named, (self.token, self.masks.size, self.prepared.size))


#: In a process that received steps by pickle (a worker): the caches of the runs it serves, by
#: their token (the two latest runs).
_RECEIVED: OrderedDict[str, Caches] = OrderedDict()


def _caches_named(token: str, masks: int, prepared: int) -> Caches:
    """The cache a pickled :class:`Caches` stands for in this process (made on first use)."""
    got = _RECEIVED.get(token)
    if got is None:
        got = Caches(masks, prepared)
        got.token = token
        _RECEIVED[token] = got
        while len(_RECEIVED) > 2:
            _RECEIVED.popitem(last=False)
    return got


@dataclass
class Rendered:
    """What a step made for one pair, before anything is written.

    Attributes
    ----------
    files : dict
        Role to the file's bytes, or to a function that returns them (called only when the
        file is written): the roles of :meth:`Step.outputs`.
    warnings : list of Notice
    info : dict
        The manifest's record of the image.
    products : dict
        What the step made besides files, for its caller (a ``"thumb"`` for a contact sheet,
        the ``"evaluation"`` numbers); not written to the manifest.
    """

    files: dict[str, bytes | Callable[[], bytes]]
    warnings: list[Notice] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    products: dict = field(default_factory=dict)

    def data(self, role: str) -> bytes:
        """The bytes of one file."""
        made = self.files[role]
        return made() if callable(made) else made


class Step:
    """One command's work on one pair (see the module's description)."""

    #: The command the step runs.
    name: ClassVar[str] = ""

    def outputs(self, pair: Pair) -> dict[str, Path]:
        """The files this step writes for ``pair``, by role, in the order they are written."""
        raise NotImplementedError

    def render(self, pair: Pair) -> Rendered:
        """Read ``pair`` and make its outputs' bytes; nothing is written."""
        raise NotImplementedError

    def output(self) -> OutputSettings:
        """How the files are written."""
        return OutputSettings()

    def __call__(self, pair: Pair) -> Result:
        """Run on ``pair``: check the outputs, render, write them together or not at all."""
        outs = self.outputs(pair)
        output = self.output()
        for o in outs.values():
            _check_output(o, pair, output.overwrite, output.keep_existing)
        made = self.render(pair)
        written = write_outputs([(outs[role], made.files[role]) for role in outs],
                                overwrite=output.overwrite, keep_existing=output.keep_existing)
        return Result(pair, Status.DONE, outputs=written, warnings=made.warnings, info=made.info,
                      products=made.products)

    def output_list(self, pair: Pair) -> list[Path]:
        """:meth:`outputs` as a list (what the batch engine and ``--dry-run`` take)."""
        return list(self.outputs(pair).values())


@dataclass(frozen=True)
class NormalizeStep(Step):
    """``retina-prep normalize``: ``OUTDIR/<rel>.<format>``, the mask and label images that
    ``geometry`` asks for, and with ``panels_dir`` a panel ``PANELS/<rel>.png`` (original |
    normalized, or with ``panels_compare`` the mask-convolution paper's Fig. 4: without IN |
    IN without mask | IN with mask). ``outdir`` may be None for a step only rendered
    (``-o -``)."""

    outdir: Path | None
    settings: NormalizeSettings = NormalizeSettings()
    mask_settings: MaskSettings = MaskSettings()
    output_settings: OutputSettings = OutputSettings()
    panels_dir: Path | None = None
    panels_compare: bool = False
    panel_width: int | None = PANEL_WIDTH
    geometry: GeometrySettings = GeometrySettings()
    caches: Caches = field(default_factory=Caches, compare=False, repr=False)
    name: ClassVar[str] = "normalize"

    def output(self) -> OutputSettings:
        return self.output_settings

    def outputs(self, pair: Pair) -> dict[str, Path]:
        if self.outdir is None:
            raise ValueError("a step without an output folder is only rendered")
        image = output_path(self.outdir, pair, self.output_settings.format)
        outs = {"image": image, **self.geometry.outputs(image)}
        if self.panels_dir is not None:
            outs["panel"] = output_path(self.panels_dir, pair, "png")
        return outs

    def render(self, pair: Pair) -> Rendered:
        settings, ms = self.settings, self.mask_settings
        image, fov, mask, info = _load(pair, ms, settings.value_range, self.caches)
        result, kernel, order = normalize_loaded(image, mask, settings, info, pair.image,
                                                 caches=self.caches)
        cut, extras, _, ginfo = apply_geometry(pair, result, fov, mask, self.geometry,
                                               fill=settings.fill, max_pixels=ms.max_pixels)
        files: dict[str, bytes | Callable[[], bytes]] = {
            "image": functools.partial(self.output_settings.encode, cut)}
        files.update(_geometry_files(extras))
        if ginfo is not None:
            info["geometry"] = ginfo
        if self.panels_dir is not None:
            def panel_bytes() -> bytes:
                if self.panels_compare:
                    done = {settings.ignore_mask: result}
                    cols = normalize_columns(image, mask, kernel, settings=settings, done=done,
                                             order=order)
                else:
                    cols = [("original", image), ("IN without mask" if settings.ignore_mask
                                                  else "IN with mask", result)]
                return encode_image(panel(cols, mask=mask > 0, inset="auto", profile=True,
                                          max_width=self.panel_width), "png")
            files["panel"] = panel_bytes
        info.update(window=kernel.shape[0], kernel=kernel.name, order=order)
        return Rendered(files, info.pop("warnings"), info)


@dataclass(frozen=True)
class FilterStep(Step):
    """``retina-prep filter``: ``OUTDIR/<rel>.<format>``, on request ``<rel>_weights`` (the
    validity map), and the mask and label images ``geometry`` asks for (the weights are cut
    with linear interpolation)."""

    outdir: Path
    settings: FilterSettings
    mask_settings: MaskSettings = MaskSettings()
    output_settings: OutputSettings = OutputSettings()
    geometry: GeometrySettings = GeometrySettings()
    caches: Caches = field(default_factory=Caches, compare=False, repr=False)
    name: ClassVar[str] = "filter"

    def __post_init__(self) -> None:
        self.settings.check_output(self.output_settings)

    def output(self) -> OutputSettings:
        return self.output_settings

    def outputs(self, pair: Pair) -> dict[str, Path]:
        image = output_path(self.outdir, pair, self.output_settings.format)
        outs = {"image": image}
        if self.settings.write_weights:
            outs["weights"] = image.with_name(image.stem + "_weights" + image.suffix)
        return {**outs, **self.geometry.outputs(image)}

    def render(self, pair: Pair) -> Rendered:
        ms, output = self.mask_settings, self.output_settings
        image, fov, mask, info = _load(pair, ms, None, self.caches)
        result, validity, kernel = filter_array(image, mask, self.settings)
        result, extras, transform, ginfo = apply_geometry(
            pair, result, fov, mask, self.geometry, fill=self.settings.fill,
            max_pixels=ms.max_pixels)
        if transform is not None:
            info["geometry"] = ginfo
            validity = warp(validity, transform, interpolation="linear")
        files: dict[str, bytes | Callable[[], bytes]] = {
            "image": functools.partial(output.encode, result)}
        if self.settings.write_weights:
            def weights_bytes() -> bytes:
                if output.format == "tif":
                    return output.encode(validity.astype(np.float32))
                return output.encode(np.rint(np.clip(validity, 0, 1) * 65535).astype(np.uint16))
            files["weights"] = weights_bytes
        files.update(_geometry_files(extras))
        info.update(kernel=kernel.name, mode=self.settings.mode)
        return Rendered(files, info.pop("warnings"), info)


@dataclass(frozen=True)
class MaskStep(Step):
    """``retina-prep mask``: the estimated FOV as ``OUTDIR/<rel>_mask.png`` (0/255; existing mask
    files are not used). With ``thumb_width``, ``products["thumb"]`` is a thumbnail with the
    contour drawn, for a contact sheet."""

    outdir: Path
    mask_settings: MaskSettings = MaskSettings()
    overwrite: bool = False
    thumb_width: int | None = None
    caches: Caches = field(default_factory=Caches, compare=False, repr=False)
    name: ClassVar[str] = "mask"

    def output(self) -> OutputSettings:
        return OutputSettings(overwrite=self.overwrite)

    def outputs(self, pair: Pair) -> dict[str, Path]:
        return {"mask": (Path(self.outdir) / pair.rel).with_name(pair.rel.name + "_mask.png")}

    def render(self, pair: Pair) -> Rendered:
        image, _, mask, info = _load(pair, replace(self.mask_settings, auto_mask=True), None,
                                     self.caches)
        text = {MASK_TEXT_KEY: MASK_TRIMMED} if _trimmed(info) else None
        files: dict[str, bytes | Callable[[], bytes]] = {
            "mask": encode_image(mask.astype(np.uint8) * 255, "png", text=text)}
        products = {}
        if self.thumb_width:
            low = info.get("fov_estimate", {}).get("confidence", 1.0) < LOW_CONFIDENCE
            products["thumb"] = thumbnail(image, mask, width=self.thumb_width,
                                          flag="LOW CONFIDENCE" if low else None)
        return Rendered(files, info.pop("warnings"), info, products)


@dataclass(frozen=True)
class CompareStep(Step):
    """``retina-prep compare``: one comparison figure, ``OUTDIR/<rel>.png`` (or ``file`` for a
    single image): the mask-convolution
    paper's Fig. 7-9 columns (:func:`~retina_prep.pipeline.filter_columns`), Fig. 4 with
    ``normalize`` (:func:`~retina_prep.pipeline.normalize_columns`), or with ``clahe``
    ``(clip_limit, tiles)`` CLAHE as is beside masked CLAHE. ``kernel`` is a
    :class:`~retina_prep.core.Kernel` or a name sized by ``window`` and ``sigma`` per image."""

    outdir: Path
    file: Path | None = None
    kernel: Kernel | str = "gaussian"
    window: int | str | None = None
    sigma: float | str | None = None
    mask_settings: MaskSettings = MaskSettings()
    normalize: bool = False
    inset: Any = "auto"
    profile: bool = True
    overwrite: bool = False
    thumb_width: int | None = None
    panel_width: int | None = PANEL_WIDTH
    order: int | str = "auto"
    clahe: tuple[float, int] | None = None
    caches: Caches = field(default_factory=Caches, compare=False, repr=False)
    name: ClassVar[str] = "compare"

    def output(self) -> OutputSettings:
        return OutputSettings(overwrite=self.overwrite)

    def outputs(self, pair: Pair) -> dict[str, Path]:
        if self.file is not None:
            return {"figure": Path(self.file)}
        return {"figure": (Path(self.outdir) / pair.rel).with_suffix(".png")}

    def render(self, pair: Pair) -> Rendered:
        image, _, mask, info = _load(pair, self.mask_settings, None, self.caches)
        kernel = self.kernel
        if not isinstance(kernel, Kernel):
            kernel = make_kernel(kernel, self.window, self.sigma, mask=mask)
        if self.clahe is not None:
            cols = clahe_columns(image, mask, clip_limit=self.clahe[0], tiles=int(self.clahe[1]))
        elif self.normalize:
            run_order = info["order"] = resolve_order(self.order, info, pair.image)
            cols = normalize_columns(image, mask, kernel, order=run_order)
        else:
            cols = filter_columns(image, mask, kernel)
        fig = panel(cols, mask=mask > 0, inset=self.inset,
                    profile=self.profile and self.inset is not None, max_width=self.panel_width)
        products = {"thumb": thumbnail(fig, None, width=self.thumb_width)} if self.thumb_width else {}
        info.update(kernel=kernel.name)
        return Rendered({"figure": encode_image(fig, "png")}, info.pop("warnings"), info, products)


@dataclass(frozen=True)
class EvaluateStep(Step):
    """``retina-prep evaluate``: writes nothing; ``products["evaluation"]`` holds the numbers
    (see :mod:`retina_prep.evaluate`). ``labels``: "auto" (dataset conventions), None, or a
    folder holding a file named after the image stem (or its number prefix, as DRIVE's)."""

    window: int | str = "auto"
    kernel_name: str = "mean"
    target: float = DEFAULT_TARGET
    methods: tuple[str, ...] | None = None
    mask_settings: MaskSettings = MaskSettings()
    labels: str | os.PathLike | None = "auto"
    caches: Caches = field(default_factory=Caches, compare=False, repr=False)
    name: ClassVar[str] = "evaluate"

    def outputs(self, pair: Pair) -> dict[str, Path]:
        return {}

    def render(self, pair: Pair) -> Rendered:
        ms = self.mask_settings
        image, fov, region, info = _load(pair, ms, None, self.caches)
        label_path = (find_label(pair.image) if self.labels == "auto"
                      else _label_in(self.labels, pair.image))
        vessels = None
        if label_path is not None:
            vessels = read_labels(label_path, fov, max_pixels=ms.max_pixels)
        win = resolve_window(self.window, region)
        kernel = make_kernel(self.kernel_name, win)
        ev = evaluate_image(image, fov, region > 0, vessels, kernel=kernel, target=self.target,
                            methods=tuple(METHODS_EVALUATED if self.methods is None
                                          else self.methods))
        info.update(window=win, labels=str(label_path) if label_path else None)
        return Rendered({}, info.pop("warnings"), info, {"evaluation": ev})


@dataclass(frozen=True)
class RestoreStep(Step):
    """``retina-prep restore``: the prediction ``pair.image`` (made on a cut output) mapped back
    onto its original photograph's pixel grid, as ``OUTDIR/<rel>.<format>``; ``transforms``
    from :func:`~retina_prep.pipeline.read_transforms`."""

    outdir: Path
    transforms: dict[str, dict]
    interpolation: str = "linear"
    output_settings: OutputSettings = OutputSettings()
    max_pixels: int = DEFAULT_MAX_PIXELS
    name: ClassVar[str] = "restore"

    def output(self) -> OutputSettings:
        return self.output_settings

    def outputs(self, pair: Pair) -> dict[str, Path]:
        return {"image": output_path(self.outdir, pair, self.output_settings.format)}

    def render(self, pair: Pair) -> Rendered:
        rec = match_transform(pair.image, self.transforms, pair.rel)
        if rec is None:
            raise RetinaPrepError("no output in the manifest is named like this prediction (its"
                                  " name must start with the output's name)", pair.image)
        transform = Transform.from_dict(rec["geometry"])
        pred = read_image(pair.image, max_pixels=self.max_pixels)
        w, h = transform.output_size
        if pred.shape[:2] != (h, w):
            raise RetinaPrepError(f"prediction is {pred.shape[1]}x{pred.shape[0]} px but its"
                                  f" output {Path(rec['output']).name} was {w}x{h} px", pair.image)
        back = to_original(pred, transform, interpolation=self.interpolation)
        info = {"original": rec["input"], "output_of": rec["output"],
                "interpolation": self.interpolation, "size": list(transform.original_size)}
        return Rendered({"image": functools.partial(self.output_settings.encode, back)}, [], info)


def _geometry_files(extras: dict[str, np.ndarray]) -> dict[str, bytes | Callable[[], bytes]]:
    """The cut mask and label arrays of :func:`~retina_prep.pipeline.apply_geometry`, by role."""
    return {role: functools.partial(encode_image, a, "png") for role, a in extras.items()}
