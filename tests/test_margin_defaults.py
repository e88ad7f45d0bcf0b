"""Flat to the margin by default: the rim trim on synthetic cameras with known truth, the
default pipeline on every mask source, and mask files that are not FOV masks."""

from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retina_prep.fov import (
    _group_quantiles,
    estimate_fov,
    fov_diameter,
    margin_distance,
    rim_depths,
    trim_rim,
)
from retina_prep.io import read_image, read_mask, write_image
from retina_prep.normalize import normalize_illumination
from retina_prep.synthetic import synthetic_fundus

from .test_cli_commands import invoke
from .test_hostile import error_lines

BANDS = ((0, 2), (2, 4), (4, 8), (8, 16), (16, 32))


def _camera(kind: str, seed: int = 5):
    """A synthetic photograph of one camera kind: (image, FOV as the file would give it,
    the retina: the FOV less its transition)."""
    kw = dict(noise=2.0, seed=seed)
    if kind == "crisp":
        s = synthetic_fundus((584, 565), **kw)
    elif kind == "falloff":  # smooth vignetting to the edge, no ring
        s = synthetic_fundus((584, 565), vignette=0.8, **kw)
    elif kind == "cuts":  # flat cuts at top and bottom (HRF-like)
        s = synthetic_fundus((584, 565), cut=0.75, **kw)
    elif kind == "touching":  # the disc crosses the image border
        s = synthetic_fundus((584, 565), radius=0.56, **kw)
    else:
        s = synthetic_fundus((584, 565), **kw)
    if kind in ("crisp", "falloff", "cuts", "touching"):
        return s.image, s.mask, s.mask
    d = margin_distance(s.mask)
    img = s.image.astype(float)
    if kind == "dark rim":  # 3 px at 40 %, every channel
        img[s.mask & (d < 3)] *= 0.4
        truth = s.mask & (d >= 3)
    elif kind == "glow ring":  # DRIVE-like: a dark 2 px rim, then green and blue 1.2x at 2-5 px
        img[s.mask & (d < 2)] *= 0.5
        img[s.mask & (d >= 2) & (d < 5), 1:] *= 1.2
        truth = s.mask & (d >= 5)
    elif kind == "blue rim":  # a rim in the darkest channel only
        img[s.mask & (d < 3), 2] *= 0.5
        truth = s.mask & (d >= 3)
    elif kind == "red rim":
        img[s.mask & (d < 3), 0] *= 0.7
        truth = s.mask & (d >= 3)
    else:
        raise ValueError(kind)
    return np.clip(img, 0, 255).astype(np.uint8), s.mask, truth


def _worst_band(out, trimmed, fov) -> float:
    d = margin_distance(fov)
    worst = 0.0
    for lo, hi in BANDS:
        sel = trimmed & (d >= lo) & (d < hi)
        if sel.sum() > 20:
            worst = max(worst, float(np.abs(out[sel].astype(float).mean(axis=0) - 128).max()))
    return worst


@pytest.mark.parametrize("kind", ["crisp", "falloff", "cuts", "touching"])
def test_no_rim_keeps_the_retina(kind):
    """Photographs without a rim keep >= 99.5 % of the retina, and come out flat."""
    img, fov, truth = _camera(kind)
    trimmed = trim_rim(img, fov)
    assert not (trimmed & ~fov).any()
    assert (trimmed & truth).sum() >= 0.995 * truth.sum()
    out = normalize_illumination(img, trimmed, order=1)
    assert _worst_band(out, trimmed, fov) <= 3.0


@pytest.mark.parametrize("kind", ["dark rim", "glow ring", "blue rim", "red rim"])
def test_a_rim_in_any_channel_is_removed(kind):
    """A dark rim, a glow ring inside it, or a rim in one channel only: gone, and the output's
    bands flat, while the retina inside stays."""
    img, fov, truth = _camera(kind)
    trimmed = trim_rim(img, fov)
    rim = fov & ~truth
    assert (trimmed & rim).sum() <= 0.02 * rim.sum()
    assert (trimmed & truth).sum() >= 0.99 * truth.sum()
    out = normalize_illumination(img, trimmed, order=1)
    assert _worst_band(out, trimmed, fov) <= 3.0
    # kept as given, the rim shows (the test can fail)
    assert _worst_band(normalize_illumination(img, fov, order=0), fov, fov) > 5.0


