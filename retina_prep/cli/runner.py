"""The batch loop every command shares: pairing, progress, per-file errors, summary."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

import click
from tqdm import tqdm

from ..batch import Report, Result, check_outputs_unique, run_batch
from ..dataset import Pair, find_pairs
from ..errors import DatasetError
from .options import stderr_is_terminal


def log(msg: str) -> None:
    """One line on stderr that does not break a progress bar."""
    tqdm.write(msg, file=sys.stderr)


def collect_pairs(inputs, *, mask, mask_dir, mask_pattern, outdir) -> list[Pair]:
    """Find and pair inputs; problems with the inputs themselves are usage errors (exit 2).

    ``outdir`` (a folder or a list of folders) is never searched for inputs.
    """
    outdirs = [d for d in (outdir if isinstance(outdir, (list, tuple)) else [outdir]) if d]
    if not inputs:
        raise click.UsageError("no INPUT given: name image files or dataset folders")
    if mask is not None and mask_dir is not None:
        raise click.UsageError("--mask and --mask-dir exclude each other")
    try:
        return find_pairs(
            inputs, mask=mask, mask_dir=mask_dir, mask_pattern=mask_pattern, exclude=outdirs
        )
    except DatasetError as exc:
        raise click.UsageError(str(exc)) from None


def prepare_outdir(outdir: Path) -> None:
    """Create the output folder; an unwritable one stops the run (exit 1)."""
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise click.ClickException(f"{outdir}: cannot create output folder ({exc.strerror or exc})")
    if not os.access(outdir, os.W_OK | os.X_OK):
        raise click.ClickException(f"{outdir}: output folder is not writable")


def run(
    command: str,
    pairs: list[Pair],
    step: Callable[[Pair], Result],
    *,
    outdir: Path,
    quiet: bool,
) -> Report:
    """Run ``step`` over ``pairs`` with a progress bar; log warnings and failures."""
    report = Report()
    clashes = check_outputs_unique(pairs)
    todo = [p for p in pairs if p not in clashes]
    for p in pairs:
        if p in clashes:
            log(f"error: {clashes[p]}")
            report.add(Result(p, "failed", error=clashes[p]))
    show_bar = not quiet and len(todo) > 1 and stderr_is_terminal()
    with tqdm(total=len(todo), disable=not show_bar, file=sys.stderr, unit="img",
              desc=command, dynamic_ncols=True) as bar:
        for result in run_batch(todo, step):
            for w in result.warnings:
                log(f"warning: {w}")
            if result.status != "done":
                log(f"error: {result.error}")
            report.add(result)
            bar.update(1)
    if not quiet:
        log(
            f"{command}: {report.done} done, {report.failed} failed;"
            f" outputs in {outdir}"
        )
    return report
