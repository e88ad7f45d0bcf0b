"""retina-prep mask: estimate and write FOV masks."""

from __future__ import annotations

from pathlib import Path

import click

from ..pipeline import MaskSettings
from ..steps import MaskStep
from .options import mask_trim_options, output_opt
from .runner import BatchOptions, ContactSheet, collect_pairs, execute, run_options


@click.command(
    "mask",
    epilog="""\b
Examples:
  retina-prep mask photos/ -o masks --sheet masks/sheet.png
  retina-prep mask DRIVE -o drive_masks --rim none
  retina-prep normalize photos/ --mask-dir masks --mask-pattern '{stem}_mask.png' -o out
""",
)
@click.argument("inputs", nargs=-1, type=click.Path(path_type=str))
@output_opt
@mask_trim_options(
    "auto",
    "Transition rim at the FOV margin: 'auto' trims it where the image shows one (the mask"
    " normalize would use); 'none' writes the whole field of view.",
)
@click.option(
    "--sheet",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also write a contact sheet (PNG): every image with its mask contour, for review.",
)
@run_options
@click.pass_context
def mask(ctx: click.Context, inputs: tuple[str, ...], outdir: Path, erode: float | str, rim: str,
         sheet: Path | None, overwrite: bool, max_pixels: int, ignore_orientation: bool,
         batch: BatchOptions, quiet: bool) -> None:
    """Estimate the field of view of each image and write OUTDIR/<stem>_mask.png (0/255).

    Takes the same INPUTs as normalize (files, DRIVE roots, split or plain
    folders) and mirrors dataset sub-folders. Existing mask files are not
    used: every mask is estimated from its image.
    """
    try:
        settings = MaskSettings(erode=erode, rim=rim, max_pixels=max_pixels,
                                     ignore_orientation=ignore_orientation)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    contact = ContactSheet(sheet, overwrite=overwrite)
    pairs = collect_pairs(inputs, mask=None, mask_dir=None, mask_pattern=None,
                          outdir=outdir, batch=batch, auto_mask=True)

    step = MaskStep(outdir, settings, overwrite, thumb_width=240 if sheet is not None else None)
    report = execute(step, pairs, outdir=outdir, batch=batch, quiet=quiet, params=dict(ctx.params),
                     on_result=contact)
    contact.write("mask", quiet)
    ctx.exit(report.exit_code)
