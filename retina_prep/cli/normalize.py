"""retina-prep normalize: masked illumination normalization."""

from __future__ import annotations

import logging
import os
import sys
from dataclasses import replace
from pathlib import Path

import click

from ..batch import Result, Status, run_one
from ..clahe import CLAHE_COLOURS
from ..dataset import Pair
from ..errors import OutputExistsError, RetinaPrepError, printable
from ..first_order import DEFAULT_RIDGE
from ..io import IMAGE_EXTENSIONS, write_bytes
from ..normalize import AUTO_WINDOW_FRACTION, DEFAULT_SCALE, DEFAULT_TARGET, KERNELS
from ..pipeline import (
    NORMALIZE_METHODS,
    GeometrySettings,
    MaskSettings,
    NormalizeSettings,
    OutputSettings,
)
from ..pipeline import _check_output as check_output
from ..steps import NormalizeStep
from .options import (
    FiniteRange,
    RangeType,
    SigmaType,
    WindowType,
    build_mask_settings,
    clahe_options,
    format_opt,
    geometry_options,
    geometry_settings,
    mask_options,
    output_or_file_opt,
    panel_width_opt,
)
from .runner import (
    BatchOptions,
    bounds_file,
    cli_wording,
    collect_pairs,
    execute,
    log,
    notice_wording,
    run_options,
)


@click.command(
    "normalize",
    epilog="""\b
Examples:
  retina-prep normalize sample_data -o out
  retina-prep normalize DRIVE -o out --config configs/drive.toml
  retina-prep normalize eye.jpg --mask eye_mask.png -o out --window 31
  retina-prep normalize DRIVE/test -o out_nomask --ignore-mask
  retina-prep normalize sample_data -o out --panels panels --panels-compare
""",
)
@click.argument("inputs", nargs=-1, type=click.Path(path_type=str))
@output_or_file_opt
@mask_options
@click.option(
    "--window",
    "--size",
    "window",
    type=WindowType(),
    default=None,
    help=f"Local-mean window: an odd size in pixels, or 'auto' ({AUTO_WINDOW_FRACTION:.0%} of the FOV"
    " diameter) [default: auto; 2*ceil(3*sigma)+1 for --kernel gaussian --sigma].",
)
@click.option(
    "--kernel",
    type=click.Choice(KERNELS),
    default="mean",
    show_default=True,
    help="Local-mean kernel: a box (mean) or a Gaussian truncated to the window.",
)
@click.option(
    "--sigma",
    type=SigmaType(),
    default=None,
    help="Gaussian sigma in pixels [default: window / 2.5]; 'auto': the FOV diameter / 60"
    " (R / 30, Ben Graham's scale), the kernel then spans 6 sigma.",
)
@click.option(
    "--method",
    type=click.Choice(NORMALIZE_METHODS),
    default="mean",
    show_default=True,
    help="'mean': I - mean + I0 (the mask-convolution paper). 'standardize':"
    " I0 + scale * (I - mean) / local std"
    " (mask-weighted statistics, Kang et al.). 'clahe': masked CLAHE (tile histograms from"
    " the FOV only; --clip-limit, --tiles, --clahe-on).",
)
@clahe_options
@click.option("--clahe-on", type=click.Choice(CLAHE_COLOURS), default="lab", show_default=True,
              help="--method clahe on colour images: L of Lab, each channel, or one channel.")
