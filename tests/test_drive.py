"""Checks on the real DRIVE data; skipped when it is absent."""

import numpy as np
from click.testing import CliRunner

from retina_prep.cli.main import cli
from retina_prep.io import read_image, read_mask
from retina_prep.metrics import DEFAULT_BANDS, margin_bias_profile

from .conftest import REPO


def test_drive_preset_bias_within_3_gray_levels(drive, tmp_path):
    out = tmp_path / "out"
    r = CliRunner().invoke(cli, ["normalize", str(drive), "-o", str(out), "-q",
                                 "--config", str(REPO / "configs" / "drive.toml")])
    assert r.exit_code == 0, r.output
    sums, counts = 0, 0
    outputs = sorted(out.rglob("*.png"))
    assert len(outputs) == 40
    for p in outputs:
        split = p.parent.name
        stem = p.stem
        num = stem.split("_")[0]
        mask = read_mask(drive / split / "mask" / f"{stem}_mask.gif")
        labels = read_mask(drive / split / "1st_manual" / f"{num}_manual1.gif")
        img = read_image(p)
        region = img.max(axis=-1) > 0
        s, c = margin_bias_profile(img, mask, target=128, region=region & mask, exclude=labels)
        sums, counts = sums + s, counts + c
    bias = sums / np.maximum(counts, 1)[:, None]
    for (lo, hi), b, n in zip(DEFAULT_BANDS, bias, counts):
        if lo >= 3 and n:
            assert np.all(np.abs(b) <= 3), f"band {lo}-{hi}: {b}"


def test_signed_kernels_no_ring_at_drive_margin(drive, tmp_path):
    """Sharpen and Laplacian: masked filtering stays calm at the margin; unmasked rings."""
    img_path = drive / "test" / "images" / "01_test.tif"
    mask = read_mask(drive / "test" / "mask" / "01_test_mask.gif")
    img = read_image(img_path).astype(float)
    from retina_prep.fov import margin_distance

    d = margin_distance(mask)
    band = mask & (d < 2)
    inner = mask & (d > 20)
    results = {}
    for kernel, ref in [("sharpen", img), ("laplacian", 128.0)]:
        res = results[kernel] = {}
        for name, extra in [("masked", []), ("plain", ["--ignore-mask"])]:
            out = tmp_path / f"{kernel}_{name}"
            r = CliRunner().invoke(cli, ["filter", str(img_path), "-o", str(out), "-q",
                                         "--kernel", kernel, "--rim", "none", *extra])
            assert r.exit_code == 0, r.output
            o = read_image(out / "01_test.png").astype(float)
            res[name] = np.abs(o - ref)
        # no blow-up: the masked response at the margin stays within a few times the interior's
        assert res["masked"][band].mean() < 6 * res["masked"][inner].mean()
        assert res["masked"][band].mean() <= res["plain"][band].mean() + 3
    # sharpen: the unmasked ring (background pulled in by the negative ring) is clearly stronger
    sharpen = results["sharpen"]
    assert sharpen["masked"][band].mean() < 0.6 * sharpen["plain"][band].mean()


def test_order_one_bounds_on_all_drive_images(drive):
    """First order, official masks eroded 6 px: every band from 3 px inward within +-2 gray levels
    at box 21 and within +-3 up to box 51 (order 0 exceeds 3 beyond box 21)."""
    from retina_prep.fov import erode_mask
    from retina_prep.kernels import box_kernel
    from retina_prep.normalize import normalize_illumination

    items = []
    for split in ("training", "test"):
        for p in sorted((drive / split / "images").glob("*.tif")):
            num = p.stem.split("_")[0]
            items.append((read_image(p), read_mask(drive / split / "mask" / f"{p.stem}_mask.gif"),
                          read_mask(drive / split / "1st_manual" / f"{num}_manual1.gif")))
    assert len(items) == 40
    for window, bound in ((21, 2.0), (51, 3.0)):
        sums = counts = 0
        for img, official, labels in items:
            m = erode_mask(official, 6)
            out = normalize_illumination(img, m, kernel=box_kernel(window), order=1)
            s, c = margin_bias_profile(out, official, target=128, region=m, exclude=labels)
            sums, counts = sums + s, counts + c
        bias = sums / np.maximum(counts, 1)[:, None]
        for (lo, hi), b, n in zip(DEFAULT_BANDS, bias, counts):
            if lo >= 3 and n:
                assert np.all(np.abs(b) <= bound), f"box {window}, band {lo}-{hi}: {b}"
