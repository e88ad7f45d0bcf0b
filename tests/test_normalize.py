import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retina_prep.metrics import margin_distance
from retina_prep.normalize import (
    AUTO_WINDOW_FRACTION,
    dtype_scale,
    make_kernel,
    normalize_illumination,
    resolve_window,
)
from retina_prep.synthetic import synthetic_fundus

from .reference import masked_convolve_ref


def _disc(shape, r_frac=0.45):
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    return (yy - h / 2) ** 2 + (xx - w / 2) ** 2 < (r_frac * min(h, w)) ** 2


def test_matches_brute_force_within_one_gray_level(rng):
    image = rng.integers(0, 256, (48, 52, 3)).astype(np.uint8)
    mask = _disc((48, 52)) & (rng.random((48, 52)) > 0.1)
    out = normalize_illumination(image, mask, window=9)
    mean, _ = masked_convolve_ref(image, mask, np.ones((9, 9)) / 81)
    ref = np.clip(np.rint(image - mean + 128), 0, 255)
    ref[~mask] = 0
    assert out.dtype == np.uint8
    assert np.abs(out.astype(int) - ref).max() <= 1


@settings(max_examples=30, deadline=None)
@given(value=st.integers(0, 255), window=st.sampled_from([3, 7, 15, 31]),
       r=st.floats(0.2, 0.7))
def test_constant_image_stays_constant_to_the_margin(value, window, r):
    mask = _disc((60, 64), r)
    image = np.full((60, 64, 3), value, np.uint8)
    out = normalize_illumination(image, mask, window=window, target=128)
    assert np.all(out[mask] == 128)
    assert np.all(out[~mask] == 0)


def test_synthetic_field_is_flattened_and_unmasked_shows_halo():
    s = synthetic_fundus((300, 290), seed=3, background=5, vessels=False, noise=0.0)
    d = margin_distance(s.mask)
    outer = s.mask & (d < 5)
    masked = normalize_illumination(s.image, s.mask, window=25).astype(float)
    plain = normalize_illumination(s.image, s.mask, window=25, ignore_mask=True).astype(float)
    # masked: flat up to the margin; plain: the black background drags the mean down
    assert np.abs(masked[outer] - 128).mean() < 4
    assert np.abs(plain[outer] - 128).mean() > 25
    # in the interior both agree with flat
    inner = s.mask & (d > 30)
    assert np.abs(masked[inner] - 128).mean() < 2
    assert np.abs(plain[inner] - 128).mean() < 2
    # and the input was far from flat
    assert s.image[s.mask].std(axis=0).min() > 10


def test_sixteen_bit_scales_target(rng):
    image = np.full((30, 30), 1000, np.uint16)
    mask = _disc((30, 30))
    out = normalize_illumination(image, mask, window=5)
    assert out.dtype == np.uint16
    assert np.all(out[mask] == 128 * 257)
    assert dtype_scale(np.uint16) == 257.0


def test_float_images_are_unit_range():
    image = np.full((20, 20, 3), 0.2, np.float32)
    out = normalize_illumination(image, None, window=5)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, 128 / 255, atol=1e-6)


def test_clipped_to_dtype_range():
    image = np.zeros((21, 21), np.uint8)
    image[10, 10] = 255
    out = normalize_illumination(image, None, window=3, target=200)
    assert out.max() == 255 and out.min() >= 0


def test_gaussian_kernel_and_output_dtype(rng):
    image = rng.integers(0, 256, (40, 40, 3)).astype(np.uint8)
    out = normalize_illumination(image, _disc((40, 40)), kernel=make_kernel("gaussian", 11, 3.0),
                                 output_dtype=np.uint16)
    assert out.dtype == np.uint16


def test_fill_outside_fov():
    mask = _disc((20, 20))
    out = normalize_illumination(np.full((20, 20), 50, np.uint8), mask, window=3, fill=7)
    assert np.all(out[~mask] == 7)