@pytest.mark.parametrize("shape, rim, source", [
    ((584, 565), 2, "file"), ((584, 565), 3, "file"), ((584, 565), 5, "file"),
    ((584, 565), 2, "estimated"), ((1400, 1500), 5, "file"), ((1400, 1500), 8, "file")])
def test_a_rim_off_the_pixel_grid_leaves_no_line(shape, rim, source):
    """A rim whose inner edge is a circle (``synthetic_fundus(rim=N)``: the distance to the
    circle, not the rings of the mask's distance transform) leaves the first ring kept part rim
    in some sectors; it goes too, and the output is flat from the FOV's edge in. (Before, those
    rings stayed: -27 to -52 gray levels in the outer bands with the mask file, -11 estimated.)"""
    s = synthetic_fundus(shape, seed=3, rim=rim)
    fov = s.mask if source == "file" else estimate_fov(s.image)
    trimmed = trim_rim(s.image, fov)
    out = normalize_illumination(s.image, trimmed, order=1)
    assert _worst_band(out, trimmed & ~s.vessels, s.mask) <= 3.0
    # and only the rim went: the retina inside it stays
    inside = s.mask & (margin_distance(s.mask) >= rim + 2)
    assert (trimmed & inside).sum() >= 0.995 * inside.sum()


def _off_grid(kind: str, shape=(1200, 1300), seed: int = 5):
    """A synthetic photograph with a transition of ``kind`` whose inner edge is a circle, its
    widths those of DRIVE's scaled to the image (DRIVE: 565 px)."""
    s = synthetic_fundus(shape, seed=seed, noise=2.0)
    ys, xs = np.nonzero(s.mask)
    y, x = np.ogrid[:shape[0], :shape[1]]
    depth = np.sqrt(s.mask.sum() / np.pi) - np.hypot(y - ys.mean(), x - xs.mean())
    k = shape[0] / 584
    img = s.image.astype(float)
    if kind == "glow":  # dark 2 px at 50 %, then green and blue 1.2x at 2-5 px
        img[s.mask & (depth < 2 * k)] *= 0.5
        img[s.mask & (depth >= 2 * k) & (depth < 5 * k), 1:] *= 1.2
    elif kind == "blue rim":  # 3 px at 50 % in blue alone
        img[s.mask & (depth < 3 * k), 2] *= 0.5
    elif kind == "dark rim":  # 3 px at 45 %, every channel
        img[s.mask & (depth < 3 * k)] *= 0.45
    return np.clip(img, 0, 255).astype(np.uint8), s


@pytest.mark.parametrize("shape, seed", [((700, 770), 12), ((1000, 1100), 11), ((1000, 1100), 12)])
def test_an_estimated_edge_through_a_dark_rim_leaves_no_arcs(shape, seed):
    """A rim at 45 % of the retina sits at the estimate's edge rule (half the local level), so
    the estimated edge runs in and out of it: rings part rim at every depth, which neither ring
    test sees; the rim-dark pixels of the first rings kept go one by one (before: arcs of
    100-200 pixels, -54 to -87 gray levels)."""
    img, s = _off_grid("dark rim", shape, seed)
    trimmed = trim_rim(img, estimate_fov(img))
    out = normalize_illumination(img, trimmed, order=1)
    assert _worst_band(out, trimmed & ~s.vessels, s.mask) <= 3.0
    inside = s.mask & (margin_distance(s.mask) >= 6 * shape[0] / 584)
    assert (trimmed & inside).sum() >= 0.995 * inside.sum()