@click.option(
    "--gain",
    type=FiniteRange(0, 1000, min_open=True),
    default=1.0,
    show_default=True,
    help="With --method mean: I0 + gain * (I - mean) (4 with --kernel gaussian --sigma auto"
    " is Ben Graham's preprocessing, masked: --config ben-graham).",
)
@click.option(
    "--scale",
    type=click.FloatRange(min=0, min_open=True),
    default=DEFAULT_SCALE,
    show_default=True,
    help="With --method standardize: gray levels (8-bit units) per local standard deviation.",
)
@click.option(
    "--target",
    type=FiniteRange(0, 255),
    default=DEFAULT_TARGET,
    show_default=True,
    help="I0, the level the local mean is moved to, in 8-bit units (x257 for 16-bit images).",
)
@click.option(
    "--fill",
    type=FiniteRange(0, 255),
    default=0.0,
    show_default=True,
    help="Value outside the FOV, in 8-bit units.",
)
@click.option(
    "--order",
    type=click.Choice(["auto", "0", "1"]),
    default="auto",
    show_default=True,
    help="0: the masked local mean. 1: the local plane fitted to the masked window (first-order"
    " normalized convolution): no overshoot on gradients at the FOV margin, so larger windows stay"
    " flat. auto: 1 when the mask is trimmed (rim trim or --erode; estimated masks are by default),"
    " else 0.",
)
@click.option(
    "--ridge",
    type=click.FloatRange(min=0),
    default=DEFAULT_RIDGE,
    show_default=True,
    help="With order 1: damping of the plane's slope in thin windows, relative to the window's"
    " variance (0: none).",
)
@click.option(
    "--value-range",
    type=RangeType(),
    default=None,
    help="The values the images span, e.g. 0,255 for float TIFFs in 8-bit units or 0,4095 for"
    " 12-bit data [default: the dtype's: 0..255, 0..65535, float 0..1].",
)
@click.option(
    "--ignore-mask",
    is_flag=True,
    default=False,
    help="Plain convolution over the whole image (the halo-prone 'IN without mask'), for comparison.",
)
@click.option(
    "--panels",
    "panels_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Also write a labelled before/after panel per image into this folder.",
)
@click.option(
    "--panels-compare",
    is_flag=True,
    default=False,
    help="Panels with three columns, as the mask-convolution paper's Fig. 4:"
    " without IN | IN without mask | IN with mask.",
)
@panel_width_opt
@geometry_options
@format_opt
@run_options
@click.pass_context
def normalize(ctx: click.Context, inputs: tuple[str, ...], outdir: Path, mask: Path | None,
              mask_dir: Path | None, mask_pattern: str | None, auto_mask: bool, mask_check: bool,
              erode: float | str, rim: str, feather: float, window: int | str | None,
              kernel: str, sigma: float | str | None, method: str, clip_limit: float,
              tiles: int, clahe_on: str, gain: float, scale: float, target: float, fill: float,
              order: str, ridge: float, value_range: tuple[float, float] | None, ignore_mask: bool,
              panels_dir: Path | None, panels_compare: bool, panel_width: int, crop: str | None,
              resize: int | None, write_mask: bool, labels: str | None, bounds: Path | None,
              fmt: str, png_level: int | None, overwrite: bool, max_pixels: int,
              ignore_orientation: bool, batch: BatchOptions, quiet: bool) -> None:
    """Flatten uneven illumination: I - masked local mean + I0, per channel.

    INPUT may be image files, a DRIVE root (training/, test/), a split folder
    (images/ with mask/ beside it) or a plain folder (masks named
    <stem>_mask.<ext>). Outputs go to OUTDIR/<stem>.png, mirroring dataset
    sub-folders. Images without a mask get an estimated one (with a warning).
    """
    try:
        settings = NormalizeSettings(
            window=window, kernel=kernel, sigma=sigma, target=target, fill=fill,
            ignore_mask=ignore_mask, method=method,
            scale=scale, gain=gain, value_range=value_range,
            order=order if order == "auto" else int(order), ridge=ridge,
            clip_limit=clip_limit, tiles=tiles, clahe_on=clahe_on,
        )
        mask_settings = build_mask_settings(auto_mask, mask_check, erode, rim, feather, max_pixels,
                                            ignore_orientation)
        output = batch.output_settings(fmt, png_level, overwrite)
        geometry = geometry_settings(crop, resize, write_mask, labels, bounds)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    if panels_compare and panels_dir is None:
        raise click.BadParameter("needs --panels DIR", param_hint="--panels-compare")
    suffix = outdir.suffix.lower()
    if suffix in IMAGE_EXTENSIONS and suffix not in FILE_SUFFIXES and not outdir.is_dir():
        raise click.BadParameter(f"{outdir}: outputs are written as PNG or TIFF; name the file"
                                 " .png or .tif (or give a folder)", param_hint="-o")
    one_file = str(outdir) == "-" or (suffix in FILE_SUFFIXES and not outdir.is_dir())
    if one_file:
        what = "stdout" if str(outdir) == "-" else str(outdir)
        if panels_dir is not None or write_mask or labels or bounds:
            raise click.UsageError(f"-o {what} writes one image; --panels, --write-mask,"
                                   " --with-labels and --bounds need an output folder")
        if str(outdir) != "-":
            output = replace(output, format=FILE_SUFFIXES[outdir.suffix.lower()])
        _one_image(inputs, mask, mask_dir, mask_pattern, settings, mask_settings, batch, output,
                   geometry, None if str(outdir) == "-" else outdir)
        return
    if panels_dir is not None and os.path.abspath(panels_dir) == os.path.abspath(outdir):
        raise click.BadParameter("is the output folder (-o): panels and outputs would share"
                                 " names; give the panels a folder of their own",
                                 param_hint="--panels")
    pairs = collect_pairs(inputs, mask=mask, mask_dir=mask_dir, mask_pattern=mask_pattern,
                          outdir=[outdir, panels_dir], batch=batch, auto_mask=auto_mask)
    if panels_dir is not None and not batch.dry_run:
        panels_dir.mkdir(parents=True, exist_ok=True)
    step = NormalizeStep(outdir, settings, mask_settings, output, panels_dir, panels_compare,
                         panel_width, geometry)
    with bounds_file(None if batch.dry_run else bounds) as rows:
        report = execute(step, pairs, outdir=outdir, batch=batch, quiet=quiet,
                         params=dict(ctx.params), on_result=rows)
    ctx.exit(report.exit_code)


