"""Comparison figures built as arrays (io writes them).

A *panel* is a row of labelled columns (original | normalized | ...) with the
FOV contour drawn faintly on each, so the margin, where masked and unmasked
filtering differ, can be seen.
"""

from __future__ import annotations

import cv2
import numpy as np

__all__ = ["to_display", "panel", "thumbnail", "contact_sheet", "THEME"]

#: Colours (RGB) and proportions of every figure.
THEME = {
    "background": (255, 255, 255),
    "text": (20, 20, 20),
    "contour": (0, 200, 255),
    "contour_alpha": 0.45,
    "pad_fraction": 0.02,  # of the image width
    "title_fraction": 0.07,  # title bar height, of the image width
}


def to_display(image) -> np.ndarray:
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


def _draw_contour(img: np.ndarray, mask, thickness: int) -> np.ndarray:
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


def panel(columns, *, mask=None, contour: bool = True) -> np.ndarray:
    """A row of labelled images of equal size.

    Parameters
    ----------
    columns : sequence of (title, image)
        Images of the same height and width (gray or RGB, any dtype of
        :func:`to_display`).
    mask : (H, W) bool ndarray, optional
        The FOV; its contour is drawn faintly on every column.
    contour : bool
        Draw the contour (when a mask is given).

    Returns
    -------
    (H', W', 3) uint8 ndarray
        Width ``n * W + (n + 1) * pad``; height ``title + H + 2 * pad``, with
        ``pad = max(2, round(pad_fraction * W))`` and
        ``title = max(14, round(title_fraction * W))``.
    """
    cols = [(t, to_display(im)) for t, im in columns]
    if not cols:
        raise ValueError("a panel needs at least one column")
    h, w = cols[0][1].shape[:2]
    for t, im in cols:
        if im.shape[:2] != (h, w):
            raise ValueError(f"column {t!r} is {im.shape[1]}x{im.shape[0]}, expected {w}x{h}")
    pad = max(2, int(round(THEME["pad_fraction"] * w)))
    title_h = max(14, int(round(THEME["title_fraction"] * w)))
    n = len(cols)
    out = np.full((title_h + h + 2 * pad, n * w + (n + 1) * pad, 3), THEME["background"], np.uint8)
    thickness = max(1, int(round(w / 400)))
    for i, (t, im) in enumerate(cols):
        x0 = pad + i * (w + pad)
        if contour and mask is not None:
            im = _draw_contour(im, mask, thickness)
        out[pad:pad + title_h, x0:x0 + w] = _title(t, w, title_h)
        out[pad + title_h:pad + title_h + h, x0:x0 + w] = im
    return out


def thumbnail(image, mask=None, *, width: int = 240) -> np.ndarray:
    """A small uint8 RGB copy of ``image`` ``width`` px wide, with the FOV contour drawn boldly."""
    img = to_display(image)
    h, w = img.shape[:2]
    f = width / w
    size = (width, max(1, int(round(h * f))))
    small = cv2.resize(img, size, interpolation=cv2.INTER_AREA)
    if mask is not None:
        m = cv2.resize(np.asarray(mask, np.uint8), size, interpolation=cv2.INTER_NEAREST)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(small, contours, -1, THEME["contour"], 1, cv2.LINE_AA)
    return small


def contact_sheet(tiles, *, columns: int | None = None) -> np.ndarray:
    """A grid of labelled tiles (title, uint8 RGB image) for reviewing many images at once.

    Tiles may differ in size; each cell is as large as the largest tile.
    ``columns`` defaults to about the square root of the count.
    """
    tiles = [(t, to_display(im)) for t, im in tiles]
    if not tiles:
        raise ValueError("a contact sheet needs at least one tile")
    n = len(tiles)
    columns = columns or max(1, int(np.ceil(np.sqrt(n))))
    rows = int(np.ceil(n / columns))
    cw = max(im.shape[1] for _, im in tiles)
    ch = max(im.shape[0] for _, im in tiles)
    pad = max(2, int(round(THEME["pad_fraction"] * cw)))
    title_h = max(14, int(round(0.09 * cw)))
    cell_w, cell_h = cw + pad, ch + title_h + pad
    out = np.full((rows * cell_h + pad, columns * cell_w + pad, 3), THEME["background"], np.uint8)
    for i, (t, im) in enumerate(tiles):
        r, c = divmod(i, columns)
        x0, y0 = pad + c * cell_w, pad + r * cell_h
        out[y0:y0 + title_h, x0:x0 + cw] = _title(t, cw, title_h)
        out[y0 + title_h:y0 + title_h + im.shape[0], x0:x0 + im.shape[1]] = im
    return out