def test_an_estimated_edge_through_a_rim_at_hrf_size():
    """At 3504 px the estimated edge wanders up to 4 rings into an 8 px rim at 40 % (before:
    -36 gray levels over a few hundred pixels); the rim-dark rule reaches 4 rings past the depth."""
    s = synthetic_fundus((2336, 3504), seed=4, rim=8)
    trimmed = trim_rim(s.image, estimate_fov(s.image))
    out = normalize_illumination(s.image, trimmed, order=1)
    f = fov_diameter(s.mask) / 540
    d = margin_distance(s.mask)
    keep = trimmed & ~s.vessels
    for lo, hi in BANDS:
        sel = keep & (d >= lo * f) & (d < hi * f)
        assert np.abs(out[sel].astype(float).mean(axis=0) - 128).max() <= 3.0, (lo, hi)


@pytest.mark.parametrize("shape, rim, seed", [((1200, 1320), 5, 1), ((1800, 1980), 7, 149)])
def test_an_estimated_edge_through_a_rim_in_a_gray_photograph(shape, rim, seed):
    """A red-free (one-channel) photograph has no second channel for the rim-dark pixel rule,
    which needed two: an estimated edge wandering through a rim at 40 % left a tenth of the
    outer ring at -13 to -25 gray levels. One channel takes a deeper rule (0.45x)."""
    s = synthetic_fundus(shape, seed=seed, rim=rim, gain=0.4, radius=0.4, noise=1.5)
    img = s.image[..., 1]
    trimmed = trim_rim(img, estimate_fov(img))
    out = normalize_illumination(img, trimmed, order=1).astype(float)
    dev = out[trimmed & ~s.vessels & (margin_distance(trimmed) < 1)] - 128
    assert np.percentile(dev, 10) >= -4.0
    assert abs(dev.mean()) <= 1.0


def test_rim_dark_pixels_spare_vessels_and_real_photographs(drive):
    """The pixel rule drops nothing on a crisp disc whose vessels reach the margin, nor on
    DRIVE's own masks (their rims are whole rings, trimmed by the ring tests)."""
    import retina_prep.fov.rim as rim

    def without_rule(img, m):
        old = rim.RIM_DARK_PIXEL, rim.RIM_DARK_GRAY
        rim.RIM_DARK_PIXEL = rim.RIM_DARK_GRAY = 0.0
        try:
            return trim_rim(img, m)
        finally:
            rim.RIM_DARK_PIXEL, rim.RIM_DARK_GRAY = old

    for seed in range(3):
        s = synthetic_fundus((584, 565), seed=seed, noise=2.0)
        np.testing.assert_array_equal(trim_rim(s.image, s.mask), without_rule(s.image, s.mask))
        green = s.image[..., 1]  # (one channel: the deeper rule)
        np.testing.assert_array_equal(trim_rim(green, s.mask), without_rule(green, s.mask))
    for stem in ("01", "02", "03"):
        img = read_image(drive / "test" / "images" / f"{stem}_test.tif")
        m = read_mask(drive / "test" / "mask" / f"{stem}_test_mask.gif")
        np.testing.assert_array_equal(trim_rim(img, m), without_rule(img, m))


@pytest.mark.parametrize("kind", ["glow", "blue rim", "none"])
@pytest.mark.parametrize("source", ["file", "estimated"])
def test_wide_transitions_at_mid_resolution(kind, source):
    """At 1200 px a DRIVE-like glow ring is 6 px wide: a plateau that a line through 14 rings
    followed (+5 gray levels stayed in green, -4.4 for the blue rim); the trend window spans
    2.5 % of the diameter (up to 36 rings), the output is flat and a crisp disc keeps its
    retina."""
    img, s = _off_grid(kind)
    fov = s.mask if source == "file" else estimate_fov(img)
    trimmed = trim_rim(img, fov)
    out = normalize_illumination(img, trimmed, order=1)
    assert _worst_band(out, trimmed & ~s.vessels, s.mask) <= 3.0
    inside = s.mask & (margin_distance(s.mask) >= (0 if kind == "none" else 12))
    assert (trimmed & inside).sum() >= 0.995 * inside.sum()


def test_straight_cuts_stay_straight():
    img, fov, _ = _camera("cuts")
    trimmed = trim_rim(img, fov)
    cols = np.nonzero(fov.any(axis=0))[0]
    top = np.array([np.argmax(fov[:, c]) for c in cols])
    flat = cols[top == top.min()]  # the columns of the flat cut
    tops = np.array([np.argmax(trimmed[:, c]) for c in flat[5:-5]])
    assert tops.max() - tops.min() <= 1


