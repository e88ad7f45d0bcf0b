"""What the mask buys: margin bias profiles and training-free vessel separability.

Arrays in, numbers out; :mod:`retina_prep.pipeline` and the ``evaluate``
command read files and write reports.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
from numpy.typing import ArrayLike

from .clahe import masked_clahe
from .convolution import masked_convolve
from .fov import _centroid, fov_diameter, margin_distance
from .kernels import Kernel, gaussian_kernel
from .metrics import margin_bias_profile
from .normalize import DEFAULT_TARGET, dtype_scale, normalize_illumination

#: Distance bands (lo, hi) in pixels from the FOV margin, half open.
Bands = tuple[tuple[float, float], ...]

__all__ = [
    "METHODS",
    "PEERS",
    "methods_for",
    "RESPONSES",
    "BANDS",
    "REFERENCE_DIAMETER",
    "roc_auc",
    "roc_curve",
    "scaled_bands",
    "vessel_responses",
    "preprocess",
    "evaluate_image",
    "ImageEvaluation",
    "summarize",
]

#: Preprocessings compared: name -> (method, ignore_mask, order); "none" is the input itself.
METHODS = {
    "none": None,
    "IN without mask": ("mean", True, 0),
    "IN with mask": ("mean", False, 0),
    "IN with mask, order 1": ("mean", False, 1),
    "standardize with mask": ("standardize", False, 0),
}


#: The peers' ways with the margin (``evaluate --peers``): CLAHE as OpenCV does it and masked,
#: Ben Graham's 4 (I - G_sigma) + 128 as published (sigma from the FOV radius, everything beyond
#: 0.9 R set to 128) and through masked convolution, and fundusprep's mirror padding across the
#: FOV edge followed by unmasked IN.
PEERS = ("CLAHE, no mask (OpenCV)", "masked CLAHE", "Ben Graham, 0.9 R crop", "Ben Graham, masked",
         "mirror padding, then IN without mask")


def methods_for(orders: Sequence[int] = (0, 1), peers: bool = False) -> tuple[str, ...]:
    """The methods to compare when IN with mask runs in these orders (0, 1 or both), and the
    peers' margin treatments (:data:`PEERS`) when asked."""
    ours = tuple(name for name, spec in METHODS.items()
                 if spec is None or spec[0] != "mean" or spec[1] or spec[2] in orders)
    return ours + (PEERS if peers else ())


def _circle(mask: np.ndarray) -> tuple[float, float, float]:
    """The FOV's centre (x, y) and radius."""
    cy, cx = _centroid(mask)
    return cx, cy, fov_diameter(mask) / 2


def _ben_graham(image: np.ndarray, mask: np.ndarray, *, masked: bool, target: float) -> np.ndarray:
    """4 (I - G_sigma * I) + I0 with sigma = R / 30 (his scale of 300 px radius, sigma 10); as
    published the blur is unmasked and the result beyond 0.9 R is I0; masked, the local mean is
    a masked Gaussian and the result is kept to the FOV."""
    img = np.asarray(image)
    cx, cy, r = _circle(mask)
    sigma = max(r / 30.0, 0.5)
    unit = _unit(img)
    f = img.astype(np.float32)
    if masked:
        k = gaussian_kernel(sigma)
        mean = masked_convolve(f, mask, k, fill=0.0)
    else:
        mean = cv2.GaussianBlur(f, (0, 0), sigma)
    out = 4.0 * (f - mean) + np.float32(target * unit)
    if not masked:
        yy, xx = np.ogrid[: img.shape[0], : img.shape[1]]
        outside = (xx - cx) ** 2 + (yy - cy) ** 2 > (0.9 * r) ** 2
        out[outside] = target * unit
    top = np.iinfo(img.dtype).max if img.dtype.kind in "ui" else 1.0
    return np.clip(np.rint(out) if img.dtype.kind in "ui" else out, 0, top).astype(img.dtype)