def test_window_resolution():
    mask = _disc((584, 565), 0.46)
    w = resolve_window("auto", mask)
    assert w % 2 == 1 and abs(w - AUTO_WINDOW_FRACTION * 2 * 0.46 * 565) <= 2
    assert resolve_window(21) == 21 and resolve_window("31") == 31
    for bad in [4, 0, -3, "x", 2.5, True]:
        with pytest.raises(ValueError):
            resolve_window(bad)
    with pytest.raises(ValueError, match="mask"):
        resolve_window("auto", None)


def test_make_kernel_validation():
    with pytest.raises(ValueError, match="valid kernels"):
        make_kernel("median", 5)
    with pytest.raises(ValueError, match="sigma"):
        make_kernel("mean", 5, sigma=2)
    k = make_kernel("gaussian", 51)
    assert k.shape == (51, 51) and "sigma 20.4" in k.name


def test_input_not_mutated(rng):
    image = rng.integers(0, 256, (20, 20, 3)).astype(np.uint8)
    mask = _disc((20, 20))
    image.setflags(write=False)
    mask.setflags(write=False)
    before = image.copy()
    normalize_illumination(image, mask, window=5)
    assert np.array_equal(before, image)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), window=st.sampled_from([3, 9, 21]),
       ignore=st.booleans(), gaussian=st.booleans(), dtype=st.sampled_from(["u8", "u16"]),
       shape=st.tuples(st.integers(5, 60), st.integers(5, 60)))
def test_rounding_rule_exact_except_at_ties(seed, window, ignore, gaussian, dtype, shape):
    """The documented rounding rule: the output is I - mean + I0 rounded to the nearest integer
    and saturated, with the mean of the brute-force float64 reference; it may differ by 1 only
    where I - mean + I0 lies within 1e-3 of a half-integer (float32 arithmetic decides ties)."""
    rng = np.random.default_rng(seed)
    top = 255 if dtype == "u8" else 65535
    image = rng.integers(0, top + 1, shape + (3,)).astype(np.uint8 if dtype == "u8" else np.uint16)
    mask = _disc(shape, 0.6) | (rng.random(shape) > 0.7)
    if gaussian:
        kernel = make_kernel("gaussian", window, sigma=window / 4)
    else:
        kernel = make_kernel("mean", window)
    out = normalize_illumination(image, mask, kernel=kernel, ignore_mask=ignore)
    mean, _ = masked_convolve_ref(image, np.ones(shape, bool) if ignore else mask, kernel.array)
    exact = image - mean + 128 * (top / 255)
    ref = np.clip(np.rint(exact), 0, top)
    ref[~mask] = 0
    diff = np.abs(out.astype(np.int64) - ref)
    assert diff.max() <= 1
    near_tie = np.abs(np.abs(exact - np.floor(exact)) - 0.5) < 1e-3 * (top / 255)
    assert not (diff[~near_tie & mask[..., None]] > 0).any()


@pytest.mark.parametrize("kernel", [make_kernel("mean", 41), make_kernel("gaussian", 31),
                                    __import__("retina_prep").gaussian_kernel(12.0)],
                         ids=["box", "gauss", "cascade"])
def test_unmasked_fast_path_is_the_rectangle_normalized_mean(rng, kernel):
    """ignore_mask runs one plain filter, divided by the image rectangle's certainty near the
    edges only: the same as the general path with every pixel valid (filter2D)."""
    from retina_prep.convolution import masked_convolve

    image = rng.integers(0, 256, (70, 83, 3)).astype(np.uint8)
    mask = np.ones((70, 83), bool)
    out = normalize_illumination(image, mask, kernel=kernel, ignore_mask=True)
    mean = masked_convolve(image, None, kernel, path="filter2d")
    ref = np.clip(np.rint(image - mean + 128), 0, 255)
    assert np.abs(out.astype(int) - ref).max() <= 1
    assert (out.astype(int) != ref).mean() < 1e-3
