"""Field-of-view (FOV) masks: arrays in, boolean ``(H, W)`` masks out.

True means inside the field of view. Nothing here reads files.

The package holds one idea a module: :mod:`.masks` (mask arrays), :mod:`.estimate` (the
estimate from the image), :mod:`.ring` (its edge at full resolution), :mod:`.rim` (the rim trim).
"""

from __future__ import annotations

from .estimate import (  # noqa: F401
    EDGE_FRACTION,
    LOW_CONFIDENCE,
    REDUCED_SIDE,
    ROUGH_FRACTION,
    UNIFORM_FRAME,
    FovEstimate,
    _background,
    _clean,
    _confidence,
    _contour_checks,
    _contour_points,
    _creep,
    _disc_level,
    _estimate_at,
    _fit_circle,
    _fov_circle,
    _frame,
    _frame_is_bright,
    _frame_segments,
    _from_padding,
    _otsu,
    _outside_level,
    _percentiles,
    _ransac_circle,
    _reduced,
    _settle_edge,
    _uneven_frame,
    estimate_fov,
    fov_estimate,
)
from .masks import (  # noqa: F401
    MASK_BACKGROUND_LIMIT,
    MASK_GRAY_LIMIT,
    _above_half,
    _binarize_plane,
    _centroid,
    _disk,
    _gray_fraction,
    _largest_component,
    _mask_plane,
    binarize_mask,
    channel_max,
    check_fov_mask,
    erode_mask,
    feather_mask,
    fill_holes,
    fov_diameter,
    margin_distance,
    mask_gray_fraction,
)
from .rim import (  # noqa: F401
    _RIM_SECTORS,
    RIM_CONFIRM,
    RIM_MAX_FRACTION,
    RIM_TOLERANCE,
    RIM_TREND_FRACTION,
    RIM_TREND_MAX_RINGS,
    RIM_TREND_RINGS,
    _group_quantiles,
    _margin_rings,
    _on_trend,
    _rim_depths,
    _sector_position,
    _shallow_pieces,
    _unit,
    rim_depths,
    trim_rim,
)
from .ring import (  # noqa: F401
    _around_at,
    _fill_rays,
    _ring_level,
    _Run,
    _settle_ring,
)

__all__ = [
    "binarize_mask",
    "erode_mask",
    "estimate_fov",
    "FovEstimate",
    "LOW_CONFIDENCE",
    "fov_diameter",
    "fill_holes",
    "margin_distance",
    "trim_rim",
    "rim_depths",
    "feather_mask",
    "check_fov_mask",
    "mask_gray_fraction",
]