def _mirrored(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The image with every pixel outside the FOV circle replaced by its mirror image across the
    circle (radius 2R - r on the same ray), as fundusprep pads before filtering."""
    img = np.asarray(image)
    cx, cy, r = _circle(mask)
    h, w = img.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    rho = np.sqrt(dx * dx + dy * dy) + 1e-6
    scale = np.where(rho > r, np.maximum(2 * r - rho, 0.0) / rho, 1.0).astype(np.float32)
    mapx, mapy = (cx + dx * scale).astype(np.float32), (cy + dy * scale).astype(np.float32)
    out = cv2.remap(img, mapx, mapy, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT_101)
    return np.where(mask[..., None] if img.ndim == 3 else mask, img, out)

#: Training-free vessel responses (higher = more vessel-like).
RESPONSES = ("inverted green", "black top-hat")

#: Distance bands from the FOV margin at DRIVE resolution (pixels).
BANDS: Bands = ((0, 3), (3, 6), (6, 12), (12, 25), (25, 50), (50, np.inf))

#: FOV diameter the bands are given for (DRIVE); other resolutions scale them by diameter / this.
REFERENCE_DIAMETER = 540.0

#: The margin band for separability: the outer 10 % of the FOV radius.
MARGIN_FRACTION = 0.10


def roc_auc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Exact ROC AUC by ranks (Mann-Whitney U), ties counted as one half.

    Returns NaN when either class is empty.
    """
    s = np.asarray(scores, np.float64).ravel()
    y = np.asarray(labels, bool).ravel()
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    sorted_s = s[order]
    # average ranks of ties (1-based)
    starts = np.r_[0, np.flatnonzero(np.diff(sorted_s)) + 1]
    ends = np.r_[starts[1:], s.size]
    avg = (starts + ends + 1) / 2.0
    ranks = np.empty(s.size)
    ranks[order] = np.repeat(avg, ends - starts)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_curve(scores: ArrayLike, labels: ArrayLike, n_points: int = 256
              ) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at up to ``n_points`` thresholds."""
    s = np.asarray(scores, np.float64).ravel()
    y = np.asarray(labels, bool).ravel()
    order = np.argsort(-s, kind="mergesort")
    ys = y[order]
    tps = np.cumsum(ys)
    fps = np.cumsum(~ys)
    last = np.r_[np.flatnonzero(np.diff(s[order])), s.size - 1]  # end of each tie group
    idx = last[np.linspace(0, len(last) - 1, min(n_points, len(last))).astype(int)]
    tpr = np.r_[0.0, tps[idx] / max(tps[-1], 1)]
    fpr = np.r_[0.0, fps[idx] / max(fps[-1], 1)]
    return fpr, tpr


def scaled_bands(mask: ArrayLike, bands: Bands = BANDS) -> Bands:
    """The distance bands scaled from DRIVE to this FOV's diameter."""
    f = fov_diameter(mask) / REFERENCE_DIAMETER
    return tuple((lo * f, hi * f) for lo, hi in bands)


def _green(image: ArrayLike) -> np.ndarray:
    img = np.asarray(image)
    g = img[..., 1] if img.ndim == 3 and img.shape[2] >= 3 else (img if img.ndim == 2 else img[..., 0])
    return g.astype(np.float32)


def vessel_responses(image: ArrayLike, mask: ArrayLike, *, scale: float = 1.0
                     ) -> dict[str, np.ndarray]:
    """Training-free vessel responses of one preprocessed image, higher = more vessel-like.

    ``inverted green``: minus the green channel. ``black top-hat``:
    morphological closing of the green channel minus the channel, with a
    disc of radius ``7 * scale`` px (wider than DRIVE's widest vessels),
    computed on the FOV only (outside, the channel is set to its FOV median
    so the background edge does not respond).
    """
    g = _green(image)
    m = np.asarray(mask, bool)
    filled = g.copy()
    filled[~m] = np.median(g[m]) if m.any() else 0
    r = max(2, int(round(7 * scale)))
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    tophat = cv2.morphologyEx(filled, cv2.MORPH_BLACKHAT, disc)
    return {"inverted green": -g, "black top-hat": tophat}


def preprocess(image: ArrayLike, mask: ArrayLike, method: str, *, kernel: Kernel,
               target: float = DEFAULT_TARGET) -> np.ndarray:
    """The image as one of :data:`METHODS` (or :data:`PEERS`) leaves it."""
    if method in PEERS:
        return _peer(image, mask, method, kernel=kernel, target=target)
    spec = METHODS[method]
    if spec is None:
        return np.asarray(image)
    how, ignore, order = spec
    return normalize_illumination(image, mask, kernel=kernel, target=target, ignore_mask=ignore,
                                  method=how, order=order)


def _peer(image: ArrayLike, mask: ArrayLike, method: str, *, kernel: Kernel,
          target: float) -> np.ndarray:
    img = np.asarray(image)
    m = np.asarray(mask) > 0
    if method == "CLAHE, no mask (OpenCV)":
        return masked_clahe(img, None)
    if method == "masked CLAHE":
        return masked_clahe(img, m)
    if method.startswith("Ben Graham"):
        return _ben_graham(img, m, masked=method.endswith("masked"), target=target)
    # mirror padding, then IN without mask
    return normalize_illumination(_mirrored(img, m), m, kernel=kernel, target=target,
                                  ignore_mask=True)


@dataclass
class ImageEvaluation:
    """Per-image sums and samples, to be pooled over a dataset."""

    bias_sums: dict = field(default_factory=dict)  # method -> (bands, C) sums of output - I0
    bias_counts: dict = field(default_factory=dict)  # method -> (bands,) pixel counts
    scores: dict = field(default_factory=dict)  # (method, response, region) -> float32 scores
    labels: dict = field(default_factory=dict)  # region -> bool labels
    bands: tuple = ()


def evaluate_image(image: ArrayLike, fov: np.ndarray, region: np.ndarray,
                   labels: np.ndarray | None = None, *, kernel: Kernel,
                   target: float = DEFAULT_TARGET, methods: Sequence[str] = tuple(METHODS),
                   max_samples: int = 400_000) -> ImageEvaluation:
    """Margin bias per band and vessel-response samples for every method, on one image.

    Parameters
    ----------
    image : (H, W[, C]) ndarray
    fov : (H, W) bool ndarray
        The field of view the distances are measured from.
    region : (H, W) bool ndarray
        The pixels that count (the mask after erosion or rim trimming).
    labels : (H, W) bool ndarray, optional
        Vessel labels: vessel pixels are left out of the bias, and the
        separability samples are taken only when labels are given.
    kernel : Kernel
        The same local-mean kernel for every method.
    max_samples : int
        At most this many pixels per image and region feed the AUC (an even
        stride, so the choice is deterministic).
    """
    ev = ImageEvaluation()
    bands = scaled_bands(fov)
    ev.bands = bands
    scale = fov_diameter(fov) / REFERENCE_DIAMETER
    d = margin_distance(fov)
    radius = fov_diameter(fov) / 2
    regions = {"FOV": region, "margin band": region & (d < MARGIN_FRACTION * radius)}
    picks = {}
    if labels is not None:
        for name, sel in regions.items():
            idx = np.flatnonzero(sel)
            if idx.size > max_samples:
                idx = idx[:: int(np.ceil(idx.size / max_samples))]
            picks[name] = idx
            ev.labels[name] = np.asarray(labels, bool).ravel()[idx]
    for method in methods:
        out = preprocess(image, region, method, kernel=kernel, target=target)
        sums, counts = margin_bias_profile(out, fov, target=target * _unit(image), region=region,
                                           exclude=labels, bands=bands)
        ev.bias_sums[method], ev.bias_counts[method] = sums / _unit(image), counts  # 8-bit units
        if labels is not None:
            for rname, resp in vessel_responses(out, region, scale=scale).items():
                flat = resp.ravel()
                for name, idx in picks.items():
                    ev.scores[(method, rname, name)] = flat[idx].astype(np.float32)
    return ev


def _unit(image: ArrayLike) -> float:
    return dtype_scale(np.asarray(image).dtype)


#: The edge/interior ratio's smallest denominator, in gray levels (8-bit units).
INTERIOR_FLOOR = 1.0


def summarize(evaluations: Sequence[ImageEvaluation],
              methods: Sequence[str] = tuple(METHODS)) -> dict[str, Any]:
    """Pool per-image evaluations into bias tables, edge/interior ratios and AUCs.

    Returns a dict with ``bands`` (DRIVE-scale labels), ``bias`` (method ->
    band -> list of per-channel means, 8-bit units), ``edge_interior``
    (method -> mean |bias| in the bands below 6 px over that beyond 50 px, the latter at least
    :data:`INTERIOR_FLOOR`),
    ``auc`` (method -> response -> region -> AUC) and ``roc`` (curves).
    """
    evaluations = list(evaluations)
    labels = [f"{lo:g}-{hi:g}" if np.isfinite(hi) else f">{lo:g}" for lo, hi in BANDS]
    out: dict[str, Any] = {"bands": labels, "bias": {}, "edge_interior": {}, "auc": {}, "roc": {},
                           "pixels": {}}
    for method in methods:
        sums = sum(e.bias_sums[method] for e in evaluations)
        counts = sum(e.bias_counts[method] for e in evaluations)
        mean = sums / np.maximum(counts, 1)[:, None]
        mean[counts == 0] = np.nan
        out["bias"][method] = {b: [float(v) for v in row] for b, row in zip(labels, mean)}
        out["pixels"][method] = {b: int(c) for b, c in zip(labels, counts)}
        mag = np.abs(mean).mean(axis=1)
        edge = np.nanmean(mag[:2]) if np.isfinite(mag[:2]).any() else np.nan
        # the interior floored at one gray level: a flat interior (|bias| near 0, as on a large
        # image) would otherwise blow the ratio up to hundreds
        out["edge_interior"][method] = (float(edge / max(mag[-1], INTERIOR_FLOOR))
                                        if np.isfinite(mag[-1]) else float("nan"))
    with_labels = [e for e in evaluations if e.labels]
    for method in methods:
        out["auc"][method], out["roc"][method] = {}, {}
        for response in RESPONSES:
            out["auc"][method][response], out["roc"][method][response] = {}, {}
            for region in ("FOV", "margin band"):
                if not with_labels:
                    continue
                sc = np.concatenate([e.scores[(method, response, region)] for e in with_labels])
                lb = np.concatenate([e.labels[region] for e in with_labels])
                out["auc"][method][response][region] = roc_auc(sc, lb)
                fpr, tpr = roc_curve(sc, lb)
                out["roc"][method][response][region] = (fpr.tolist(), tpr.tolist())
    out["images"] = len(evaluations)
    out["labelled_images"] = len(with_labels)
    return out
