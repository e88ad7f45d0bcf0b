"""Masked CLAHE: OpenCV's CLAHE where the mask is the whole image, a brute-force reference
where it is not, and flat to the margin of a textured disc."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retina_prep.clahe import clahe_plane, masked_clahe
from retina_prep.fov import margin_distance
from retina_prep.io import read_image, write_image
from retina_prep.synthetic import synthetic_fundus

from .test_cli_commands import invoke


def _smooth(rng, h, w, dtype=np.uint8):
    top = 255 if dtype == np.uint8 else 65535
    a = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 1.5)
    a = (a - a.min()) / max(float(a.max() - a.min()), 1e-6)
    return np.rint(a * top).astype(dtype)


@settings(max_examples=40, deadline=None)
@given(st.integers(0, 10_000), st.integers(8, 90), st.integers(8, 90), st.integers(1, 8),
       st.sampled_from([0.0, 1.0, 2.0, 4.0, 40.0]), st.sampled_from([np.uint8, np.uint16]))
def test_whole_image_equals_opencv(seed, h, w, tiles, clip, dtype):
    img = _smooth(np.random.default_rng(seed), h, w, dtype)
    want = cv2.createCLAHE(clip, (tiles, tiles)).apply(img)
    got = clahe_plane(img, None, clip_limit=clip, tiles=tiles)
    assert got.dtype == dtype
    assert np.abs(got.astype(np.int64) - want).max() <= 1


def _reference(plane, mask, clip, tiles):
    """Masked CLAHE written out pixel by pixel (the definition in clahe_plane's Notes)."""
    h, w = plane.shape
    levels = 256
    if h % tiles or w % tiles:
        eh, ew = h + tiles - h % tiles, w + tiles - w % tiles
    else:
        eh, ew = h, w
    rows = [min(i, 2 * (h - 1) - i) for i in range(eh)]  # reflect-101
    cols = [min(j, 2 * (w - 1) - j) for j in range(ew)]
    ext = plane[np.ix_(rows, cols)]
    mext = mask[np.ix_(rows, cols)]
    th, tw = eh // tiles, ew // tiles
    full = th * tw
    luts, counts = {}, {}
    for r in range(tiles):
        for c in range(tiles):
            n = int(mext[r * th:(r + 1) * th, c * tw:(c + 1) * tw].sum())
            counts[r, c] = n
            if n == 0:
                continue
            vals = list(ext[r * th:(r + 1) * th, c * tw:(c + 1) * tw][
                mext[r * th:(r + 1) * th, c * tw:(c + 1) * tw]])
            g = 1
            while n < full:  # the pixels it misses, from the smallest ring that holds as many
                y0, y1 = max(r * th - g, 0), min((r + 1) * th + g, eh)
                x0, x1 = max(c * tw - g, 0), min((c + 1) * tw + g, ew)
                ring = [ext[y, x] for y in range(y0, y1) for x in range(x0, x1)
                        if mext[y, x] and not (r * th <= y < (r + 1) * th
                                               and c * tw <= x < (c + 1) * tw)]
                if len(ring) >= full - n or (y0, x0, y1, x1) == (0, 0, eh, ew) \
                        or g >= 4 * max(th, tw) - 1:
                    miss = min(full - n, len(ring))
                    vals += [ring[i * len(ring) // miss] for i in range(miss)]
                    break
                g += 1
            hist = [0] * levels
            for v in vals:
                hist[int(v)] += 1
            size = len(vals)
            if clip > 0:
                limit = max(int(clip * size / levels), 1)
                clipped = sum(max(x - limit, 0) for x in hist)
                hist = [min(x, limit) for x in hist]
                batch, residual = clipped // levels, clipped % levels
                hist = [x + batch for x in hist]
                step = max(levels // residual, 1) if residual else levels
                i = 0
                while i < levels and residual > 0:
                    hist[i] += 1
                    i += step
                    residual -= 1
            cum, lut = 0, []
            for x in hist:
                cum += x
                lut.append(float(np.rint(np.float32(cum) * np.float32((levels - 1) / size))))
            luts[r, c] = lut
    out = plane.copy()
    for y in range(h):
        for x in range(w):
            if not mask[y, x]:
                continue
            fy, fx = y / th - 0.5, x / tw - 0.5
            y1, x1 = int(np.floor(fy)), int(np.floor(fx))
            ay, ax = fy - y1, fx - x1
            total = weight = 0.0
            for ty, wy in ((max(y1, 0), 1 - ay), (min(y1 + 1, tiles - 1), ay)):
                for tx, wx in ((max(x1, 0), 1 - ax), (min(x1 + 1, tiles - 1), ax)):
                    wgt = wy * wx * counts[ty, tx]
                    if wgt:
                        total += wgt * luts[ty, tx][int(plane[y, x])]
                        weight += wgt
            out[y, x] = int(np.clip(np.rint(total / weight), 0, 255))
    return out


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 10_000), st.integers(3, 4), st.sampled_from([1.0, 2.0, 40.0]))
def test_masked_matches_the_brute_force_reference(seed, tiles, clip):
    rng = np.random.default_rng(seed)
    h, w = int(rng.integers(18, 34)), int(rng.integers(18, 34))
    img = _smooth(rng, h, w)
    yy, xx = np.mgrid[:h, :w]
    mask = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= (0.45 * min(h, w)) ** 2
    got = clahe_plane(img, mask, clip_limit=clip, tiles=tiles)
    want = _reference(img, mask, clip, tiles)
    assert np.abs(got.astype(int) - want)[mask].max() <= 1
    assert np.array_equal(got[~mask], img[~mask])  # outside: as it was (the caller fills)


@pytest.mark.parametrize("clip", [2.0, 4.0, 40.0])
def test_flat_to_the_margin_of_a_textured_disc(clip):
    """The outer 0-8 px of a textured disc on black: masked CLAHE gives them the mean and the
    contrast of the same texture without a margin; OpenCV's shifts them (most at clip 40)."""
    rng = np.random.default_rng(3)
    tex = cv2.GaussianBlur(rng.normal(128, 30, (512, 512)).astype(np.float32), (0, 0), 1.5)
    tex = np.clip(tex, 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:512, :512]
    disc = (yy - 256) ** 2 + (xx - 256) ** 2 <= 230 ** 2
    img = np.where(disc, tex, 0).astype(np.uint8)
    band = disc & (margin_distance(disc) < 8)
    ref = cv2.createCLAHE(clip, (8, 8)).apply(tex)[band].astype(float)
    got = clahe_plane(img, disc, clip_limit=clip, tiles=8)[band].astype(float)
    assert abs(got.mean() - ref.mean()) <= 1.0
    assert got.std() / ref.std() >= 0.97
    if clip == 40.0:
        plain = cv2.createCLAHE(clip, (8, 8)).apply(img)[band].astype(float)
        assert abs(plain.mean() - ref.mean()) > 5 and plain.std() / ref.std() < 0.8


@pytest.mark.parametrize("mu, sd, blur", [(90, 25, 3.0), (170, 20, 1.0), (110, 40, 6.0)])
@pytest.mark.parametrize("clip", [2.0, 4.0, 40.0])
def test_no_bias_at_the_margin_over_many_textures(mu, sd, blur, clip):
    """Over 12 textures of a kind, the outer 0-8 px get the mean (within 1 gray level, or 2
    standard errors where single textures scatter more) and the contrast of the same texture
    without a margin. One texture alone scatters by up to several levels at clip 40, where a
    margin tile equalizes a few hundred correlated pixels (its CDF from that sample alone)."""
    yy, xx = np.mgrid[:512, :512]
    disc = (yy - 256) ** 2 + (xx - 256) ** 2 <= 230 ** 2
    band = disc & (margin_distance(disc) < 8)
    shifts, ratios = [], []
    for seed in range(12):
        rng = np.random.default_rng(100 + seed)
        tex = cv2.GaussianBlur(rng.normal(mu, sd, (512, 512)).astype(np.float32), (0, 0), blur)
        tex = np.clip(tex, 0, 255).astype(np.uint8)
        ref = cv2.createCLAHE(clip, (8, 8)).apply(tex)[band].astype(float)
        got = clahe_plane(np.where(disc, tex, 0).astype(np.uint8), disc, clip_limit=clip,
                          tiles=8)[band].astype(float)
        shifts.append(got.mean() - ref.mean())
        ratios.append(got.std() / ref.std())
    shifts = np.array(shifts)
    assert abs(shifts.mean()) <= max(1.0, 2 * shifts.std() / np.sqrt(len(shifts))), shifts
    if clip <= 4:  # no bias left at the usual clips (a grown tile's overshoot gave -0.4..-0.7)
        assert abs(shifts.mean()) <= 0.4, shifts
    assert np.mean(ratios) >= 0.97


def test_colour_modes_and_sixteen_bits():
    s = synthetic_fundus((120, 130), seed=2, background=3)
    for colour in ("lab", "each", "green"):
        out = masked_clahe(s.image, s.mask, colour=colour, fill=0)
        assert out.dtype == np.uint8 and out.shape == s.image.shape
        assert (out[~s.mask] == 0).all()
    green = masked_clahe(s.image, s.mask, colour="green")
    assert np.array_equal(green[..., 0][s.mask], s.image[..., 0][s.mask])  # the others kept
    wide = s.image.astype(np.uint16) * 257
    out16 = masked_clahe(wide, s.mask)
    assert out16.dtype == np.uint16 and len(np.unique(out16[s.mask])) > 256
    with pytest.raises(ValueError, match="uint8 or uint16"):
        masked_clahe(s.image.astype(np.float32) / 255, s.mask)


def test_cli_method_clahe(tmp_path):
    for i in range(3):
        s = synthetic_fundus((150, 160), seed=i, background=4)
        write_image(tmp_path / "in" / f"e{i}.png", s.image)
        write_image(tmp_path / "in" / f"e{i}_mask.png", s.mask.astype(np.uint8) * 255)
    r = invoke("normalize", tmp_path / "in", "-o", tmp_path / "out", "--method", "clahe",
               "--clip-limit", "3", "--tiles", "6", "--clahe-on", "each", "-j", 2, "-q")
    assert r.exit_code == 0, r.output
    for i in range(3):
        out = read_image(tmp_path / "out" / f"e{i}.png")
        mask = read_image(tmp_path / "in" / f"e{i}_mask.png") > 0
        assert (out[~mask] == 0).all() and out[mask].std() > 10
    r = invoke("normalize", tmp_path / "in", "-o", tmp_path / "x", "--method", "clahe",
               "--tiles", "0")
    assert r.exit_code == 2


def test_compare_method_clahe(tmp_path):
    """compare --method clahe: original | CLAHE without a mask | masked CLAHE, one figure."""
    s = synthetic_fundus((150, 160), seed=1, background=4)
    write_image(tmp_path / "e.png", s.image)
    r = invoke("compare", tmp_path / "e.png", "-o", tmp_path / "fig.png", "--method", "clahe",
               "--clip-limit", "4", "-q")
    assert r.exit_code == 0, r.output
    fig = read_image(tmp_path / "fig.png")
    assert fig.shape[1] > 3 * 150 and fig.ndim == 3
