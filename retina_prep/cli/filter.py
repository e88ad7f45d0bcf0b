"""retina-prep filter: masked filtering with any kernel."""

from __future__ import annotations

from pathlib import Path

import click

from ..convolution import MODES
from ..kernels import KERNEL_NAMES, Kernel
from ..normalize import AUTO_WINDOW_FRACTION
from ..pipeline import FilterSettings
from ..steps import FilterStep
from .options import (
    FiniteRange,
    KernelSpec,
    WindowType,
    build_mask_settings,
    format_opt,
    geometry_options,
    geometry_settings,
    mask_options,
    output_opt,
)
from .runner import BatchOptions, bounds_file, collect_pairs, execute, run_options


@click.command(
    "filter",
    epilog="""\b
Examples:
  retina-prep filter DRIVE/test -o smooth --kernel gaussian --sigma 20 --size 51
  retina-prep filter DRIVE/test -o sharp --kernel sharpen --erode 6
  retina-prep filter eye.png --mask fov.png -o edges --kernel sobel-x --write-weights
  retina-prep filter eye.png --mask fov.png -o out --kernel my_kernel.csv --mode partial
""",
)
@click.argument("inputs", nargs=-1, type=click.Path(path_type=str))
@output_opt
@mask_options
@click.option("--kernel", "kernel_spec", type=KernelSpec(), required=True,
              help=f"A name ({', '.join(KERNEL_NAMES)}), or a file: .npy, or a text/CSV matrix."
              " In a config, also an inline matrix.")
@click.option("--window", "--size", "window", type=WindowType(), default=None,
              help="Kernel size for mean and gaussian: odd pixels or 'auto'"
              f" ({AUTO_WINDOW_FRACTION:.0%} of the FOV diameter)"
              " [default: auto; 2*ceil(3*sigma)+1 for --kernel gaussian --sigma].")
@click.option("--sigma", type=click.FloatRange(min=0, min_open=True), default=None,
              help="Gaussian sigma in pixels [default: size / 2.5].")
@click.option("--mode", type=click.Choice(list(MODES)), default="normalized", show_default=True,
              help="normalized: divide by M*K (the mask-convolution paper; signed kernels split"
              " into K+ and K-);"
              " partial / weighted: partial and weighted convolution (Kang et al.).")
@click.option("--ignore-mask", is_flag=True, default=False,
              help="Plain convolution over the whole image (output still cut to the FOV).")
@click.option("--offset", type=float, default=None,
              help="Added to the result, in 8-bit units [default: 128 for zero-sum kernels"
              " such as laplacian and sobel, else 0].")
@click.option("--fill", type=FiniteRange(0, 255), default=0.0, show_default=True,
              help="Value outside the FOV, in 8-bit units.")
@click.option("--dtype", type=click.Choice(["same", "float32"]), default="same", show_default=True,
              help="Output pixel type: the input's (clipped), or float32 (needs --format tif).")
@click.option("--write-weights", is_flag=True, default=False,
              help="Also write the validity map <stem>_weights (16-bit PNG, or float32 TIFF).")
@geometry_options
@format_opt
@run_options
@click.pass_context
def filter_cmd(ctx: click.Context, inputs: tuple[str, ...], outdir: Path, mask: Path | None,
               mask_dir: Path | None, mask_pattern: str | None, auto_mask: bool, mask_check: bool,
               erode: float | str, rim: str, feather: float, kernel_spec: str | Kernel,
               window: int | str | None, sigma: float | None, mode: str, ignore_mask: bool,
               offset: float | None, fill: float, dtype: str, write_weights: bool, crop: str | None,
               resize: int | None, write_mask: bool, labels: str | None, bounds: Path | None,
               fmt: str, png_level: int | None, overwrite: bool, max_pixels: int,
               ignore_orientation: bool, batch: BatchOptions, quiet: bool) -> None:
    """Filter images with a kernel, counting only pixels inside the field of view.

    Same inputs, mask options, outputs and error handling as normalize.
    Signed kernels (sharpen, laplacian, sobel) stay stable at the FOV margin.
    """
    try:
        settings = FilterSettings(kernel=kernel_spec, window=window, sigma=sigma, mode=mode,
                                  ignore_mask=ignore_mask, offset=offset, fill=fill, dtype=dtype,
                                  write_weights=write_weights)
        mask_settings = build_mask_settings(auto_mask, mask_check, erode, rim, feather, max_pixels,
                                            ignore_orientation)
        output = batch.output_settings(fmt, png_level, overwrite)
        settings.check_output(output)
        geometry = geometry_settings(crop, resize, write_mask, labels, bounds)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    pairs = collect_pairs(inputs, mask=mask, mask_dir=mask_dir, mask_pattern=mask_pattern,
                          outdir=outdir, batch=batch, auto_mask=auto_mask)
    step = FilterStep(outdir, settings, mask_settings, output, geometry)
    with bounds_file(None if batch.dry_run else bounds) as rows:
        report = execute(step, pairs, outdir=outdir, batch=batch, quiet=quiet,
                         params={**ctx.params, "kernel": kernel_spec if isinstance(kernel_spec, str)
                                 else kernel_spec.name}, on_result=rows)
    ctx.exit(report.exit_code)
