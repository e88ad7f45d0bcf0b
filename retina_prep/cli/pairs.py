"""retina-prep pairs: show what was found and how it pairs up."""

from __future__ import annotations

from pathlib import Path

import click

from ..dataset import detect_layout, find_label
from .options import mask_source_options
from .runner import BatchOptions, collect_pairs, input_options, log


@click.command(
    "pairs",
    epilog="""\b
Examples:
  retina-prep pairs DRIVE
  retina-prep pairs HRF/images --mask-dir HRF/mask --mask-pattern '{stem}_mask.tif'
""",
)
@click.argument("inputs", nargs=-1, type=click.Path(path_type=str))
@mask_source_options
@input_options
def pairs(inputs: tuple[str, ...], mask: Path | None, mask_dir: Path | None,
          mask_pattern: str | None, auto_mask: bool, mask_check: bool, batch: BatchOptions) -> None:
    """Show the images found in INPUT and their masks and vessel labels, as a table on stdout.

    Tab-separated: image, mask (or '-' when it will be estimated), where the
    mask came from, label, and the output name: the path under -o without
    the file ending (--dry-run of a command shows the full output paths).
    A summary line goes to stderr.
    """
    found = collect_pairs(inputs, mask=mask, mask_dir=mask_dir, mask_pattern=mask_pattern,
                          outdir=None, batch=batch, auto_mask=auto_mask)
    click.echo("image\tmask\tmask_source\tlabel\tname")
    n_mask = n_label = 0
    for p in found:
        label = find_label(p.image)
        m = p.mask
        n_mask += m is not None
        n_label += label is not None
        src = "estimated" if m is None else p.mask_source
        click.echo(f"{p.image}\t{m or '-'}\t{src}\t{label or '-'}\t{p.rel}")
    log(f"pairs: layout {detect_layout(found)}: {len(found)} images, {n_mask} with masks,"
        f" {n_label} with labels")