def test_a_crop_whose_disc_touches_the_frame_keeps_its_pixels_there():
    """The image border is not a margin: the rows at a border the disc crosses stay."""
    s = synthetic_fundus((584, 565), seed=2, noise=2.0)
    img, fov = s.image[120:], s.mask[120:]  # the top of the disc cut off by the frame
    trimmed = trim_rim(img, fov)
    assert trimmed[0][fov[0]].all() and trimmed[:4][fov[:4]].mean() > 0.99


def test_a_rim_that_is_not_there_in_brightness_is_kept():
    """Pixels as bright as the retina beside them in every channel are never trimmed, even on
    a steep gradient towards the margin."""
    s = synthetic_fundus((584, 565), seed=7, strength=1.6, noise=1.0, vessels=False)
    trimmed, info = trim_rim(s.image, s.mask, return_info=True)
    assert info["rim_dropped"] <= 0.003 * s.mask.sum()


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([np.uint8, np.uint16]))
def test_group_medians_match_numpy(seed, dtype):
    rng = np.random.default_rng(seed)
    n, groups = int(rng.integers(1, 400)), int(rng.integers(1, 12))
    g = rng.integers(0, groups, n)
    top = 255 if dtype == np.uint8 else 65535
    v = rng.integers(0, top + 1, (n, 2)).astype(dtype)
    got = _group_quantiles(g, v, groups)[0]
    for k in range(groups):
        sel = g == k
        want = np.median(v[sel].astype(float), axis=0) if sel.any() else np.full(2, np.nan)
        np.testing.assert_array_equal(got[k], want)
    np.testing.assert_array_equal(_group_quantiles(g, v.astype(np.float32), groups)[0], got)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 10_000), st.floats(0.3, 1.0), st.integers(0, 4))
def test_trim_is_a_subset_and_capped(seed, level, rim):
    """Whatever the image: the trimmed mask is inside the mask, trimmed at most the cap deep,
    and the same for the image in 16 bits or as float in a value range."""
    s = synthetic_fundus((200, 210), seed=seed, gain=level, rim=rim, noise=1.0)
    trimmed = trim_rim(s.image, s.mask)
    assert not (trimmed & ~s.mask).any()
    assert trimmed[s.mask & (margin_distance(s.mask) >= 4)].all()  # cap: 1.1 % of 190 px
    assert rim_depths(s.image, s.mask).max() <= 2
    wide = s.image.astype(np.uint16) * 257
    np.testing.assert_array_equal(trim_rim(wide, s.mask), trimmed)
    np.testing.assert_array_equal(
        trim_rim(s.image.astype(np.float32), s.mask, value_range=(0, 255)), trimmed)
    # float 0..1 (float32 rounding must not tip a tie: the trim decides with a margin)
    np.testing.assert_array_equal(trim_rim(s.image.astype(np.float32) / 255, s.mask), trimmed)


# ---------------------------------------------------------------- the default pipeline


def _dataset(tmp_path, n=3, rim=True):
    """A folder of photographs with <stem>_mask.png beside them, each with a dark rim."""
    for i in range(n):
        s = synthetic_fundus((300, 310), seed=10 + i, background=4)
        img = s.image.astype(float)
        if rim:
            d = margin_distance(s.mask)
            img[s.mask & (d < 3)] *= 0.5
        write_image(tmp_path / "in" / f"eye{i}.png", np.clip(img, 0, 255).astype(np.uint8))
        write_image(tmp_path / "in" / f"eye{i}_mask.png", s.mask.astype(np.uint8) * 255)
    return tmp_path / "in"