#: -o FILE with one input: the file endings written, and their format.
FILE_SUFFIXES = {".png": "png", ".tif": "tif", ".tiff": "tif"}


def _one_image(inputs: tuple[str, ...], mask: Path | None, mask_dir: Path | None,
               mask_pattern: str | None, settings: NormalizeSettings, mask_settings: MaskSettings,
               batch: BatchOptions, output: OutputSettings, geometry: GeometrySettings,
               path: Path | None) -> None:
    """-o - (``path`` None): one image, PNG (or TIFF) bytes on stdout and nothing else; -o FILE:
    that file, written atomically (refused if it exists, unless --overwrite)."""
    pairs = collect_pairs(inputs, mask=mask, mask_dir=mask_dir, mask_pattern=mask_pattern,
                          outdir=None, batch=batch, auto_mask=mask_settings.auto_mask)
    where = "to stdout" if path is None else f"to the file {path}"
    if len(pairs) != 1:
        raise click.UsageError(f"-o writes one image {where}, but {len(pairs)} were given; give"
                               " an output folder for many")
    if path is not None:
        try:  # the batch step's own rule: never an input, an existing file only with --overwrite
            check_output(path, pairs[0], output.overwrite)
        except OutputExistsError as exc:
            raise click.UsageError(f"{exc} (use --overwrite to replace it)") from None
        except RetinaPrepError as exc:
            raise click.UsageError(str(exc)) from None

    # the batch's own step, rendered: the image's bytes, nothing written
    step = NormalizeStep(None, settings, mask_settings, output, geometry=geometry)

    def render(pair: Pair) -> Result:
        made = step.render(pair)
        return Result(pair, Status.DONE, warnings=made.warnings, products={"data": made.data("image")})

    res = run_one(render, pairs[0])
    if res.status != Status.DONE:
        raise click.ClickException(cli_wording(res))
    for w in res.warnings:  # one image: each warning in full (-q hides them, as everywhere)
        log(f"warning: {notice_wording(w)}", logging.WARNING)
    if path is not None:
        write_bytes(path, res.products["data"], overwrite=output.overwrite)
        return
    out = sys.stdout.buffer
    try:
        out.write(res.products["data"])
        out.flush()
    except BrokenPipeError:  # the reader went away (| head -c N): the image is cut, say so
        try:  # (and keep the interpreter's last flush from complaining again)
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115
        except OSError:
            pass
        raise click.ClickException(f"{printable(pairs[0].image)}: standard output was closed"
                                   " before the image was written (a broken pipe); the"
                                   " output is incomplete") from None
