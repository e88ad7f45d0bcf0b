"""First-order (plane) masked normalization against a brute-force weighted least-squares fit."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import retina_prep as rp
from retina_prep.convolution import mask_weights, masked_convolve
from retina_prep.first_order import masked_plane_mean
from retina_prep.kernels import box_kernel, gaussian_kernel
from retina_prep.synthetic import synthetic_fundus

from .reference import plane_mean_ref


def _disc(h=40, w=44, r=15, notch=True, spur=True):
    y, x = np.mgrid[0:h, 0:w]
    m = (y - h / 2) ** 2 + (x - w / 2) ** 2 <= r * r
    if notch:
        m[int(h / 2) - 3:int(h / 2) + 3, int(w / 2) + r - 5:] = False  # a notch into the disc
    if spur:
        m[3, 2:int(w / 2)] = True  # a 1-px spur
        m[0, 0] = True  # a lone corner pixel
    return m


@pytest.mark.parametrize("kernel", [box_kernel(7), gaussian_kernel(1.5, 7)], ids=["box", "gauss"])
@pytest.mark.parametrize("ridge", [0.0, 0.1, 1.0])
def test_matches_brute_force_least_squares_at_every_pixel(kernel, ridge):
    rng = np.random.default_rng(1)
    m = _disc()
    img = rng.uniform(0, 200, m.shape)
    got = masked_plane_mean(img, m, kernel, ridge=ridge)
    ref = plane_mean_ref(img, m, kernel.array, ridge=ridge)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(ref))
    ok = ~np.isnan(ref)
    np.testing.assert_allclose(got[ok], ref[ok], atol=2e-2 * (1 + ridge * 0), rtol=1e-3)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(a=st.floats(-50, 50), b=st.floats(-3, 3), c=st.floats(-3, 3),
       size=st.sampled_from([3, 5, 9]), seed=st.integers(0, 100))
def test_exact_on_planes_inside_any_mask(a, b, c, size, seed):
    """With ridge 0 the plane is recovered exactly wherever the window's valid pixels are not
    collinear (random masks: notches, spurs, isolated pixels)."""
    rng = np.random.default_rng(seed)
    m = (rng.random((30, 33)) < 0.7) | _disc(30, 33, 10)
    y, x = np.mgrid[0:30, 0:33]
    img = 100 + a + b * x + c * y
    got = masked_plane_mean(img, m, box_kernel(size), ridge=0.0)
    # not collinear: the valid pixels of the window have a 2-D spread (det of their covariance)
    k = box_kernel(size)
    mf = m.astype(np.float64)
    n = masked_convolve(mf, None, k) * k.total
    sx = masked_convolve(mf * x, None, k)
    sy = masked_convolve(mf * y, None, k)
    sxx = masked_convolve(mf * x * x, None, k)
    syy = masked_convolve(mf * y * y, None, k)
    sxy = masked_convolve(mf * x * y, None, k)
    with np.errstate(invalid="ignore", divide="ignore"):
        cxx, cyy, cxy = sxx / n - (sx / n) ** 2, syy / n - (sy / n) ** 2, sxy / n - sx * sy / n**2
    spread = m & (n > 0) & (cxx * cyy - cxy**2 > 0.05)
    assert spread.sum() > 100
    assert np.allclose(got[spread], img[spread], atol=2e-2)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 1000), ridge=st.sampled_from([0.0, 0.1]))
def test_equals_order_zero_where_the_window_is_full_and_never_nan(seed, ridge):
    rng = np.random.default_rng(seed)
    m = _disc(36, 36, 14)
    img = rng.uniform(0, 255, (36, 36, 3)).astype(np.float32)
    k = box_kernel(5)
    got = masked_plane_mean(img, m, k, ridge=ridge)
    zero = masked_convolve(img, m, k)
    full = masked_convolve(m.astype(np.float32), None, k) > 1 - 1e-6
    full &= masked_convolve(m.astype(np.float32), m, k) > 1 - 1e-6
    inner = full & m
    np.testing.assert_allclose(got[inner], zero[inner], atol=1e-3)
    defined = ~np.isnan(zero[..., 0])
    assert np.isfinite(got[defined]).all()


def test_ramp_at_the_margin_no_one_sided_bias():
    """A vignetting ramp: order 0 overshoots by about slope * window / 4 at the margin; order 1
    follows it (the one-sided-window bias the issue measures)."""
    m = _disc(120, 120, 55, notch=False, spur=False)
    y, x = np.mgrid[0:120, 0:120]
    img = (60 + 1.0 * x).astype(np.float32)
    k = box_kernel(21)
    z = masked_convolve(img, m, k)
    o = masked_plane_mean(img, m, k, ridge=0.0)
    edge = m & (np.abs(x - 60) > 50)
    assert np.nanmax(np.abs(z - img)[edge]) > 3
    assert np.nanmax(np.abs(o - img)[edge]) < 1e-2


def test_float32_precision_at_4000_px():
    """Offsets are relative to each window, so float32 stays within 1 gray level of a float64
    fit even at the far corner of a 4000 px image (the largest absolute coordinates)."""
    rng = np.random.default_rng(1)
    y, x = np.ogrid[0:4000, 0:4000]
    mask = (y - 2000) ** 2 + (x - 2000) ** 2 <= 1900**2
    img = np.clip(40 + 0.04 * x + 0.02 * y + rng.normal(0, 3, (4000, 4000)), 0, 255).astype(np.uint8)
    k = box_kernel(51)
    got = masked_plane_mean(img, mask, k)
    ys, xs = np.nonzero(mask[3000:, 3000:])
    picks = np.argsort(xs + ys)[-5:]
    pixels = [(int(ys[i]) + 3000, int(xs[i]) + 3000) for i in picks]
    ref = plane_mean_ref(img.astype(np.float64), mask, k.array, ridge=0.1, pixels=pixels)
    for yy, xx in pixels:
        assert abs(float(got[yy, xx]) - ref[yy, xx]) < 1.0


def test_normalize_order_one_api():
    s = synthetic_fundus((200, 210), seed=2)
    out0 = rp.normalize_illumination(s.image, s.mask, window=21)
    out1 = rp.normalize_illumination(s.image, s.mask, window=21, order=1)
    assert out1.dtype == np.uint8 and out1.shape == out0.shape
    with pytest.raises(ValueError, match="order"):
        rp.normalize_illumination(s.image, s.mask, window=21, order=2)


def test_cli_order_auto_follows_the_mask_trim(tmp_path):
    """--order auto runs 1 on trimmed masks (by default every mask's rim is trimmed; --erode)
    and 0 on a mask file used as given (--rim none); an explicit 1 on an untrimmed mask warns.
    The manifest says which."""
    import json

    from click.testing import CliRunner

    from retina_prep.cli.main import cli
    from retina_prep.io import write_image

    s = synthetic_fundus((150, 160), seed=4, vignette=0.6)
    write_image(tmp_path / "in" / "a.png", s.image)
    write_image(tmp_path / "in" / "a_mask.png", s.mask.astype(np.uint8) * 255)

    def run(name, *args):
        r = CliRunner().invoke(cli, ["normalize", str(tmp_path / "in"), "-o", str(tmp_path / name),
                                     "-v", *args])
        assert r.exit_code == 0, r.output
        rec = [json.loads(x) for x in (tmp_path / name / "manifest.jsonl").open()][-1]
        return rec["params"]["order"], r.output

    assert run("default")[0] == 1
    assert run("given", "--rim", "none")[0] == 0
    assert run("eroded", "--erode", "3", "--rim", "none")[0] == 1
    assert run("estimated", "--auto-mask")[0] == 1
    order, out = run("forced", "--order", "1", "--rim", "none")
    assert order == 1 and "untrimmed" in out
    assert run("zero", "--order", "0", "--erode", "3")[0] == 0


def test_cli_order_one_flattens_the_vignetted_margin(tmp_path):
    """End to end on a vignetted disc: order 1 keeps the outer band near I0 where order 0 sags."""
    from click.testing import CliRunner

    from retina_prep.cli.main import cli
    from retina_prep.fov import margin_distance
    from retina_prep.io import read_image, write_image

    s = synthetic_fundus((300, 320), seed=5, vignette=0.7, vessels=False)
    write_image(tmp_path / "in" / "v.png", s.image)
    write_image(tmp_path / "in" / "v_mask.png", s.mask.astype(np.uint8) * 255)
    bias = {}
    for order in ("0", "1"):
        out = tmp_path / f"o{order}"
        r = CliRunner().invoke(cli, ["normalize", str(tmp_path / "in"), "-o", str(out), "--window",
                                     "41", "--erode", "2", "--rim", "none", "--order", order, "-q"])
        assert r.exit_code == 0, r.output
        img = read_image(out / "v.png").astype(float)
        band = s.mask & (margin_distance(s.mask) > 3) & (margin_distance(s.mask) < 9)
        bias[order] = np.abs(img[band].mean(axis=0) - 128).max()
    # the r^4 fall-off is curved, so a plane leaves a little; the one-sided overshoot is gone
    assert bias["1"] < 3.0 and bias["1"] < bias["0"] / 4


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), density=st.floats(0.01, 0.6),
       ry=st.integers(0, 12), rx=st.integers(0, 12))
def test_band_blocks_cover_every_band_pixel_once(seed, density, ry, rx):
    from retina_prep.first_order import _band_blocks

    rng = np.random.default_rng(seed)
    band = rng.random((rng.integers(1, 90), rng.integers(1, 90))) < density
    for one_block in (False, True):
        hits = np.zeros(band.shape, int)
        for y0, y1, x0, x1 in _band_blocks(band, ry, rx, one_block):
            assert 0 <= y0 < y1 <= band.shape[0] and 0 <= x0 < x1 <= band.shape[1]
            hits[y0:y1, x0:x1] += 1
        assert (hits[band] == 1).all()  # covered, by one block only (no pixel corrected twice)
        assert hits.max() <= 1


@pytest.mark.parametrize("kernel", [box_kernel(9), gaussian_kernel(2.0, 9)], ids=["box", "gauss"])
def test_normalize_order_one_matches_brute_force_inside_the_mask(kernel):
    """normalize_illumination computes the plane in the FOV's margin band only (the outside is
    filled); inside the FOV it is I - plane + I0 with the brute-force plane, rounded."""
    rng = np.random.default_rng(3)
    m = _disc(44, 48, 17)
    y, x = np.mgrid[0:44, 0:48]
    img = np.clip(60 + 2.0 * x + y + rng.normal(0, 8, m.shape), 0, 255).astype(np.uint8)
    got = rp.normalize_illumination(img, m, kernel=kernel, order=1, fill=0)
    ref = np.clip(np.rint(img - plane_mean_ref(img, m, kernel.array, ridge=0.1) + 128), 0, 255)
    assert (np.abs(got[m].astype(int) - ref[m]) <= 1).all()
    assert (got[~m] == 0).all()


@pytest.mark.parametrize("order", [0, 1])
@pytest.mark.parametrize("dtype,channels", [(np.uint8, 3), (np.uint8, None), (np.uint16, 3),
                                            (np.float32, 3), (np.uint8, 1), (np.uint8, 4)])
def test_prepared_mask_gives_the_same_output(order, dtype, channels):
    s = synthetic_fundus((150, 160), seed=4)
    img = s.image if channels == 3 else (s.image[..., 1] if channels is None else None)
    if channels == 1:
        img = s.image[..., 1:2]
    if channels == 4:
        img = np.dstack([s.image, np.full(s.mask.shape, 200, np.uint8)])
    if dtype == np.uint16:
        img = img.astype(np.uint16) * 257
    if dtype == np.float32:
        img = img.astype(np.float32) / 255
    m = s.mask.copy()
    m[:, :20] = False  # a cut disc: the band meets the image edge
    prepared = rp.prepare_mask(m, window=21, order=order)
    direct = rp.normalize_illumination(img, m, window=21, order=order)
    again = rp.normalize_illumination(img, prepared, order=order)
    np.testing.assert_array_equal(again, direct)
    # a second image with the same prepared mask (its replicated coefficients now kept)
    np.testing.assert_array_equal(rp.normalize_illumination(img, prepared, order=order), direct)
    assert again.dtype == direct.dtype and again.shape == direct.shape


def test_prepared_mask_rules():
    s = synthetic_fundus((80, 90), seed=5)
    prepared = rp.prepare_mask(s.mask, window=11, order=1)
    with pytest.raises(ValueError, match="carries its kernel"):
        rp.normalize_illumination(s.image, prepared, window=11)
    with pytest.raises(ValueError, match="empty"):
        rp.prepare_mask(np.zeros((8, 8), bool))
    with pytest.raises(ValueError, match="shape"):
        rp.normalize_illumination(s.image[:40], prepared)
    # an image with NaN pixels has its own valid set: the prepared terms are not used, same result
    img = s.image.astype(np.float32) / 255
    img[40, 40] = np.nan
    np.testing.assert_array_equal(rp.normalize_illumination(img, prepared, order=1),
                                  rp.normalize_illumination(img, s.mask, window=11, order=1))
    # a prepared order-0 mask still runs order 1 (its plane computed on the fly)
    p0 = rp.prepare_mask(s.mask, window=11)
    np.testing.assert_array_equal(rp.normalize_illumination(s.image, p0, order=1),
                                  rp.normalize_illumination(s.image, s.mask, window=11, order=1))


def test_strip_blocks_and_one_block_agree(monkeypatch):
    """The band runs in strips of blocks, or (images within a few kernel radii) in one block;
    8-bit images take exact int32 window sums, floats float32 ones: the same plane (to float32
    rounding) all four ways."""
    import functools

    import retina_prep.first_order as core

    s = synthetic_fundus((700, 760), seed=6, vignette=0.6)
    k = box_kernel(61)
    weights = mask_weights(s.mask, k)
    zero = masked_convolve(s.image.astype(np.float32), s.mask, k, fill=None)

    def plane(img):
        g = core.plane_geometry(s.mask, k, weights, where=s.mask)
        return core.apply_plane(img, s.mask, zero.copy(), g)[s.mask]

    strips = [plane(s.image), plane(s.image.astype(np.float32))]
    monkeypatch.setattr(core, "_band_blocks", functools.partial(core._band_blocks, one_block=True))
    one = [plane(s.image), plane(s.image.astype(np.float32))]
    for got in strips[1:] + one:
        np.testing.assert_allclose(got, strips[0], atol=2e-2)
    assert np.abs(strips[0] - zero[s.mask]).max() > 1  # the plane is not the mean there


def test_large_blocks_leave_int32_for_float_without_overflow(monkeypatch):
    """Window sums of x I M overflow int32 on large blocks (coordinates up to 1200 px, box
    101: 255 * 1200 * 101^2 > 2^31): there the float path runs, and its plane matches the
    small blocks' exact integer one."""
    import functools

    import retina_prep.first_order as core

    s = synthetic_fundus((1200, 2400), seed=8, vignette=0.6)
    k = box_kernel(101)
    weights = mask_weights(s.mask, k)
    zero = masked_convolve(s.image.astype(np.float32), s.mask, k, fill=None)

    def plane():
        g = core.plane_geometry(s.mask, k, weights, where=s.mask)
        return core.apply_plane(s.image, s.mask, zero.copy(), g)[s.mask]

    small = plane()
    monkeypatch.setattr(core, "_band_blocks", functools.partial(core._band_blocks, one_block=True))
    large = plane()
    np.testing.assert_allclose(large, small, atol=5e-2)
    assert np.abs(small - zero[s.mask]).max() > 1


