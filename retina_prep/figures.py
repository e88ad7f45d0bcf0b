"""Comparison figures built as arrays (io writes them).

A *panel* is a row of labelled columns (original | normalized | ...) with the
FOV contour drawn faintly on each, so the margin, where masked and unmasked
filtering differ, can be seen.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import cv2
import numpy as np
from numpy.typing import ArrayLike

from .fov import margin_distance

#: A point (x, y) in pixel coordinates.
Point = tuple[float, float]

#: Default largest width of a panel (pixels): HRF-sized columns are shown downscaled.
PANEL_WIDTH = 2400

__all__ = [
    "PANEL_WIDTH",
    "to_display", "panel", "choose_inset", "thumbnail", "contact_sheet", "THEME", "PALETTE",
]

#: Colours (RGB) and proportions of every figure.
THEME: dict[str, Any] = {
    "background": (255, 255, 255),
    "text": (20, 20, 20),
    # magenta: not the cyan a kept rim takes in normalized outputs, nor the inset's yellow
    "contour": (230, 0, 230),
    "contour_alpha": 0.45,
    "pad_fraction": 0.02,  # of the image width
    "title_fraction": 0.07,  # title bar height, of the image width
}


def to_display(image: ArrayLike) -> np.ndarray:
    """Any image (gray or RGB; uint8, uint16 or float in [0, 1]) as uint8 RGB."""
    img = np.asarray(image)
    if img.dtype == np.uint8:
        out = img
    elif np.issubdtype(img.dtype, np.integer):
        top = np.iinfo(img.dtype).max
        out = np.clip(np.rint(img.astype(np.float64) * (255.0 / top)), 0, 255).astype(np.uint8)
    else:
        out = np.clip(np.rint(np.nan_to_num(img.astype(np.float64)) * 255.0), 0, 255).astype(np.uint8)
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=2)
    elif out.shape[2] == 1:
        out = np.repeat(out, 3, axis=2)
    elif out.shape[2] > 3:
        out = out[..., :3]
    return np.ascontiguousarray(out)


def _draw_contour(img: np.ndarray, mask: ArrayLike, thickness: int) -> np.ndarray:
    m = np.asarray(mask, bool).astype(np.uint8)
    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    over = img.copy()
    cv2.drawContours(over, contours, -1, THEME["contour"], thickness, cv2.LINE_AA)
    a = THEME["contour_alpha"]
    return cv2.addWeighted(over, a, img, 1 - a, 0)


def _title(text: str, width: int, height: int) -> np.ndarray:
    bar = np.full((height, width, 3), THEME["background"], np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    scale = height / 45.0
    thick = max(1, int(round(height / 22)))
    (tw, th), _ = cv2.getTextSize(text, font, scale, thick)
    if tw > width * 0.96:  # shrink long titles to fit
        scale *= width * 0.96 / tw
        (tw, th), _ = cv2.getTextSize(text, font, scale, thick)
    org = ((width - tw) // 2, (height + th) // 2)
    cv2.putText(bar, text, org, font, scale, THEME["text"], thick, cv2.LINE_AA)
    return bar


#: Line colours (RGB) of the profile strip, one per column.
PALETTE = [(90, 90, 90), (214, 39, 40), (31, 119, 180), (44, 160, 44), (148, 103, 189), (255, 127, 14)]


def _gray(img: np.ndarray) -> np.ndarray:
    return img.astype(np.float32).mean(axis=2)


def choose_inset(images: Sequence[ArrayLike], mask: ArrayLike, size: int
                 ) -> tuple[int, int, int]:
    """Top-left ``(x, y)`` of the ``size`` x ``size`` stretch of FOV margin where ``images`` differ most.

    The difference is the largest absolute difference (gray) between any two
    of ``images``, summed over the window; only windows centred within
    ``size / 2`` of the FOV margin are considered.
    """
    grays = [_gray(to_display(im)) for im in images]
    h, w = grays[0].shape
    size = int(min(size, h, w))
    diff = np.zeros((h, w), np.float32)
    for i in range(len(grays)):
        for j in range(i + 1, len(grays)):
            np.maximum(diff, np.abs(grays[i] - grays[j]), out=diff)
    m = np.asarray(mask, bool)
    diff[~m] = 0
    score = cv2.boxFilter(diff, -1, (size, size), normalize=False, borderType=cv2.BORDER_CONSTANT)
    d = margin_distance(m)
    near = m & (d < size / 2)
    half = size // 2
    valid = np.zeros((h, w), bool)
    valid[half:h - (size - half) + 1, half:w - (size - half) + 1] = True
    cand = near & valid
    if not cand.any():
        cand = valid if valid.any() else np.ones((h, w), bool)
    score = np.where(cand, score, -1)
    cy, cx = np.unravel_index(int(np.argmax(score)), score.shape)
    return int(np.clip(cx - half, 0, w - size)), int(np.clip(cy - half, 0, h - size)), size


def _profile_line(mask: ArrayLike, inset: tuple[int, int, int]) -> tuple[Point, Point]:
    """End points of a line along the radius of the FOV through the inset, placed so that it
    crosses the FOV margin where the inset holds it (it ran through the inset's centre, which
    in some figures lies a way from the margin: the profile then never crossed it)."""
    m = np.asarray(mask, bool)
    x, y, size = inset
    cx, cy = x + size / 2, y + size / 2
    ys, xs = np.nonzero(m)
    oy, ox = (ys.mean(), xs.mean()) if ys.size else (m.shape[0] / 2, m.shape[1] / 2)
    vx, vy = cx - ox, cy - oy
    n = np.hypot(vx, vy) or 1.0
    vx, vy = vx / n, vy / n
    half = size / 2
    # the radius's stretch inside the inset square; where the mask ends on it, the line is
    # that whole stretch (so it crosses the margin), else the old line through the centre
    tx = sorted(((x - cx) / vx, (x + size - cx) / vx)) if abs(vx) > 1e-9 else [-np.inf, np.inf]
    ty = sorted(((y - cy) / vy, (y + size - cy) / vy)) if abs(vy) > 1e-9 else [-np.inf, np.inf]
    t0, t1 = max(tx[0], ty[0]), min(tx[1], ty[1])
    t = np.linspace(t0, t1, max(8, int(4 * (t1 - t0))))
    px, py = cx + vx * t, cy + vy * t
    ok = (px >= 0) & (py >= 0) & (px < m.shape[1]) & (py < m.shape[0])
    inside = np.zeros(t.size, bool)
    inside[ok] = m[py[ok].astype(int), px[ok].astype(int)]
    if (inside[:-1] != inside[1:]).any():
        return (cx + vx * t0, cy + vy * t0), (cx + vx * t1, cy + vy * t1)
    return (cx - vx * half, cy - vy * half), (cx + vx * half, cy + vy * half)


def _sample(img_gray: np.ndarray, p0: Point, p1: Point, n: int) -> np.ndarray:
    xs = np.linspace(p0[0], p1[0], n).astype(np.float32)
    ys = np.linspace(p0[1], p1[1], n).astype(np.float32)
    return cv2.remap(img_gray, xs[None], ys[None], cv2.INTER_LINEAR,
                     borderMode=cv2.BORDER_REPLICATE)[0]


def _profile_strip(grays: Sequence[np.ndarray], titles: Sequence[str], p0: Point, p1: Point,
                   mask: ArrayLike, width: int, height: int) -> np.ndarray:
    """A plot of gray level along p0 -> p1, one line per column, with a legend and the margin."""
    strip = np.full((height, width, 3), THEME["background"], np.uint8)
    n = max(2, int(np.hypot(p1[0] - p0[0], p1[1] - p0[1])) + 1)
    font, fs = cv2.FONT_HERSHEY_SIMPLEX, height / 260.0
    thick = max(1, int(round(height / 150)))
    left, right = int(0.06 * width), int(0.22 * width)
    top, bottom = int(0.08 * height), int(0.14 * height)
    x0, x1, y0, y1 = left, width - right, top, height - bottom
    cv2.rectangle(strip, (x0, y0), (x1, y1), (180, 180, 180), 1)
    curves = [_sample(g, p0, p1, n) for g in grays]
    # the axis spans the data (dark images would otherwise sit in the bottom tenth of 0..255)
    lo = float(min(np.percentile(c, 1) for c in curves))
    hi = float(max(np.percentile(c, 99) for c in curves))
    lo, hi = max(0.0, lo - 0.08 * (hi - lo) - 1), min(255.0, hi + 0.08 * (hi - lo) + 1)
    span = max(hi - lo, 1.0)
    for level in np.linspace(lo, hi, 3):
        yy = int(y1 - (level - lo) / span * (y1 - y0))
        cv2.line(strip, (x0, yy), (x1, yy), (225, 225, 225), 1)
        cv2.putText(strip, f"{level:.0f}", (2, yy + int(4 * fs)), font, fs * 0.8, THEME["text"], 1,
                    cv2.LINE_AA)
    inside = _sample(np.asarray(mask, np.float32), p0, p1, n) > 0.5
    if inside.any() and not inside.all():  # the margin: where inside changes
        k = int(np.argmax(inside[:-1] != inside[1:]))
        xm = int(x0 + (k + 0.5) / (n - 1) * (x1 - x0))
        for yy in range(y0, y1, 8):
            cv2.line(strip, (xm, yy), (xm, min(yy + 4, y1)), (120, 120, 120), 1)
        cv2.putText(strip, "FOV margin", (xm + 4, y0 + int(14 * fs)), font, fs * 0.8,
                    (120, 120, 120), 1, cv2.LINE_AA)
    for i, (vals, title) in enumerate(zip(curves, titles)):
        px = x0 + np.arange(n) / (n - 1) * (x1 - x0)
        py = y1 - (np.clip(vals, lo, hi) - lo) / span * (y1 - y0)
        pts = np.round(np.stack([px, py], 1)).astype(np.int32).reshape(-1, 1, 2)
        colour = PALETTE[i % len(PALETTE)]
        cv2.polylines(strip, [pts], False, colour, thick, cv2.LINE_AA)
        ly = y0 + int((i + 0.7) * (y1 - y0) / max(len(grays), 4))
        cv2.line(strip, (x1 + 10, ly), (x1 + 40, ly), colour, max(2, thick))
        cv2.putText(strip, title, (x1 + 46, ly + int(5 * fs)), font, fs * 0.8, THEME["text"], 1,
                    cv2.LINE_AA)
    cv2.putText(strip, f"gray level (axis {lo:.0f}-{hi:.0f}) along the line in the insets, across"
                " the FOV margin", (x0, height - 6), font, fs * 0.8, THEME["text"], 1, cv2.LINE_AA)
    return strip


def _halo_line(img: np.ndarray, a: tuple[int, int], b: tuple[int, int], thickness: int) -> None:
    """A line visible on any background: dark outline, light core."""
    cv2.line(img, a, b, (0, 0, 0), thickness + 2, cv2.LINE_AA)
    cv2.line(img, a, b, (255, 255, 255), thickness, cv2.LINE_AA)


def panel(columns: Sequence[tuple[str, ArrayLike]], *, mask: ArrayLike | None = None,
          contour: bool = True, inset: tuple[int, int, int] | str | None = None,
          profile: bool = False,
          max_width: int | None = None) -> np.ndarray:
    """A row of labelled images of equal size, with an optional zoomed inset row and profile strip.

    Parameters
    ----------
    columns : sequence of (title, image)
        Images of the same height and width (gray or RGB, any dtype of
        :func:`to_display`).
    mask : (H, W) bool ndarray, optional
        The FOV; its contour is drawn faintly on every column.
    contour : bool
        Draw the contour (when a mask is given).
    inset : (x, y, size) or "auto", optional
        A square stretch shown zoomed under every column (the same pixels
        in each); ``"auto"`` picks the stretch of FOV margin where the
        columns differ most (needs ``mask``; on images under 4 px a side,
        no inset and no profile).
    profile : bool
        Add a strip plotting each column's gray level along a line across
        the FOV margin through the inset (needs ``mask`` and ``inset``).
    max_width : int, optional
        Largest panel width in pixels. Wider panels show the columns
        downscaled (area interpolation) and say so in a caption; insets and
        profiles still use the full-resolution pixels.

    Returns
    -------
    (H', W', 3) uint8 ndarray
        Width ``n * W + (n + 1) * pad``; height ``title + H + 2 * pad``, plus
        ``W // 2 + pad`` with an inset and ``round(0.35 * W) + pad`` with a
        profile; ``pad = max(2, round(pad_fraction * W))`` and
        ``title = max(14, round(title_fraction * W))``.
    """
    cols = [(t, to_display(im)) for t, im in columns]
    if not cols:
        raise ValueError("a panel needs at least one column")
    h, w = cols[0][1].shape[:2]
    for t, im in cols:
        if im.shape[:2] != (h, w):
            raise ValueError(f"column {t!r} is {im.shape[1]}x{im.shape[0]}, expected {w}x{h}")
    if isinstance(inset, str):
        if inset != "auto" or mask is None:
            raise ValueError("inset 'auto' needs a mask")
        if min(h, w) < 4:  # no room for a zoom: the columns alone
            inset, profile = None, False
        else:
            inset = choose_inset([im for _, im in cols[1:]] if len(cols) > 2
                                 else [im for _, im in cols],
                                 mask, max(16, int(round(0.12 * min(h, w)))))
    if inset is not None:
        ix, iy, isz = (int(v) for v in inset)
        if ix < 0 or iy < 0 or isz < 4 or ix + isz > w or iy + isz > h:
            raise ValueError(f"inset {ix},{iy},{isz} does not fit in the {w}x{h} image"
                             f" (x + size <= {w}, y + size <= {h}, size >= 4)")
        inset = (ix, iy, isz)
    if profile and (inset is None or mask is None):
        raise ValueError("a profile needs a mask and an inset")
    n = len(cols)
    full_w = n * w + (n + 1) * max(2, int(round(THEME["pad_fraction"] * w)))
    scale = 1.0
    if max_width is not None and full_w > max_width:
        scale = max_width / full_w
    sw = max(1, int(w * scale))  # the columns as shown
    pad = max(2, int(round(THEME["pad_fraction"] * sw)))
    while max_width is not None and scale < 1 and sw > 1 and n * sw + (n + 1) * pad > max_width:
        sw -= 1  # rounding: shrink until the panel fits
        pad = max(2, int(round(THEME["pad_fraction"] * sw)))
    scale = sw / w if scale < 1 else 1.0
    sh = max(1, int(round(h * scale)))
    title_h = max(14, int(round(THEME["title_fraction"] * sw)))
    width = n * sw + (n + 1) * pad
    inset_h = sw // 2 if inset is not None else 0
    prof_h = int(round(0.35 * sw)) if profile else 0
    cap_h = title_h if scale < 1 else 0
    height = (title_h + sh + 2 * pad + (inset_h + pad if inset_h else 0)
              + (prof_h + pad if prof_h else 0) + cap_h)
    out = np.full((height, width, 3), THEME["background"], np.uint8)
    thickness = max(1, int(round(sw / 400)))
    line = (_profile_line(mask, inset) if profile and mask is not None and inset is not None
            else None)
    small_mask = None
    if mask is not None:
        small_mask = mask if scale == 1 else cv2.resize(
            np.asarray(mask, np.uint8), (sw, sh), interpolation=cv2.INTER_NEAREST) > 0
    for i, (t, im) in enumerate(cols):
        x0 = pad + i * (sw + pad)
        small = im if scale == 1 else cv2.resize(im, (sw, sh), interpolation=cv2.INTER_AREA)
        shown = (_draw_contour(small, small_mask, thickness)
                 if contour and small_mask is not None else small.copy())
        if inset is not None:
            ix, iy, isz = inset
            crop = im[iy:iy + isz, ix:ix + isz]  # full-resolution pixels
            if contour and mask is not None:
                crop = _draw_contour(crop, np.asarray(mask, bool)[iy:iy + isz, ix:ix + isz],
                                     max(1, int(round(isz / 200))))
            zoom = cv2.resize(crop, (inset_h, inset_h), interpolation=cv2.INTER_NEAREST
                              if inset_h >= isz else cv2.INTER_AREA)
            if line is not None:
                f = inset_h / isz
                a = (int((line[0][0] - ix) * f), int((line[0][1] - iy) * f))
                b = (int((line[1][0] - ix) * f), int((line[1][1] - iy) * f))
                _halo_line(zoom, a, b, max(1, thickness))
            r0 = (int(ix * scale), int(iy * scale))
            r1 = (int((ix + isz) * scale) - 1, int((iy + isz) * scale) - 1)
            cv2.rectangle(shown, r0, r1, (255, 220, 0), max(1, thickness), cv2.LINE_AA)
            yz = pad + title_h + sh + pad
            xz = x0 + (sw - inset_h) // 2
            out[yz:yz + inset_h, xz:xz + inset_h] = zoom
        out[pad:pad + title_h, x0:x0 + sw] = _title(t, sw, title_h)
        out[pad + title_h:pad + title_h + sh, x0:x0 + sw] = shown
    if cap_h:
        note = (f"columns shown at 1/{1 / scale:.1f} scale ({w}x{h} px images);"
                " insets and profile use full-resolution pixels")
        out[height - cap_h:, pad:width - pad] = _title(note, width - 2 * pad, cap_h)
    if profile:
        assert line is not None and mask is not None  # a profile is drawn along the inset's line
        grays = [_gray(im) for _, im in cols]
        strip = _profile_strip(grays, [t for t, _ in cols], line[0], line[1], mask,
                               width - 2 * pad, prof_h)
        yp = height - pad - prof_h - cap_h
        out[yp:yp + prof_h, pad:width - pad] = strip
    return out


def thumbnail(image: ArrayLike, mask: ArrayLike | None = None, *, width: int = 240,
              flag: str | None = None) -> np.ndarray:
    """A small uint8 RGB copy of ``image`` ``width`` px wide, with the FOV contour drawn boldly.

    ``flag``: a warning text drawn in a red frame (for example a low-confidence mask).
    """
    img = to_display(image)
    h, w = img.shape[:2]
    f = width / w
    size = (width, max(1, int(round(h * f))))
    small = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    if mask is not None:
        m = cv2.resize(np.asarray(mask, np.uint8), size, interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(small, contours, -1, THEME["contour"], 1, cv2.LINE_AA)
    if flag:
        t = max(2, width // 80)
        cv2.rectangle(small, (0, 0), (small.shape[1] - 1, small.shape[0] - 1), (230, 30, 30), t)
        fs = max(0.35, width / 600)
        (tw, th), _ = cv2.getTextSize(flag, cv2.FONT_HERSHEY_SIMPLEX, fs, 1)
        cv2.rectangle(small, (t, t), (t + tw + 6, t + th + 8), (230, 30, 30), -1)
        cv2.putText(small, flag, (t + 3, t + th + 3), cv2.FONT_HERSHEY_SIMPLEX, fs, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return small


def contact_sheet(tiles: Sequence[tuple[str, np.ndarray]], *, columns: int | None = None) -> np.ndarray:
    """A grid of labelled tiles (title, uint8 RGB image) for reviewing many images at once.

    Tiles may differ in size; every cell is as wide as the widest tile and each row as high as
    its highest (a tall tile does not leave gaps under the rows it is not in).
    ``columns`` defaults to about the square root of the count.
    """
    tiles = [(t, to_display(im)) for t, im in tiles]
    if not tiles:
        raise ValueError("a contact sheet needs at least one tile")
    n = len(tiles)
    columns = columns or max(1, int(np.ceil(np.sqrt(n))))
    cw = max(im.shape[1] for _, im in tiles)
    pad = max(2, int(round(THEME["pad_fraction"] * cw)))
    title_h = max(14, int(round(0.06 * cw)))
    heights = [max(im.shape[0] for _, im in tiles[i:i + columns]) for i in range(0, n, columns)]
    tops = np.concatenate(([0], np.cumsum([h + title_h + pad for h in heights]))) + pad
    cell_w = cw + pad
    out = np.full((int(tops[-1]), columns * cell_w + pad, 3), THEME["background"], np.uint8)
    for i, (t, im) in enumerate(tiles):
        r, c = divmod(i, columns)
        x0, y0 = pad + c * cell_w, int(tops[r])
        out[y0:y0 + title_h, x0:x0 + cw] = _title(t, cw, title_h)
        out[y0 + title_h:y0 + title_h + im.shape[0], x0:x0 + im.shape[1]] = im
    return out


def roc_figure(summary: dict, response: str, *, size: int = 420) -> np.ndarray:
    """ROC curves of every method for one response, FOV and margin band side by side (uint8 RGB)."""
    pad, title_h = 40, 34
    regions = ("FOV", "margin band")
    width = len(regions) * (size + pad) + pad + 330
    height = size + title_h + 2 * pad
    img = np.full((height, width, 3), THEME["background"], np.uint8)
    font = cv2.FONT_HERSHEY_SIMPLEX
    for i, region in enumerate(regions):
        x0, y0 = pad + i * (size + pad), title_h + pad
        img[pad // 2:pad // 2 + title_h, x0:x0 + size] = _title(f"{response}: {region}", size, title_h)
        cv2.rectangle(img, (x0, y0), (x0 + size, y0 + size), (160, 160, 160), 1)
        cv2.line(img, (x0, y0 + size), (x0 + size, y0), (220, 220, 220), 1)
        cv2.putText(img, "FPR", (x0 + size // 2 + 24, y0 + size + 32), font, 0.5, THEME["text"], 1,
                    cv2.LINE_AA)
        cv2.putText(img, "TPR", (x0 - 38, y0 + size // 2 - 24), font, 0.5, THEME["text"], 1,
                    cv2.LINE_AA)
        for tick in (0.0, 0.5, 1.0):  # tick labels on both axes
            tx, ty = x0 + int(round(tick * size)), y0 + size - int(round(tick * size))
            cv2.line(img, (tx, y0 + size), (tx, y0 + size + 4), (120, 120, 120), 1)
            cv2.line(img, (x0 - 4, ty), (x0, ty), (120, 120, 120), 1)
            label = f"{tick:g}"
            cv2.putText(img, label, (tx - 8, y0 + size + 16), font, 0.38, THEME["text"], 1,
                        cv2.LINE_AA)
            cv2.putText(img, label, (x0 - 24, ty + 4), font, 0.38, THEME["text"], 1, cv2.LINE_AA)
        for j, method in enumerate(summary["roc"]):
            curve = summary["roc"][method].get(response, {}).get(region)
            if not curve:
                continue
            fpr, tpr = np.asarray(curve[0]), np.asarray(curve[1])
            pts = np.stack([x0 + fpr * size, y0 + size - tpr * size], 1).round().astype(np.int32)
            cv2.polylines(img, [pts.reshape(-1, 1, 2)], False, PALETTE[j % len(PALETTE)], 2,
                          cv2.LINE_AA)
    lx = pad + len(regions) * (size + pad)
    cv2.putText(img, "AUC: FOV / margin band", (lx, title_h + pad - 8), font, 0.45, THEME["text"], 1,
                cv2.LINE_AA)
    for j, method in enumerate(summary["roc"]):
        ly = title_h + pad + 20 + 28 * j
        cv2.line(img, (lx, ly), (lx + 30, ly), PALETTE[j % len(PALETTE)], 3)
        aucs = summary["auc"][method].get(response, {})
        text = f"{method}: {aucs.get('FOV', float('nan')):.3f} / {aucs.get('margin band', float('nan')):.3f}"
        cv2.putText(img, text, (lx + 36, ly + 5), font, 0.42, THEME["text"], 1, cv2.LINE_AA)
    cv2.putText(img, "(mask-convolution paper, Fig. 5 style)", (lx, height - pad), font, 0.4,
                THEME["text"], 1, cv2.LINE_AA)
    return img
