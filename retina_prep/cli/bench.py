"""retina-prep bench: the performance table, measured on this machine."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import click

from .. import bench as B
from .runner import log


def _table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> str:
    head = "| " + " | ".join(h for h, _ in columns) + " |"
    sep = "|" + "---|" * len(columns)
    lines = [head, sep]
    for r in rows:
        cells = []
        for _, key in columns:
            v = r.get(key, "")
            if not isinstance(v, float):
                cells.append(str(v))
            elif key.endswith(("ratio", "speedup", "_vs_own")):
                cells.append(f"{v:.2f}×")
            elif key.endswith("_s"):
                cells.append(f"{v:.2f}")
            else:
                cells.append(f"{v:.1f}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


@click.command("bench", epilog="""\b
Examples:
  retina-prep bench
  retina-prep bench --quick
  retina-prep bench --drive DRIVE --threads 1
""")
@click.option("--drive", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="A DRIVE folder for the batch throughput row [default: generated images].")
@click.option("--quick", is_flag=True, default=False,
              help="DRIVE size only, fewer repetitions (seconds instead of minutes).")
@click.option("--threads", type=click.IntRange(min=1), default=None,
              help="OpenCV threads [default: OpenCV's choice, usually all cores].")
def bench(drive: Path | None, quick: bool, threads: int | None) -> None:
    """Measure masked vs unmasked illumination normalization, the general filter2D path,
    the brute-force reference, batch throughput against the decode+encode floor, and peak
    memory. Prints a markdown table on stdout; progress on stderr.

    Every ratio compares two things measured in the same run, because timings on shared
    machines drift.
    """
    sizes = B.SIZES[:1] if quick else B.SIZES
    click.echo(f"Machine: {B.machine()}\n")
    log("bench: masked vs unmasked IN ...")
    rows = B.in_rows(sizes, repeat=3 if quick else 5, threads=threads)
    click.echo("Masked vs unmasked IN (median ms per image, RGB uint8):\n")
    click.echo(_table(rows, [("size", "size"), ("kernel", "kernel"),
                             ("OpenCV unmasked IN", "unmasked_ms"),
                             ("--ignore-mask IN", "ignore_ms"), ("masked IN", "masked_ms"),
                             ("masked ms/Mpx", "ms_per_mpx"),
                             ("masked / OpenCV unmasked", "ratio"),
                             ("masked / --ignore-mask", "own_ratio"),
                             ("masked via filter2D", "filter2d_ms")]))
    log("bench: first order vs zero order ...")
    click.echo("\nMasked IN, order 1 (local plane) vs order 0 (local mean), median ms per image;"
               " own mask per image, and one mask shared by many images (computed once):\n")
    click.echo(_table(B.order_rows(B.ORDER_SIZES[:1] if quick else B.ORDER_SIZES,
                                   repeat=3 if quick else 7),
                      [("size", "size"), ("kernel", "kernel"), ("order 0", "order0_ms"),
                       ("order 1", "order1_ms"), ("order 1 / order 0", "ratio"),
                       ("shared: order 0", "shared0_ms"), ("shared: order 1", "shared1_ms"),
                       ("shared: 1 / 0", "shared_ratio"),
                       ("shared order 1 / own order 0", "shared_vs_own"),
                       ("floor: window sums only / order 0", "floor_ratio")]))
    if not quick:
        log("bench: large Gaussian on one thread ...")
        g = B.gaussian_one_thread_row()
        click.echo("\nLarge Gaussian, one OpenCV thread (seconds):\n")
        click.echo(_table([g], [("case", "case"), ("pyramid s", "pyramid_s"),
                                ("exact separable s", "exact_s")]))
        log("bench: window sizes ...")
        click.echo("\nMasked IN, box windows of growing size (cost flat in the window):\n")
        click.echo(_table(B.window_rows(), [("size", "size"), ("kernel", "kernel"),
                                            ("masked IN ms", "masked_ms")]))
    if not quick:
        log("bench: end to end at HRF size ...")
        click.echo("\nOne HRF-size JPEG (3504x2336) and its mask file, read + mask + IN (box 101)"
                   " + write, one process, against the decode + encode floor (ms):\n")
        click.echo(_table(B.end_to_end_rows(), [
            ("output", "format"), ("mask", "mask"), ("normalize ms", "ms"),
            ("floor ms", "floor_ms"), ("normalize / floor", "ratio"), ("output MB", "mb")]))
        log("bench: masked CLAHE at HRF size ...")
        c = B.clahe_row()
        click.echo("\nMasked CLAHE against OpenCV's CLAHE (clip 2, 8x8 tiles; median ms):\n")
        click.echo(_table([c], [("case", "case"), ("OpenCV CLAHE", "opencv_ms"),
                                ("masked CLAHE", "masked_ms"), ("masked / OpenCV", "ratio"),
                                ("masked, RGB via Lab", "rgb_ms")]))
        log("bench: the FOV stage at HRF size ...")
        click.echo("\nThe FOV stage at HRF size (estimate + rim trim, no mask file) against the JPEG"
                   " decode, and the default flow against the decode + PNG-encode floor (median ms):\n")
        click.echo(_table(B.fov_stage_rows(), [
            ("case", "case"), ("ms", "ms"), ("against ms", "against_ms"), ("ratio", "ratio"),
            ("target", "target")]))
        log("bench: Gaussian vs box through normalize ...")
        g = B.gaussian_vs_box_row()
        click.echo("\nThe kernels normalize runs for --kernel gaussian --sigma 80 and --window 161"
                   " (median ms):\n")
        click.echo(_table([g], [("case", "case"), ("gaussian ms", "gaussian_ms"),
                                ("box ms", "box_ms"), ("gaussian / box", "ratio")]))
    log("bench: brute-force reference ...")
    ref = B.reference_row()
    click.echo("\nBrute-force NumPy reference (direct window sums, float64) vs the library:\n")
    click.echo(_table([ref], [("case", "case"), ("reference ms", "reference_ms"),
                              ("library ms", "library_ms"), ("speed-up", "speedup"),
                              ("max |diff|", "max_abs_diff")]))
    log("bench: batch throughput ...")
    b = B.batch_row(drive)
    click.echo("\nBatch throughput, one process (read + mask + IN + write vs read + encode + write):\n")
    click.echo(_table([b], [("images", "source"), ("n", "images"), ("floor img/s", "floor_img_s"),
                            ("normalize img/s", "normalize_img_s"), ("time / floor", "ratio")]))
    if not quick:
        log("bench: -j 2 against -j 1 ...")
        p = B.parallel_row(drive)
        click.echo("\nWorker processes: the whole normalize command with -j 1 and -j 2, and the"
                   " images alone (the batch runner in one process, pool start included); seconds,"
                   " best of 3; start-up: `normalize --help`:\n")
        click.echo(_table([p], [("images", "source"), ("n", "images"), ("-j 1 s", "j1_s"),
                                ("-j 2 s", "j2_s"), ("-j 1 / -j 2", "speedup"),
                                ("start-up s", "startup_s"),
                                ("images only: -j 1 s", "batch_j1_s"),
                                ("images only: -j 2 s", "batch_j2_s"),
                                ("images only: -j 1 / -j 2", "batch_speedup")]))
        log("bench: peak memory ...")
        mrows = [B.memory_row(), B.memory_row(mask_file=False)]
        click.echo("\nPeak memory (fresh process):\n")
        click.echo(_table(mrows, [("case", "case"), ("peak RSS MB", "peak_rss_mb"),
                                   ("imports alone MB", "imports_only_mb")]))
