"""retina-prep evaluate: margin bias and vessel separability of several preprocessings."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from ..batch import Result
from ..evaluate import methods_for, summarize
from ..normalize import DEFAULT_TARGET, KERNELS
from ..reports import markdown_report, write_reports
from ..steps import EvaluateStep
from .options import FiniteRange, WindowType, build_mask_settings, mask_options
from .runner import BatchOptions, collect_pairs, execute, log, run_options


@click.command(
    "evaluate",
    epilog="""\b
Examples:
  retina-prep evaluate DRIVE/test -o report --config configs/drive.toml
  retina-prep evaluate sample_data -o report --labels sample_data/vessels
  retina-prep evaluate CHASE_DB1 -o report --window 41
""",
)
@click.argument("inputs", nargs=-1, type=click.Path(path_type=str))
@click.option("-o", "--output", "outdir", required=True,
              type=click.Path(file_okay=False, path_type=Path), help="Report folder.")
@mask_options
@click.option("--labels", default="auto", show_default=True,
              help="Vessel labels: 'auto' (DRIVE 1st_manual, HRF manual1, CHASE_DB1 1stHO, STARE .ah),"
              " 'none', or a folder with files named after the images.")
@click.option("--window", "--size", "window", type=WindowType(), default="auto", show_default=True,
              help="The one window every method uses: odd pixels or 'auto' (4% of the FOV"
              " diameter).")
@click.option("--kernel", type=click.Choice(KERNELS), default="mean", show_default=True)
@click.option("--target", type=FiniteRange(0, 255), default=DEFAULT_TARGET, show_default=True,
              help="I0 (8-bit units).")
@click.option("--order", type=click.Choice(["0", "1", "both"]), default="both", show_default=True,
              help="Orders of masked IN to compare: the local mean (0), the local plane (1), or"
              " both side by side.")
@click.option("--peers", is_flag=True, default=False,
              help="Also the peers' ways with the margin: CLAHE (OpenCV's and masked), Ben"
              " Graham's 4(I - G) + 128 as published (0.9 R crop) and masked, mirror padding then"
              " unmasked IN.")
@run_options
@click.pass_context
def evaluate(ctx: click.Context, inputs: tuple[str, ...], outdir: Path, mask: Path | None,
             mask_dir: Path | None, mask_pattern: str | None, auto_mask: bool, mask_check: bool,
             erode: float | str, rim: str, feather: float, labels: str | None, window: int | str,
             kernel: str, target: float, order: str, peers: bool, overwrite: bool,
             max_pixels: int, ignore_orientation: bool, batch: BatchOptions,
             quiet: bool) -> None:
    """Measure what the mask buys, on your own data.

    Runs the same images through: none, IN without mask, IN with mask (order
    0 and/or 1), and masked standardization, all with the same window, and reports (1) the
    margin bias profile by distance band from the FOV margin and (2) the ROC
    AUC of training-free vessel responses (inverted green, black top-hat) in
    the whole FOV and in the margin band, where labels exist. A markdown
    table goes to stdout; bias.csv, auc.csv, report.json and ROC figures to
    OUTDIR.
    """
    if (outdir / "report.json").exists() and not overwrite and not batch.dry_run:
        if batch.skip_existing:
            if not quiet:
                log(f"evaluate: {outdir / 'report.json'} exists; skipped")
            ctx.exit(0)
        raise click.UsageError(f"{outdir / 'report.json'}: report exists (use --overwrite to"
                               " replace it, or --skip-existing to keep it)")
    labels_arg = None if labels == "none" else labels
    if labels_arg not in (None, "auto") and not Path(labels_arg).is_dir():
        raise click.BadParameter(f"{labels_arg}: not a folder (or 'auto', 'none')",
                                 param_hint="--labels")
    mask_settings = build_mask_settings(auto_mask, mask_check, erode, rim, feather, max_pixels,
                                        ignore_orientation)
    pairs = collect_pairs(inputs, mask=mask, mask_dir=mask_dir, mask_pattern=mask_pattern,
                          outdir=outdir, batch=batch, auto_mask=auto_mask)
    evaluations = []

    def keep(result: Result) -> None:
        ev = result.products.get("evaluation")
        if ev is not None:
            evaluations.append(ev)

    methods = methods_for((0, 1) if order == "both" else (int(order),), peers=peers)
    step = EvaluateStep(window, kernel, target, tuple(methods), mask_settings, labels_arg)
    report = execute(step, pairs, outdir=outdir, batch=batch, quiet=quiet,
                     params=dict(ctx.params), on_result=keep)
    if batch.dry_run:
        return
    if not evaluations:
        raise click.ClickException("no image could be evaluated")
    summary = summarize(evaluations, methods)
    click.echo(markdown_report(summary))
    written = write_reports(summary, outdir, overwrite=overwrite)
    if batch.print_outputs or batch.print0:
        for p in written:
            if batch.print0:
                sys.stdout.buffer.write(os.fsencode(p) + b"\0")
            else:
                click.echo(str(p))
    if not quiet:
        log(f"evaluate: report in {outdir} ({', '.join(p.name for p in written)})")
    ctx.exit(report.exit_code)
