"""retina-prep compare: the mask-convolution paper's comparison figures for any kernel."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from ..io import IMAGE_EXTENSIONS
from ..kernels import KERNEL_NAMES, Kernel
from ..steps import CompareStep
from .options import (
    KernelSpec,
    WindowType,
    build_mask_settings,
    check_kernel,
    clahe_options,
    mask_options,
    panel_width_opt,
)
from .runner import BatchOptions, ContactSheet, collect_pairs, execute, run_options


class InsetType(click.ParamType):
    """``x,y,size`` in pixels, or ``auto``."""

    name = "X,Y,SIZE|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, (list, tuple)):
            parts = list(value)
        elif str(value).strip().lower() in ("auto", "none"):
            return str(value).strip().lower()
        else:
            parts = str(value).split(",")
        try:
            x, y, size = (int(p) for p in parts)
        except ValueError:
            self.fail(f"{value!r} is not x,y,size (three whole numbers) or 'auto'", param, ctx)
        if x < 0 or y < 0 or size < 4:
            self.fail(f"{value!r}: x and y must be >= 0 and size >= 4", param, ctx)
        return (x, y, size)


@click.command(
    "compare",
    epilog="""\b
Examples:
  retina-prep compare DRIVE/test/images/01_test.tif -o fig7.png --kernel gaussian --sigma 20 --size 51
  retina-prep compare DRIVE/test/images/01_test.tif -o fig9.png --kernel sharpen
  retina-prep compare eye.jpg --auto-mask -o fig4.png --normalize --window 31
  retina-prep compare DRIVE/test -o figures/ --kernel gaussian --sigma 3 --size 11 --sheet sheet.png
""",
)
@click.argument("inputs", nargs=-1, type=click.Path(path_type=str))
@click.option("-o", "--output", "output", required=True, type=click.Path(path_type=Path),
              help="A .png file (one image) or a folder (one <stem>.png per image).")
@mask_options
@click.option("--kernel", "kernel_spec", type=KernelSpec(), default=None,
              help=f"A name ({', '.join(KERNEL_NAMES)}) or a kernel file [default: gaussian for"
              " Fig. 7-9, mean for --normalize].")
@click.option("--window", "--size", "window", type=WindowType(), default=None,
              help="Kernel size for mean and gaussian (and Fig. 4's window): odd pixels or 'auto'"
              " [default: auto; 2*ceil(3*sigma)+1 for --kernel gaussian --sigma].")
@click.option("--sigma", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Gaussian sigma [default: size / 2.5].")
@click.option("--normalize", "normalize_fig", is_flag=True, default=False,
              help="Fig. 4 instead: without IN | IN without mask | IN with mask (mean kernel of"
              " --window, or --kernel gaussian).")
@click.option("--method", "method", type=click.Choice(["filter", "clahe"]), default="filter",
              show_default=True,
              help="'clahe': original | CLAHE of the whole image (OpenCV) | masked CLAHE, with"
              " --clip-limit and --tiles, instead of the kernel figures.")
@clahe_options
@click.option("--order", type=click.Choice(["auto", "0", "1"]), default="auto", show_default=True,
              help="With --normalize: 0 the masked local mean, 1 the local plane, auto as in"
              " normalize (1 when the mask is trimmed).")
@click.option("--inset", type=InsetType(), default="auto", show_default=True,
              help="Zoomed stretch shown under every column: x,y,size in pixels, 'auto' (where the"
              " columns differ most at the FOV margin) or 'none'.")
@click.option("--profile/--no-profile", default=True, show_default=True,
              help="Plot each column's gray level along a line across the margin.")
@click.option("--sheet", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write a contact sheet of all figures.")
@panel_width_opt
@run_options
@click.pass_context
def compare(ctx: click.Context, inputs: tuple[str, ...], output: Path, mask: Path | None,
            mask_dir: Path | None, mask_pattern: str | None, auto_mask: bool, mask_check: bool,
            erode: float | str, rim: str, feather: float, kernel_spec: str | Kernel | None,
            window: int | str | None, sigma: float | None, normalize_fig: bool, method: str,
            clip_limit: float, tiles: int, order: str, inset: tuple[int, int, int] | str | None,
            profile: bool, sheet: Path | None, panel_width: int, overwrite: bool,
            max_pixels: int, ignore_orientation: bool, batch: BatchOptions,
            quiet: bool) -> None:
    """Comparison figures: what the mask changes at the FOV margin.

    By default the mask-convolution paper's Fig. 7-9 for the chosen kernel: original | filtered on a
    black background | on a white background | mask convolution; with
    --normalize, Fig. 4. Every column gets the same zoomed inset and a profile
    across the margin.
    """
    if kernel_spec is None:
        kernel_spec = "mean" if normalize_fig else "gaussian"
    if normalize_fig and kernel_spec not in ("gaussian", "mean"):
        raise click.BadParameter("--normalize takes --kernel mean or gaussian", param_hint="--kernel")
    check_kernel(kernel_spec, window, sigma)
    mask_settings = build_mask_settings(auto_mask, mask_check, erode, rim, feather, max_pixels,
                                        ignore_orientation)
    suffix = output.suffix.lower()
    single_file = suffix in (".png", ".tif", ".tiff")
    if suffix in IMAGE_EXTENSIONS and not single_file and not output.is_dir():
        raise click.BadParameter(f"{output}: figures are written as PNG or TIFF; name the file"
                                 " .png or .tif (or give a folder)", param_hint="-o")
    outdir = output.parent if single_file else output
    pairs = collect_pairs(inputs, mask=mask, mask_dir=mask_dir, mask_pattern=mask_pattern,
                          outdir=outdir if not single_file else None, batch=batch, auto_mask=auto_mask)
    if single_file and len(pairs) != 1:
        raise click.UsageError(f"-o {output} names one figure but {len(pairs)} images were given;"
                               " give a folder")
    contact = ContactSheet(sheet, overwrite=overwrite, columns=2 if len(pairs) > 1 else 1)
    step = CompareStep(outdir, output if single_file else None, kernel=kernel_spec,
                       window=window, sigma=sigma, mask_settings=mask_settings,
                       normalize=normalize_fig, inset=None if inset == "none" else inset,
                       profile=profile, overwrite=overwrite, thumb_width=480 if sheet else None,
                       panel_width=panel_width, order=order if order == "auto" else int(order),
                       clahe=(clip_limit, tiles) if method == "clahe" else None)
    report = execute(step, pairs, outdir=outdir, batch=batch, quiet=quiet,
                     params=dict(ctx.params), on_result=contact,
                     default_manifest=not single_file)
    contact.write("compare", quiet)
    ctx.exit(report.exit_code)

