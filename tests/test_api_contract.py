"""The library's contract with a Python user: dtypes, value ranges, masks, layouts, NaN, alpha."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import retina_prep as rp
from retina_prep.errors import ValueRangeError

from .reference import masked_convolve_ref


def _scene(seed=0, shape=(40, 44)):
    rng = np.random.default_rng(seed)
    img = rng.integers(20, 230, shape + (3,)).astype(np.uint8)
    mask = np.zeros(shape, bool)
    mask[4:-4, 6:-6] = True
    return img, mask


def test_float_outside_unit_range_is_refused_with_advice():
    img, mask = _scene()
    with pytest.raises(ValueRangeError, match=r"value_range=\(0, 255\)"):
        rp.normalize_illumination(img.astype(np.float32), mask, window=7)


def test_float_with_value_range_matches_the_uint8_result():
    img, mask = _scene()
    u8 = rp.normalize_illumination(img, mask, window=7)
    f = rp.normalize_illumination(img.astype(np.float32), mask, window=7, value_range=(0, 255))
    assert f.dtype == np.float32
    assert np.abs(f - u8)[mask].max() <= 0.5 + 1e-3  # u8 is the same value rounded
    unit = rp.normalize_illumination(img / np.float32(255), mask, window=7)
    np.testing.assert_allclose(unit * 255, f, atol=1e-3)


def test_twelve_bit_data_in_uint16():
    img = np.full((30, 30), 1000, np.uint16)
    out = rp.normalize_illumination(img, None, window=5, value_range=(0, 4095))
    assert out.dtype == np.uint16
    assert int(out[15, 15]) == round(128 * 4095 / 255)
    assert int(out.max()) <= 4095


def test_byte_order_and_memory_layout_do_not_matter(tmp_path):
    """Big-endian arrays (FITS and raw readers give them) are the same data: a '>u2' image gives
    a uint16 result (it came out float64), equal to the native one; Fortran order, negative
    strides and read-only arrays too, and masks likewise."""
    from retina_prep.fov import estimate_fov
    from retina_prep.io import encode_image

    img, mask = _scene()
    deep = img.astype(np.uint16) * 257
    want = rp.normalize_illumination(deep, mask, window=7)
    got = rp.normalize_illumination(deep.astype(">u2"), mask.astype(">u2"), window=7)
    assert got.dtype == np.uint16 and np.array_equal(got, want)
    ro = np.asfortranarray(deep[::-1])
    ro.setflags(write=False)
    assert np.array_equal(rp.normalize_illumination(ro, mask[::-1], window=7), want[::-1])
    f = deep.astype(">f8") / 65535
    assert rp.normalize_illumination(f, mask, window=7).dtype == np.float64
    assert np.array_equal(estimate_fov(deep.astype(">u2")), estimate_fov(deep))
    assert encode_image(deep.astype(">u2")) == encode_image(deep)


def test_other_integer_types_need_a_range():
    img, mask = _scene()
    with pytest.raises(ValueRangeError, match="int32"):
        rp.normalize_illumination(img.astype(np.int32), mask, window=7)
    out = rp.normalize_illumination(img.astype(np.int32), mask, window=7, value_range=(0, 255))
    np.testing.assert_array_equal(out, rp.normalize_illumination(img, mask, window=7))


@pytest.mark.parametrize("form", ["bool", "01", "0255", "float"])
def test_mask_forms_agree(form):
    img, mask = _scene()
    given_mask = {"bool": mask, "01": mask.astype(np.uint8), "0255": mask.astype(np.uint8) * 255,
                  "float": mask.astype(np.float32)}[form]
    np.testing.assert_array_equal(rp.normalize_illumination(img, given_mask, window=7),
                                  rp.normalize_illumination(img, mask, window=7))


@pytest.mark.parametrize("bad, message", [
    (lambda m: m.astype(np.uint8) * 7, "only 0/1 or only 0/255"),
    (lambda m: np.zeros_like(m), "empty"),
    (lambda m: np.dstack([m, m, m]), r"must be \(H, W\)"),
    (lambda m: m.astype(np.float32) * 255, "finite weights in"),
    (lambda m: m[:-1], "does not match"),
])
def test_bad_masks_raise(bad, message):
    img, mask = _scene()
    with pytest.raises(ValueError, match=message):
        rp.normalize_illumination(img, bad(mask), window=7)


def test_channels_first_is_refused():
    img, _ = _scene()
    with pytest.raises(ValueError, match="channels-first"):
        rp.estimate_fov(np.moveaxis(img, -1, 0))
    with pytest.raises(ValueError, match="channels-first"):
        rp.masked_convolve(np.moveaxis(img, -1, 0), None, rp.box_kernel(3))


def test_one_way_in():
    img, mask = _scene()
    with pytest.raises(ValueError, match="not both"):
        rp.normalize_illumination(img, mask, window=7, kernel=rp.box_kernel(7))
    with pytest.raises(TypeError):
        rp.masked_convolve(img, mask)  # the kernel is required
    with pytest.raises(TypeError):
        rp.normalize_illumination(img)  # so is the mask (None for the whole image)


def test_rgba_alpha_passes_through():
    img, mask = _scene()
    alpha = np.random.default_rng(1).integers(0, 256, mask.shape).astype(np.uint8)
    out = rp.normalize_illumination(np.dstack([img, alpha]), mask, window=7)
    assert out.shape == img.shape[:2] + (4,)
    np.testing.assert_array_equal(out[..., 3], alpha)
    np.testing.assert_array_equal(out[..., :3], rp.normalize_illumination(img, mask, window=7))


def test_masked_filter_is_exported():
    img, mask = _scene()
    out, validity = rp.masked_filter(img[..., 1], mask, rp.box_kernel(3))
    assert out.shape == mask.shape and validity.shape == mask.shape


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, 19), st.integers(0, 21)), min_size=1, max_size=30),
       st.sampled_from([np.nan, np.inf, -np.inf]))
def test_nonfinite_pixels_are_invalid_not_spread(points, bad_value):
    """NaN/inf pixels count as outside the mask: the reference excludes them from the mask."""
    rng = np.random.default_rng(len(points))
    img = rng.random((20, 22)).astype(np.float32)
    mask = np.zeros((20, 22), bool)
    mask[2:18, 3:20] = True
    bad = np.zeros_like(mask)
    for y, x in points:
        bad[y, x] = True
    img[bad] = bad_value
    k = rp.box_kernel(5)
    out = rp.masked_convolve(img, mask, k)
    ref, _ = masked_convolve_ref(np.where(bad, 0, img), mask & ~bad, k.array)
    defined = ~np.isnan(ref)
    np.testing.assert_array_equal(np.isnan(out), ~defined)
    np.testing.assert_allclose(out[defined], ref[defined], atol=1e-5)
    norm = rp.normalize_illumination(img, mask, window=5)
    assert np.isfinite(norm).all()
    assert (norm[bad] == 0).all()  # fill, like outside the field of view


def test_lazy_package_gives_every_public_name_and_submodule():
    """`import retina_prep` imports no NumPy-heavy module until a name is used; every name in
    __all__ and the submodules (rp.geometry, ...) are reachable; unknown names raise."""
    import subprocess
    import sys

    code = ("import sys, retina_prep as rp; assert 'cv2' not in sys.modules; "
            "[getattr(rp, n) for n in rp.__all__]; rp.geometry.to_original; "
            "from retina_prep import *; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    with pytest.raises(AttributeError, match="no attribute"):
        rp.no_such_name  # noqa: B018
