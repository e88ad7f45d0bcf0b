import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from retina_prep.convolution import MODES, PATHS, convolve, mask_weights, masked_convolve, masked_filter
from retina_prep.first_order import masked_plane_mean
from retina_prep.kernels import (
    Kernel,
    as_kernel,
    box_kernel,
    gaussian_kernel,
    laplacian_kernel,
    named_kernel,
    sharpen_kernel,
    sobel_kernel,
)
from retina_prep.synthetic import synthetic_fundus

from .reference import convolve_ref, masked_convolve_ref, partial_ref, windowed_mean_loop


def _masks(rng, shape):
    """Masks with holes, thin strips, border contact, soft weights."""
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    disc = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (0.4 * min(h, w)) ** 2
    holes = disc & (rng.random(shape) > 0.15)
    strip = np.zeros(shape, bool)
    strip[:, w // 3] = True
    strip[h // 2, :] = True
    border = np.zeros(shape, bool)
    border[: h // 2, :] = True  # touches three image edges
    noise = rng.random(shape) > 0.5
    soft = rng.random(shape).astype(np.float32) * disc
    return {"disc": disc, "holes": holes, "strip": strip, "border": border,
            "noise": noise, "soft": soft, "none": None}


def _kernels(rng):
    return [
        box_kernel(1),
        box_kernel(3),
        box_kernel(7),
        box_kernel(15),
        gaussian_kernel(1.0),
        gaussian_kernel(2.5, 9),
        as_kernel(rng.random((5, 3)) + 0.01),  # asymmetric, general path
        as_kernel(np.outer([1, 2, 1], [1, 4, 6, 4, 1]).astype(float)),  # separable, asymmetric sizes
        sharpen_kernel(),
        laplacian_kernel(),
        sobel_kernel("x"),
        sobel_kernel("y"),
        as_kernel(rng.normal(size=(3, 5))),  # signed, asymmetric
    ]


def _paths(k: Kernel):
    ps = ["auto", "filter2d"]
    if k.pyramid is not None:
        ps.append("pyramid")
    if k.factors is not None:
        ps.append("separable")
    if k.is_box:
        ps.append("box")
    return ps


@pytest.mark.parametrize("channels", [0, 1, 2, 3, 4, 5])
def test_every_path_matches_brute_force(rng, channels):
    shape = (31, 42)
    img_shape = shape if channels == 0 else shape + (channels,)
    image = rng.random(img_shape) * 255
    for mname, mask in _masks(rng, shape).items():
        for k in _kernels(rng):
            ref, ref_w = masked_convolve_ref(image, mask, k.array)
            for path in _paths(k):
                out, w = masked_convolve(image, mask, k, path=path, return_weights=True)
                assert out.dtype == np.float32 and out.shape == image.shape
                np.testing.assert_allclose(w, ref_w, atol=2e-5, err_msg=f"{mname} {k.name} {path}")
                defined = ~np.isnan(ref)
                assert np.array_equal(np.isnan(out), ~defined), f"{mname} {k.name} {path}"
                np.testing.assert_allclose(out[defined], ref[defined], rtol=1e-4, atol=2e-3,
                                           err_msg=f"{mname} {k.name} {path}")


def test_fast_paths_match_filter2d(rng):
    image = rng.random((60, 70, 3)).astype(np.float32) * 255
    mask = rng.random((60, 70)) > 0.3
    for k in [box_kernel(11), box_kernel(31), gaussian_kernel(3.0), gaussian_kernel(8.0, 41)]:
        general = masked_convolve(image, mask, k, path="filter2d")
        for path in _paths(k):
            fast = masked_convolve(image, mask, k, path=path)
            np.testing.assert_allclose(fast, general, rtol=1e-5, atol=1e-3, equal_nan=True)


def test_kernel_size_cap():
    """Box and Gaussian kernels are held as 2-D arrays: sides above 4001 px are refused with a
    message naming the size, before any large allocation."""
    assert box_kernel(4001).shape == (4001, 4001)
    assert gaussian_kernel(666.0).shape == (3997, 3997)
    for make in (lambda: box_kernel(4003), lambda: gaussian_kernel(667.0),
                 lambda: gaussian_kernel(5.0, 4003), lambda: gaussian_kernel(1e6)):
        with pytest.raises(ValueError, match="4001 px"):
            make()


def test_pyramid_gaussian_kernel_rule():
    """Gaussians with sigma >= 16 and no size run on the pyramid path: cells of
    max(2, floor(sigma/12)) px, and the three blurs (cell averaging, coarse Gaussian, linear
    interpolation) add up to sigma^2; the kernel's array is the exact Gaussian it stands for."""
    for sigma in [16.0, 20.0, 80.0, 333.0]:
        k = gaussian_kernel(sigma)
        d, s = k.pyramid
        assert d == max(2, int(sigma // 12)) and s * d <= sigma
        assert (d * s) ** 2 + (d * d - 1) / 12 + d * d / 6 == pytest.approx(sigma**2)
        np.testing.assert_allclose(k.array, gaussian_kernel(sigma, exact=True).array)
    assert gaussian_kernel(20.0, 51).pyramid is None  # an explicit size is exact
    assert gaussian_kernel(20.0, exact=True).pyramid is None
    assert gaussian_kernel(15.9).pyramid is None
    with pytest.raises(ValueError, match="pyramid"):
        masked_convolve(np.ones((9, 9)), None, gaussian_kernel(3.0), path="pyramid")


@pytest.mark.parametrize("shape,sigma", [((101, 103, 3), 20.0), ((1200, 1300, 3), 80.0),
                                         ((700, 530), 40.0), ((5, 7, 4), 30.0), ((1, 1), 16.0)])
def test_pyramid_path_as_written_out(shape, sigma):
    """The pyramid path, bit for bit as written out by hand (cell means taken strip by strip,
    partial cells, 1 px images); the public functions hand out contiguous arrays."""
    import cv2

    from retina_prep.convolution import _pyramid_filter
    from retina_prep.kernels import _gaussian_1d

    src = np.random.default_rng(0).random(shape).astype(np.float32) * 255
    k = gaussian_kernel(sigma)
    got = _pyramid_filter(src, k, cv2.CV_32F)
    d, s = k.pyramid
    h, w = shape[:2]
    ph, pw = -(-h // d) * d, -(-w // d) * d
    padded = cv2.copyMakeBorder(src, 0, ph - h, 0, pw - w, cv2.BORDER_CONSTANT, value=0)
    coarse = cv2.resize(padded, (pw // d, ph // d), interpolation=cv2.INTER_AREA)
    g = _gaussian_1d(s).astype(np.float32)
    coarse = cv2.sepFilter2D(coarse, cv2.CV_32F, g, g, borderType=cv2.BORDER_CONSTANT)
    ref = cv2.resize(coarse, (pw, ph), interpolation=cv2.INTER_LINEAR)[:h, :w]
    assert got.shape == src.shape
    np.testing.assert_array_equal(got, ref.reshape(got.shape))
    mask = np.ones(shape[:2], bool)
    for out in (convolve(src, k), masked_convolve(src, mask, k), mask_weights(mask, k),
                *masked_convolve(src, mask, k, return_weights=True),
                *masked_filter(src, mask, k, mode="partial")):
        assert out.flags["C_CONTIGUOUS"]


@pytest.mark.parametrize("sigma", [16.0, 24.0, 41.0, 60.0])
def test_pyramid_masked_close_to_exact_gaussian(sigma):
    """On a fundus photograph with its FOV mask, the pyramid's masked mean is within 0.06 gray
    levels of the exact Gaussian's everywhere in the FOV (the cascade it replaced: 1.3)."""
    s = synthetic_fundus((420, 470), seed=3, vignette=0.5)
    got = masked_convolve(s.image, s.mask, gaussian_kernel(sigma))
    ref = masked_convolve(s.image, s.mask, gaussian_kernel(sigma, exact=True))
    err = np.abs(got - ref)[s.mask]
    assert err.max() < 0.06, err.max()


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), value=st.floats(-1e3, 1e3), sigma=st.floats(16, 40),
       h=st.integers(1, 120), w=st.integers(1, 120), channels=st.sampled_from([0, 1, 2, 3, 4, 5]))
def test_pyramid_normalization_is_exact(seed, value, sigma, h, w, channels):
    """Numerator and denominator take the same linear operator with non-negative weights: a
    constant stays that constant under any mask, at any image size (whole cells or not, even
    smaller than one cell) and channel count, and the certainty stays in [0, 1]."""
    assume(not (channels > 4 and h in (1, 3, 4)))  # refused as channels-first (tested elsewhere)
    rng = np.random.default_rng(seed)
    mask = rng.random((h, w)) < rng.uniform(0.05, 1)
    mask[rng.integers(h), rng.integers(w)] = True
    shape = (h, w) if channels == 0 else (h, w, channels)
    out, wts = masked_convolve(np.full(shape, value), mask, gaussian_kernel(sigma),
                               return_weights=True)
    assert out.shape == shape and wts.shape == (h, w)
    out = out.reshape(h, w, -1)
    ok = ~np.isnan(out[..., 0])
    assert ok.any()
    np.testing.assert_allclose(out[ok], value, rtol=1e-5, atol=1e-3)
    assert (wts >= 0).all() and (wts <= 1).all()


@pytest.mark.parametrize("kernel", [box_kernel(5), gaussian_kernel(2.0), gaussian_kernel(20.0)],
                         ids=["box", "gaussian", "pyramid"])
def test_tiny_images_of_any_channel_count(kernel):
    """Images down to 1 x 1 px with 1-5 channels: a constant stays constant (OpenCV's Python
    binding takes arrays of up to 4 elements for scalars, and GRAY2BGRA does not copy the gray
    into the fourth channel: neither may change a result)."""
    for h, w, c in [(1, 1, 0), (1, 1, 3), (1, 1, 4), (1, 2, 4), (2, 1, 3), (2, 2, 4), (7, 2, 5),
                    (2, 7, 2), (5, 6, 4)]:
        shape = (h, w) if c == 0 else (h, w, c)
        mask = np.ones((h, w), bool)
        out = masked_convolve(np.full(shape, 5.0), mask, kernel)
        assert out.shape == shape
        np.testing.assert_allclose(out, 5.0, atol=1e-4, err_msg=str(shape))
        plane = masked_plane_mean(np.full(shape, 5.0), mask, kernel)
        np.testing.assert_allclose(plane, 5.0, atol=1e-3, err_msg=str(shape))


def test_plain_convolve_matches_reference(rng):
    image = rng.random((20, 25)) * 10
    k = rng.random((3, 7)) - 0.3  # signed, asymmetric: checks flip and anchor
    np.testing.assert_allclose(convolve(image, k), convolve_ref(image, k), atol=1e-4)


def test_box_mean_against_explicit_loop(rng):
    image = rng.integers(0, 256, (25, 30, 3)).astype(np.uint8)
    mask = rng.random((25, 30)) > 0.4
    out = masked_convolve(image, mask, box_kernel(7))
    for i, j in [(0, 0), (12, 15), (24, 29), (3, 27)]:
        if mask[max(0, i - 3): i + 4, max(0, j - 3): j + 4].any():
            np.testing.assert_allclose(out[i, j], windowed_mean_loop(image, mask, 7, i, j), rtol=1e-5)


def test_background_does_not_leak():
    img = np.zeros((40, 40), np.float32)
    mask = np.zeros((40, 40), bool)
    mask[10:30, 10:30] = True
    img[mask] = 200.0
    img[~mask] = 0.0
    out = masked_convolve(img, mask, box_kernel(11), fill=-1)
    assert np.allclose(out[mask], 200.0)
    # pixels with no valid pixel in their window get the fill value
    assert out[0, 0] == -1


def test_undefined_pixels_get_fill_and_weights_in_unit_range(rng):
    mask = np.zeros((30, 30), bool)
    mask[5, 5] = True
    out, w = masked_convolve(rng.random((30, 30)), mask, box_kernel(5), fill=7.0, return_weights=True)
    assert out[20, 20] == 7.0
    assert w.min() >= 0 and w.max() <= 1
    assert w[5, 5] == pytest.approx(1 / 25, rel=1e-5)


def test_weights_of_full_mask_are_one_inside():
    w = mask_weights(np.ones((20, 20), bool), box_kernel(5))
    assert np.allclose(w[2:-2, 2:-2], 1.0)
    assert w[0, 0] == pytest.approx(9 / 25)  # outside the rectangle counts as invalid


def test_input_not_mutated(rng):
    image = rng.random((20, 20, 3)).astype(np.float32)
    mask = rng.random((20, 20)) > 0.5
    image.setflags(write=False)
    mask.setflags(write=False)
    before = image.copy()
    masked_convolve(image, mask, box_kernel(5))
    assert np.array_equal(image, before)


@pytest.mark.parametrize(
    "bad",
    [np.ones((4, 5)), np.ones((2, 3)), np.array([[np.nan]]), np.zeros((0, 3)), np.ones(3)],
)
def test_kernel_validation(bad):
    with pytest.raises(ValueError):
        as_kernel(bad)


def test_argument_validation(rng):
    img = rng.random((10, 10))
    with pytest.raises(ValueError, match="all zeros"):
        masked_convolve(img, None, np.zeros((3, 3)))
    with pytest.raises(ValueError, match="does not match"):
        masked_convolve(img, np.ones((9, 10), bool), box_kernel(3))
    with pytest.raises(ValueError, match="valid paths"):
        masked_convolve(img, None, box_kernel(3), path="fft")
    with pytest.raises(ValueError, match="box"):
        masked_convolve(img, None, gaussian_kernel(1.0), path="box")
    with pytest.raises(ValueError, match="odd"):
        box_kernel(4)
    with pytest.raises(ValueError, match="0, 1"):
        masked_convolve(img, np.full((10, 10), 1.5), box_kernel(3))
    assert set(PATHS) == {"auto", "box", "pyramid", "separable", "filter2d"}


# ---------------------------------------------------------------- properties

_shapes = st.tuples(st.integers(3, 24), st.integers(3, 24))
_sizes = st.sampled_from([1, 3, 5, 9])


@st.composite
def _image_and_mask(draw):
    h, w = draw(_shapes)
    image = draw(hnp.arrays(np.float64, (h, w), elements=st.floats(0, 255, width=32)))
    mask = draw(hnp.arrays(np.bool_, (h, w)))
    return image, mask


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_image_and_mask(), size=_sizes, gaussian=st.booleans())
def test_result_within_range_of_valid_pixels(data, size, gaussian):
    image, mask = data
    k = gaussian_kernel(size / 3 + 0.3, size) if gaussian else box_kernel(size)
    out = masked_convolve(image, mask, k)
    defined = ~np.isnan(out)
    if mask.any():
        lo, hi = image[mask].min(), image[mask].max()
        assert np.all(out[defined] >= lo - 1e-3 - 1e-5 * hi)
        assert np.all(out[defined] <= hi + 1e-3 + 1e-5 * hi)
    else:
        assert not defined.any()


@settings(max_examples=60, deadline=None)
@given(data=_image_and_mask(), size=_sizes, value=st.floats(0, 65535, width=32))
@example(data=(np.zeros((3, 3)), np.eye(3, dtype=bool)), size=9, value=255.0)
def test_constant_image_stays_constant_where_defined(data, size, value):
    _, mask = data
    image = np.full(mask.shape, value)
    out = masked_convolve(image, mask, box_kernel(size))
    defined = ~np.isnan(out)
    np.testing.assert_allclose(out[defined], value, rtol=1e-5, atol=1e-3)
    # every mask pixel sees at least itself, so it is always defined
    assert defined[mask].all()


@settings(max_examples=40, deadline=None)
@given(data=_image_and_mask(), size=_sizes)
def test_equals_plain_convolution_where_window_fully_valid(data, size):
    image, mask = data
    k = box_kernel(size)
    out, w = masked_convolve(image, mask, k, return_weights=True)
    plain = convolve(image, k)
    full = w > 1 - 1e-6
    np.testing.assert_allclose(out[full], plain[full], rtol=1e-4, atol=1e-2)


# ---------------------------------------------------------------- signed kernels and modes


@pytest.mark.parametrize("mode", ["partial", "weighted"])
def test_partial_and_weighted_modes_match_loop(rng, mode):
    image = rng.random((14, 17, 2)) * 100
    mask = (rng.random((14, 17)) > 0.4) * (rng.random((14, 17)) if mode == "weighted" else 1.0)
    for k in [box_kernel(3), gaussian_kernel(1.0, 5), sharpen_kernel(), sobel_kernel("x")]:
        out, validity = masked_filter(image, mask, k, mode=mode)
        ref, ref_v = partial_ref(image, mask, k.array, real_valued=mode == "weighted")
        defined = ~np.isnan(ref)
        assert np.array_equal(~np.isnan(out), defined)
        np.testing.assert_allclose(out[defined], ref[defined], rtol=1e-4, atol=1e-3)
        np.testing.assert_allclose(validity, ref_v, atol=1e-6)


def test_normalized_mode_returns_certainty(rng):
    image = rng.random((20, 20))
    mask = rng.random((20, 20)) > 0.5
    out, validity = masked_filter(image, mask, sharpen_kernel())
    ref, cert = masked_convolve_ref(image, mask, sharpen_kernel().array)
    np.testing.assert_allclose(validity, cert, atol=1e-5)
    with pytest.raises(ValueError, match="valid modes"):
        masked_filter(image, mask, box_kernel(3), mode="fancy")
    assert MODES == ("normalized", "partial", "weighted")


def test_chain_uses_updated_validity(rng):
    image = rng.random((30, 30)) * 50
    mask = np.zeros((30, 30), bool)
    mask[5:25, 5:25] = True
    k = box_kernel(5)
    first, v1 = masked_filter(image, mask, k, mode="weighted")
    second, v2 = masked_filter(np.nan_to_num(first), v1, k, mode="weighted")
    ref1, rv1 = partial_ref(image, mask, k.array, real_valued=True)
    ref2, rv2 = partial_ref(np.nan_to_num(ref1), rv1, k.array, real_valued=True)
    ok = ~np.isnan(ref2)
    np.testing.assert_allclose(second[ok], ref2[ok], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(v2, rv2, atol=1e-6)
    assert (v2 <= 1).all() and (v2 > 0).sum() > mask.sum()


def test_zero_sum_kernels_answer_zero_on_constant_to_the_margin():
    mask = np.zeros((40, 40), bool)
    yy, xx = np.mgrid[0:40, 0:40]
    mask = (yy - 20) ** 2 + (xx - 20) ** 2 < 15**2
    image = np.where(mask, 150.0, 0.0)
    for k in [laplacian_kernel(), sobel_kernel("x"), sobel_kernel("y")]:
        masked = masked_convolve(image, mask, k)
        assert np.allclose(masked[mask], 0.0, atol=1e-3), k.name
        plain = convolve(image, k)
        assert np.abs(plain[mask]).max() > 100  # the unmasked edge response at the margin
    sharp = masked_convolve(image, mask, sharpen_kernel())
    assert np.allclose(sharp[mask], 150.0, atol=1e-3)


def test_named_kernels():
    assert named_kernel("sharpen").total == pytest.approx(1.0)
    assert named_kernel("laplacian").total == 0
    assert named_kernel("gaussian", sigma=3).shape == (19, 19)
    assert named_kernel("gaussian", size=51).name.startswith("gaussian 51 sigma 20.4")
    assert named_kernel("mean", size=5).is_box
    for bad in [dict(name="mean"), dict(name="blur", size=3), dict(name="sharpen", size=3),
                dict(name="laplacian", sigma=2.0)]:
        with pytest.raises(ValueError):
            named_kernel(**bad)
    # sobel x responds positively to a left-to-right increase
    ramp = np.tile(np.arange(10.0), (10, 1))
    assert convolve(ramp, sobel_kernel("x"))[5, 5] == pytest.approx(8.0)
    assert convolve(ramp.T, sobel_kernel("y"))[5, 5] == pytest.approx(8.0)


_signed = st.sampled_from(["sharpen", "laplacian", "sobel-x", "random"])


@settings(max_examples=60, deadline=None)
@given(data=_image_and_mask(), kind=_signed, seed=st.integers(0, 1000))
def test_signed_bounded_by_valid_range(data, kind, seed):
    image, mask = data
    if kind == "random":
        k = as_kernel(np.random.default_rng(seed).normal(size=(3, 3)))
    else:
        k = named_kernel(kind)
    out = masked_convolve(image, mask, k)
    if not mask.any():
        assert np.isnan(out).all()
        return
    lo, hi = image[mask].min(), image[mask].max()
    kp, kn = float(np.clip(k.array, 0, None).sum()), float(np.clip(-k.array, 0, None).sum())
    defined = ~np.isnan(out)
    tol = 1e-3 * (1 + hi) * (kp + kn)
    assert np.all(out[defined] >= kp * lo - kn * hi - tol)
    assert np.all(out[defined] <= kp * hi - kn * lo + tol)


@settings(max_examples=40, deadline=None)
@given(data=_image_and_mask(), kind=_signed)
def test_signed_equals_plain_where_fully_valid(data, kind):
    image, mask = data
    k = named_kernel(kind) if kind != "random" else as_kernel(np.arange(9.0).reshape(3, 3) - 4)
    out, w = masked_convolve(image, mask, k, return_weights=True)
    plain = convolve(image, k)
    full = w > 1 - 1e-6
    np.testing.assert_allclose(out[full], plain[full], rtol=1e-4, atol=2e-2)


@settings(max_examples=40, deadline=None)
@given(data=_image_and_mask(), kind=_signed, value=st.floats(0, 1000))
def test_signed_constant_image(data, kind, value):
    _, mask = data
    image = np.full(mask.shape, value)
    k = named_kernel(kind) if kind != "random" else as_kernel(np.arange(9.0).reshape(3, 3) - 3)
    out = masked_convolve(image, mask, k)
    defined = ~np.isnan(out)
    np.testing.assert_allclose(out[defined], k.total * value, rtol=1e-4, atol=1e-2)


def test_non_positive_kernel_is_the_negated_positive_one():
    rng = np.random.default_rng(3)
    img = rng.random((15, 16)).astype(np.float32)
    mask = np.zeros((15, 16), bool)
    mask[2:13, 3:14] = True
    k = -np.abs(rng.normal(size=(3, 3)))
    out = masked_convolve(img, mask, k)
    ref, _ = masked_convolve_ref(img, mask, k)
    defined = ~np.isnan(ref)
    np.testing.assert_array_equal(np.isnan(out), ~defined)
    np.testing.assert_allclose(out[defined], ref[defined], rtol=1e-5, atol=1e-5)
