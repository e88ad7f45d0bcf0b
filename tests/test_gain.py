"""``gain`` (I0 + gain * (I - mean)) and ``sigma="auto"``: Ben Graham's preprocessing through
masked convolution, and its preset."""

import math

import cv2
import numpy as np
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from retina_prep.cli.main import cli
from retina_prep.fov import fov_diameter
from retina_prep.kernels import AUTO_SIGMA_FRACTION, gaussian_kernel, make_kernel
from retina_prep.normalize import normalize_illumination

from .reference import masked_convolve_ref


def _disc(h, w, r):
    yy, xx = np.mgrid[:h, :w]
    return np.hypot(xx - w / 2, yy - h / 2) <= r


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), gain=st.sampled_from([0.5, 1.0, 2.5, 4.0]),
       dtype=st.sampled_from([np.uint8, np.uint16, np.float32]))
def test_gain_against_brute_force(seed, gain, dtype):
    """I0 + gain * (I - masked mean), rounded and clipped, outside the FOV the fill: the fast
    8/16-bit path and the float path against the brute-force masked convolution."""
    rng = np.random.default_rng(seed)
    h, w = 37, 41
    top = {np.uint8: 255, np.uint16: 65535, np.float32: 1.0}[dtype]
    img = (rng.random((h, w)) * top).astype(dtype) if dtype != np.float32 else \
        rng.random((h, w)).astype(np.float32)
    mask = _disc(h, w, 15)
    k = gaussian_kernel(2.0)
    got = normalize_illumination(img, mask, kernel=k, gain=gain, fill=3)
    unit = top / 255.0
    mean, _ = masked_convolve_ref(img.astype(np.float64), mask, k.array.astype(np.float64))
    want = 128 * unit + gain * (img.astype(np.float64) - mean)
    want = np.clip(want, 0, top)
    if dtype != np.float32:
        want = np.rint(want)
    tol = 1 if dtype != np.float32 else 1e-4
    assert np.all(np.abs(got[mask].astype(np.float64) - want[mask]) <= tol)
    assert np.all(got[~mask] == (np.float32(3 * unit) if dtype == np.float32 else round(3 * unit)))


def test_gain_one_is_the_plain_method():
    img = (np.random.default_rng(1).random((50, 60, 3)) * 255).astype(np.uint8)
    m = _disc(50, 60, 22)
    assert np.array_equal(normalize_illumination(img, m, window=9, gain=1.0),
                          normalize_illumination(img, m, window=9))


def test_gain_checks():
    img = np.zeros((20, 20), np.uint8)
    for bad in (0, -1, math.nan, math.inf):
        with pytest.raises(ValueError, match="gain"):
            normalize_illumination(img, None, window=3, gain=bad)
    with pytest.raises(ValueError, match="gain applies"):
        normalize_illumination(img, None, window=3, gain=2, method="standardize")


def test_sigma_auto_is_the_fov_diameter_over_60():
    m = _disc(600, 700, 270)
    k = make_kernel("gaussian", None, "auto", mask=m)
    want = AUTO_SIGMA_FRACTION * fov_diameter(m)
    assert math.isclose(want, 541 / 60, rel_tol=0.01)
    assert k.array.shape[0] == 2 * math.ceil(3 * want) + 1
    ref = make_kernel("gaussian", None, want, mask=m)
    assert np.allclose(k.array, ref.array)
    with pytest.raises(ValueError, match="sigma"):
        make_kernel("mean", None, "auto", mask=m)


def test_ben_graham_preset_end_to_end(tmp_path):
    """--config ben-graham on several images with -j 2: 128 outside the disc, the classic
    4x contrast inside, and flat to the margin (a constant disc comes out 128 everywhere)."""
    from retina_prep.synthetic import synthetic_fundus

    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        cv2.imwrite(str(src / f"e{i}.png"), synthetic_fundus(seed=i).image[..., ::-1])
    flat = np.zeros((400, 420, 3), np.uint8)
    flat[_disc(400, 420, 180)] = (160, 90, 40)
    cv2.imwrite(str(src / "flat.png"), flat[..., ::-1])
    r = CliRunner().invoke(cli, ["normalize", str(src), "-o", str(tmp_path / "out"),
                                 "--config", "ben-graham", "-j", "2"])
    assert r.exit_code == 0, r.output
    out = cv2.imread(str(tmp_path / "out" / "flat.png"))
    assert out[0, 0].tolist() == [128, 128, 128]
    inside = _disc(400, 420, 170)
    assert np.abs(out[inside].astype(int) - 128).max() <= 1
    e0 = cv2.imread(str(tmp_path / "out" / "e0.png"))
    assert e0 is not None and e0.std() > 10  # (vessels at 4x contrast)