@pytest.mark.parametrize("source", ["dataset", "--mask-dir", "--mask", "estimated"])
def test_every_mask_source_is_flat_by_default(tmp_path, source):
    """Dataset masks, --mask-dir, --mask and estimated masks: the same default (rim trimmed,
    order 1), the output flat to the margin, -j 2 over several images."""
    src = _dataset(tmp_path)
    args = {"dataset": [], "--mask-dir": ["--mask-dir", src],
            "--mask": ["--mask", src / "eye0_mask.png"], "estimated": ["--auto-mask"]}[source]
    inputs = [src / "eye0.png"] if source == "--mask" else [src]
    r = invoke("normalize", *inputs, "-o", tmp_path / "out", "-j", 2, "-q", *args)
    assert r.exit_code == 0, r.output
    recs = [json.loads(x) for x in (tmp_path / "out" / "manifest.jsonl").open()]
    images = [x for x in recs if x["type"] == "image"]
    assert images and all(x["params"]["rim"] == "auto" and x["params"]["order"] == 1
                          for x in images)
    for x in images:
        stem = x["input"].rsplit("/", 1)[1][:-4]
        out = read_image(tmp_path / "out" / f"{stem}.png")
        fov = read_mask(src / f"{stem}_mask.png")
        assert _worst_band(out, out.max(axis=-1) > 0, fov) <= 3.0, stem


def test_rim_none_is_the_papers_method(tmp_path):
    """--rim none keeps the mask as given and runs order 0: the dark rim shows."""
    src = _dataset(tmp_path, 1)
    r = invoke("normalize", src, "-o", tmp_path / "out", "--rim", "none", "-q")
    assert r.exit_code == 0, r.output
    rec = [json.loads(x) for x in (tmp_path / "out" / "manifest.jsonl").open()][-1]
    assert rec["params"]["rim"] == "none" and rec["params"]["order"] == 0
    out = read_image(tmp_path / "out" / "eye0.png")
    fov = read_mask(src / "eye0_mask.png")
    assert _worst_band(out, fov, fov) > 10


# ---------------------------------------------------------------- mask sanity


def _photo(tmp_path, radius=0.46):
    s = synthetic_fundus((200, 210), seed=3, background=3, radius=radius)
    write_image(tmp_path / "eye.png", s.image)
    return s


@pytest.mark.parametrize("case, message", [
    ("photograph", "not a field-of-view mask: 55% of its pixels are gray levels between dark"
                   " and bright (a photograph?)"),
    ("inverted", "not the field of view of this image: the image is darker inside the mask"
                 " than outside it (an inverted mask?)"),
    ("background", "not the field of view of this image: 80% of the pixels inside the mask are"
                   " the image's dark background"),
])
def test_a_mask_that_is_not_a_fov_mask_is_refused(tmp_path, case, message):
    s = _photo(tmp_path, 0.25 if case == "background" else 0.46)
    if case == "photograph":
        write_image(tmp_path / "m.png", s.image)
    elif case == "inverted":
        write_image(tmp_path / "m.png", (~s.mask).astype(np.uint8) * 255)
    else:  # a small disc; the mask its left half and the frame there (not darker than outside)
        m = np.zeros(s.mask.shape, bool)
        m[:, :105] = True
        write_image(tmp_path / "m.png", m.astype(np.uint8) * 255)
    r = invoke("normalize", tmp_path / "eye.png", "--mask", tmp_path / "m.png",
               "-o", tmp_path / "out")
    assert r.exit_code == 1
    errs = error_lines(r.output)
    assert len(errs) == 1, r.output
    assert errs[0].startswith(f"error: {tmp_path / 'm.png'}: {message}"), errs[0]
    assert errs[0].endswith("(--no-mask-check uses it anyway)")
    assert not (tmp_path / "out" / "eye.png").exists()
    r = invoke("normalize", tmp_path / "eye.png", "--mask", tmp_path / "m.png",
               "-o", tmp_path / "forced", "--no-mask-check", "--rim", "none")
    assert r.exit_code == 0, r.output


