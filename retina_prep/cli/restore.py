"""retina-prep restore: map predictions made on cut outputs back onto the original photographs."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import RetinaPrepError
from ..pipeline import read_transforms
from ..steps import RestoreStep
from .options import format_opt, output_opt
from .runner import BatchOptions, collect_pairs, execute, run_options


@click.command(
    "restore",
    epilog="""\b
Examples:
  retina-prep normalize DRIVE -o prep --crop fov --resize 512
  (your model writes prep/test/01_test_vessels.png, ... into preds/)
  retina-prep restore preds --manifest prep/manifest.jsonl -o restored
  retina-prep restore preds --manifest prep/manifest.jsonl -o restored --interpolation nearest
""",
)
@click.argument("inputs", nargs=-1, type=click.Path(path_type=str))
@output_opt
@click.option("--manifest", "source", required=True,
              type=click.Path(dir_okay=False, path_type=Path),
              help="The manifest of the normalize run that cut the images (--crop/--resize).")
@click.option("--interpolation", type=click.Choice(["linear", "nearest", "cubic"]),
              default="linear", show_default=True,
              help="linear for probability maps and images; nearest for label maps (values kept).")
@format_opt
@run_options(without=("manifest",))  # --manifest names the run whose outputs were cut
@click.pass_context
def restore(ctx: click.Context, inputs: tuple[str, ...], outdir: Path, source: Path,
            interpolation: str, fmt: str, png_level: int | None, overwrite: bool,
            max_pixels: int, ignore_orientation: bool, batch: BatchOptions,
            quiet: bool) -> None:
    """Map predictions (probability or label maps) made on cropped/resized outputs back onto
    the pixel grid of the original photographs.

    The provenance log of this run goes to OUTDIR/manifest.jsonl.

    Each PRED file is matched to the output it was made from by name: its name is the
    output's name, or starts with it followed by _ - or . (01_test_vessels.png belongs to
    01_test.png). Writes OUTDIR/<pred name>, at the original size; pixels the cut output
    did not cover are 0.
    """
    try:
        transforms = read_transforms(source)
    except RetinaPrepError as exc:
        raise click.UsageError(str(exc)) from None
    try:
        output = batch.output_settings(fmt, png_level, overwrite)
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    pairs = collect_pairs(inputs, mask=None, mask_dir=None, mask_pattern=None, outdir=outdir,
                          batch=batch)
    step = RestoreStep(outdir, transforms, interpolation, output, max_pixels)
    report = execute(step, pairs, outdir=outdir, batch=batch, quiet=quiet, params=dict(ctx.params))
    ctx.exit(report.exit_code)