def test_pyramid_gaussian_plane_blocks_match_whole_image(monkeypatch):
    """A large Gaussian (the pyramid path) in first order: each block's cells lie on the whole
    image's grid, so strips of blocks and one block give the same plane, and it is within a
    tenth of a gray level of the exact Gaussian's plane."""
    import functools

    import retina_prep.first_order as core

    s = synthetic_fundus((1000, 1040), seed=9, vignette=0.6)
    img = s.image.astype(np.float32)
    k = gaussian_kernel(40.0)
    assert k.pyramid[0] == 3
    strips = masked_plane_mean(img, s.mask, k)
    exact = masked_plane_mean(img, s.mask, gaussian_kernel(40.0, exact=True))
    zero = masked_convolve(img, s.mask, k)
    monkeypatch.setattr(core, "_band_blocks", functools.partial(core._band_blocks, one_block=True))
    one = masked_plane_mean(img, s.mask, k)
    inside = s.mask
    # float32 moments with block-local coordinates; off the cell grid it would be 0.2
    np.testing.assert_allclose(strips[inside], one[inside], atol=2e-2)
    assert np.abs(strips - exact)[inside].max() < 0.1
    assert np.abs(strips - zero)[inside].max() > 1  # the plane is not the mean there


def test_prepared_plane_with_and_without_kept_coefficients(monkeypatch):
    """A prepared geometry keeps its coefficients replicated to the image's channels when they
    are small, else makes them block by block: the same output either way, image after image."""
    import retina_prep.first_order as core

    s = synthetic_fundus((300, 320), seed=12, vignette=0.5)
    direct = rp.normalize_illumination(s.image, s.mask, window=31, order=1)
    for budget in (0, 1 << 30):
        monkeypatch.setattr(core, "_REPLICA_BYTES", budget)
        prepared = rp.prepare_mask(s.mask, window=31, order=1)
        for _ in range(2):
            np.testing.assert_array_equal(rp.normalize_illumination(s.image, prepared, order=1),
                                          direct)
        assert bool(prepared.plane._replicas[3]) == (budget > 0)


def test_prepared_mask_with_a_pyramid_gaussian():
    """A large Gaussian (the pyramid path) prepared once gives the outputs of the direct run, in
    both orders (the prepared plane's blocks sit on the same cell grid)."""
    s = synthetic_fundus((600, 640), seed=3, vignette=0.5)
    k = gaussian_kernel(24.0)
    assert k.pyramid is not None
    for order in (0, 1):
        prepared = rp.prepare_mask(s.mask, kernel=k, order=order)
        np.testing.assert_array_equal(rp.normalize_illumination(s.image, prepared, order=order),
                                      rp.normalize_illumination(s.image, s.mask, kernel=k,
                                                                order=order))