def test_real_masks_pass_the_check(tmp_path):
    """A mask saved as JPEG (gray levels along its edge), a soft-edged one, and a mask of the
    whole image are FOV masks."""
    s = _photo(tmp_path)
    u = s.mask.astype(np.uint8) * 255
    ok, buf = cv2.imencode(".jpg", u, [cv2.IMWRITE_JPEG_QUALITY, 60])
    (tmp_path / "jpeg.jpg").write_bytes(buf.tobytes())
    write_image(tmp_path / "soft.png", cv2.GaussianBlur(u, (0, 0), 3))
    write_image(tmp_path / "whole.png", np.full(u.shape, 255, np.uint8))
    for m in ("jpeg.jpg", "soft.png", "whole.png"):
        r = invoke("normalize", tmp_path / "eye.png", "--mask", tmp_path / m,
                   "-o", tmp_path / m.split(".")[0], "-q")
        assert r.exit_code == 0, (m, r.output)


# ---------------------------------------------------------------- DRIVE, no flags


def test_drive_test_flat_to_the_margin_with_no_flags(drive, tmp_path):
    """The issue's measure: `normalize DRIVE/test -o out` with the official masks and no
    flags; every image, channel and band 0-32 px from the official mask's edge (vessels
    excluded) within 3 gray levels, keeping >= 96 % of each official mask."""
    r = invoke("normalize", drive / "test", "-o", tmp_path / "out", "-q")
    assert r.exit_code == 0, r.output
    for f in sorted((drive / "test" / "images").glob("*.tif")):
        stem = f.stem
        out = read_image(tmp_path / "out" / f"{stem}.png")
        fov = read_mask(drive / "test" / "mask" / f"{stem}_mask.gif")
        ves = read_mask(drive / "test" / "1st_manual" / f"{stem[:2]}_manual1.gif")
        ves = cv2.dilate(ves.astype(np.uint8), np.ones((3, 3), np.uint8)) > 0
        inside = out.max(axis=-1) > 0
        assert (fov & inside).sum() >= 0.96 * fov.sum(), stem
        assert _worst_band(out, inside & ~ves, fov) <= 3.0, stem


def test_low_confidence_is_one_warning_line_naming_the_images(tmp_path, monkeypatch):
    """Estimates of low confidence with different scores are one kind of warning; a few images
    are named on its line (the scores are in the manifest)."""
    import retina_prep.pipeline as pl
    from retina_prep.fov import FovEstimate

    real = pl.estimate_fov
    scores = iter([0.5, 0.7])
    monkeypatch.setattr(pl, "estimate_fov",
                        lambda image, details: FovEstimate(real(image), next(scores)))
    for i in range(2):
        s = synthetic_fundus((200, 210), seed=i, background=3)
        write_image(tmp_path / "in" / f"e{i}.png", s.image)
    r = invoke("normalize", tmp_path / "in", "-o", tmp_path / "out", "-j", 1, "--auto-mask")
    assert r.exit_code == 0, r.output
    lines = [x for x in r.output.splitlines() if x.startswith("warning:")]
    assert len(lines) == 1, r.output
    assert lines[0].startswith("warning: 2 of 2 images: estimated field of view has low confidence")
    assert lines[0].endswith(f"give a mask file: {tmp_path / 'in' / 'e0.png'}, "
                             f"{tmp_path / 'in' / 'e1.png'}")
    recs = [json.loads(x) for x in (tmp_path / "out" / "manifest.jsonl").open()][1:]
    assert sorted(x["params"]["fov_estimate"]["confidence"] for x in recs) == [0.5, 0.7]


@settings(max_examples=30, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from([np.uint8, np.uint16, np.float32, np.float64,
                                                 np.int32]), st.integers(1, 5))
def test_channel_max_matches_numpy(seed, dtype, channels):
    from retina_prep.fov import _percentiles, channel_max

    rng = np.random.default_rng(seed)
    a = (rng.random((int(rng.integers(1, 40)), int(rng.integers(1, 40)), channels)) * 250)
    a = a.astype(dtype)
    want = a.max(axis=-1)
    got = channel_max(a)
    assert got.dtype == want.dtype and np.array_equal(got, want)
    if dtype in (np.uint8, np.uint16):
        v = want.astype(np.float32)
        assert np.allclose(_percentiles(v, [0.1, 50, 99.9], want),
                           np.percentile(v, [0.1, 50, 99.9]), rtol=0, atol=1e-3)
