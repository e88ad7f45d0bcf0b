"""Report writers: the evaluation's tables and files, and the bounds CSV of a run's geometry.

The command line calls these; a script can too (no flags, no printing).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from .batch import Result, Status
from .errors import DatasetError
from .evaluate import RESPONSES
from .figures import roc_figure
from .io import write_bytes, write_image

__all__ = ["markdown_report", "write_reports", "BoundsFile", "BOUNDS_COLUMNS"]


def _fmt(v: float | None, digits: int = 1, sign: bool = True) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def markdown_report(summary: dict) -> str:
    """The report of :func:`~retina_prep.evaluate.summarize` as markdown tables (what
    ``retina-prep evaluate`` prints)."""
    lines = [f"Images: {summary['images']} ({summary['labelled_images']} with vessel labels).", "",
             "Margin bias: mean of output − I0 over background FOV pixels (vessels excluded), by"
             " distance from the FOV margin (px at DRIVE scale), R/G/B, 8-bit units; 'none' is the"
             " raw image − I0.", ""]
    bands = summary["bands"]
    lines.append("| method | " + " | ".join(bands) + " | edge/interior |")
    lines.append("|---|" + "---|" * (len(bands) + 1))
    for method, row in summary["bias"].items():
        cells = ["/".join(_fmt(v) for v in row[b]) for b in bands]
        lines.append(f"| {method} | " + " | ".join(cells)
                     + f" | {_fmt(summary['edge_interior'][method], 2, False)} |")
    if summary["labelled_images"]:
        lines += ["", "Vessel separability: ROC AUC of a training-free response, whole FOV and the"
                  " margin band (outer 10 % of the FOV radius).", ""]
        head = [f"{r} ({reg})" for r in RESPONSES for reg in ("FOV", "margin band")]
        lines.append("| method | " + " | ".join(head) + " |")
        lines.append("|---|" + "---|" * len(head))
        for method, per in summary["auc"].items():
            cells = [_fmt(per[r].get(reg), 4, False) for r in RESPONSES
                     for reg in ("FOV", "margin band")]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_reports(summary: dict, outdir: Path, *, overwrite: bool = False) -> list[Path]:
    """Write the report of :func:`~retina_prep.evaluate.summarize` into ``outdir``:
    ``bias.csv`` (method, band, R, G, B, pixels), ``auc.csv`` (method, response, region, auc),
    ``report.json`` (everything but the ROC curves) and, with labels, one ROC figure per
    response. Returns the paths written (atomically; existing files only with ``overwrite``)."""
    written = []
    rows = [["method", "band", "R", "G", "B", "pixels"]]
    for method, per in summary["bias"].items():
        for band, vals in per.items():
            rows.append([method, band, *[f"{v:.4f}" for v in (vals + [math.nan] * 3)[:3]],
                         summary["pixels"][method][band]])
    auc_rows = [["method", "response", "region", "auc"]]
    for method, per in summary["auc"].items():
        for response, regions in per.items():
            for region, v in regions.items():
                auc_rows.append([method, response, region, f"{v:.6f}"])
    for name, table in (("bias.csv", rows), ("auc.csv", auc_rows)):
        buf = io.StringIO()
        csv.writer(buf).writerows(table)
        written.append(write_bytes(outdir / name, buf.getvalue().encode(), overwrite=overwrite))
    data = {k: v for k, v in summary.items() if k != "roc"}
    written.append(write_bytes(outdir / "report.json",
                               json.dumps(data, indent=2, allow_nan=True).encode(),
                               overwrite=overwrite))
    if summary["labelled_images"]:
        for response in RESPONSES:
            p = outdir / f"roc_{response.replace(' ', '_')}.png"
            written.append(write_image(p, roc_figure(summary, response), overwrite=overwrite))
    return written



#: Columns of the bounds CSV (``--bounds FILE``).
BOUNDS_COLUMNS = ("image", "output", "original_width", "original_height", "output_width",
                  "output_height", "fov_centre_x", "fov_centre_y", "fov_radius", "fov_x0",
                  "fov_y0", "fov_x1", "fov_y1", "crop_x0", "crop_y0", "crop_side",
                  "m00", "m01", "m02", "m10", "m11", "m12")


class BoundsFile:
    """The bounds CSV (``--bounds FILE``) of a run's geometry records, a callable taking each
    :class:`~retina_prep.batch.Result`: one row per image that ran, appended as results come in (a header
    when the file is new), so an interrupted or resumed run keeps every row it made. When the
    run ends, an output that has several rows (a rerun with --overwrite) keeps its last."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._fh = None
        if path is None:
            return
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            new = not path.exists() or path.stat().st_size == 0
            self._fh = open(path, "a", newline="", encoding="utf-8")
        except OSError as exc:
            raise DatasetError(f"cannot write the bounds file ({exc.strerror or exc})", path,
                               code="bounds-file") from None
        self._writer = csv.writer(self._fh)
        if new:
            self._writer.writerow(BOUNDS_COLUMNS)
            self._fh.flush()

    def __call__(self, result: Result) -> None:
        g = result.info.get("geometry") if result.status == Status.DONE else None
        if self._fh is None or g is None:
            return
        crop = g.get("crop") or ["", "", ""]
        (m00, m01, m02), (m10, m11, m12) = g["matrix"]
        self._writer.writerow([
            str(result.pair.image), str(result.outputs[0]), *g["original_size"],
            *g["output_size"], *(round(v, 3) for v in g["fov_centre"]), g["fov_radius"],
            *g["fov_bounds"], *crop, *(repr(float(v)) for v in (m00, m01, m02, m10, m11, m12))])
        self._fh.flush()

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            self._compact()

    def _compact(self) -> None:
        """Keep the last row of each output, in the order the rows first came."""
        assert self.path is not None
        try:
            with open(self.path, newline="", encoding="utf-8") as fh:
                rows = list(csv.reader(fh))
        except (OSError, UnicodeDecodeError, csv.Error):
            return  # not ours to repair
        if not rows or rows[0] != list(BOUNDS_COLUMNS):
            return
        last: dict[str, list[str]] = {}
        for row in rows[1:]:
            if len(row) > 1:
                last.pop(row[1], None)  # (re-inserted: the order of the latest rows)
                last[row[1]] = row
        if len(last) == len(rows) - 1:
            return
        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(BOUNDS_COLUMNS)
        writer.writerows(last.values())
        try:
            write_bytes(self.path, text.getvalue().encode("utf-8"), overwrite=True)
        except OSError:
            pass

    def __enter__(self) -> BoundsFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
