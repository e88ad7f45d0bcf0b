import json

import numpy as np
import pytest
from click.testing import CliRunner

from retina_prep.cli.main import cli
from retina_prep.convolution import masked_filter
from retina_prep.fov import feather_mask, margin_distance
from retina_prep.io import read_image, read_mask, write_image
from retina_prep.kernels import named_kernel
from retina_prep.normalize import normalize_illumination
from retina_prep.synthetic import synthetic_fundus

from .helpers import make_drive
from .reference import masked_convolve_ref


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.mark.parametrize("kernel, extra", [
    ("gaussian", ["--sigma", "3", "--size", "11"]),
    ("mean", ["--size", "7"]),
    ("sharpen", []),
    ("laplacian", []),
    ("sobel-x", []),
])
def test_filter_matches_reference(tmp_path, kernel, extra):
    root = make_drive(tmp_path / "D", 1, 0)
    out = tmp_path / "out"
    r = invoke("filter", root / "training", "-o", out, "--kernel", kernel, "--rim", "none", *extra)
    assert r.exit_code == 0, r.output
    img = read_image(root / "training/images/21_training.tif")
    mask = read_mask(root / "training/mask/21_training_mask.gif")
    got = read_image(out / "21_training.png").astype(float)
    size = int(extra[extra.index("--size") + 1]) if "--size" in extra else None
    sigma = float(extra[extra.index("--sigma") + 1]) if "--sigma" in extra else None
    k = named_kernel(kernel, size=size, sigma=sigma)
    ref, _ = masked_convolve_ref(img, mask, k.array)
    ref = ref + (128 if abs(k.total) < 1e-9 else 0)
    ref = np.clip(np.rint(ref), 0, 255)
    ref[~mask] = 0
    assert np.abs(got - ref).max() <= 1


def test_filter_weights_modes_and_float(tmp_path):
    root = make_drive(tmp_path / "D", 1, 0)
    out = tmp_path / "out"
    r = invoke("filter", root / "training", "-o", out, "--kernel", "mean", "--size", "9",
               "--mode", "weighted", "--write-weights")
    assert r.exit_code == 0, r.output
    w = read_image(out / "21_training_weights.png")
    assert w.dtype == np.uint16 and w.max() == 65535 and w.min() == 0
    r = invoke("filter", root / "training", "-o", tmp_path / "f", "--kernel", "laplacian",
               "--dtype", "float32", "--format", "tif", "--write-weights")
    assert r.exit_code == 0, r.output
    f = read_image(tmp_path / "f" / "21_training.tif")
    assert f.dtype == np.float32
    wf = read_image(tmp_path / "f" / "21_training_weights.tif")
    assert wf.dtype == np.float32 and 0 <= wf.min() and wf.max() <= 1
    r = invoke("filter", root / "training", "-o", tmp_path / "g", "--kernel", "sharpen",
               "--dtype", "float32")
    assert r.exit_code == 2 and "tif" in r.output


def test_custom_kernel_file_and_config(tmp_path):
    root = make_drive(tmp_path / "D", 1, 0)
    kfile = tmp_path / "k.csv"
    kfile.write_text("# a blur\n1, 2, 1\n2, 4, 2\n1, 2, 1\n")
    r = invoke("filter", root / "training", "-o", tmp_path / "a", "--kernel", kfile)
    assert r.exit_code == 0, r.output
    np.save(tmp_path / "k.npy", np.array([[1.0, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16)
    r = invoke("filter", root / "training", "-o", tmp_path / "b", "--kernel", tmp_path / "k.npy")
    assert r.exit_code == 0, r.output
    cfg = tmp_path / "c.toml"
    cfg.write_text("[filter]\nkernel = [[1, 2, 1], [2, 4, 2], [1, 2, 1]]\n")
    r = invoke("filter", root / "training", "-o", tmp_path / "c", "--config", cfg)
    assert r.exit_code == 0, r.output
    a = read_image(tmp_path / "a" / "21_training.png").astype(int)
    b = read_image(tmp_path / "b" / "21_training.png").astype(int)
    c = read_image(tmp_path / "c" / "21_training.png").astype(int)
    # the file and the inline matrix give the same kernel; eq. 5 scales by its sum (16)
    assert np.array_equal(a, c)
    inside = read_mask(root / "training/mask/21_training_mask.gif")
    assert np.all(a[inside] >= b[inside]) and np.all(a[inside] == np.clip(a[inside], 0, 255))
    assert (a[inside] == 255).mean() > 0.5 and (b[inside] < 255).mean() > 0.9


@pytest.mark.parametrize("content, message", [
    ("1 2\n3 4\n", "odd"), ("1 2 3\n4 5\n", "different lengths"), ("0 0 0\n", "all zeros"),
    ("1 x 1\n", "could not convert"), ("nan 1 1\n", "non-finite"),
])
def test_bad_kernel_files(tmp_path, content, message):
    kfile = tmp_path / "k.txt"
    kfile.write_text(content)
    write_image(tmp_path / "x.png", np.full((20, 20, 3), 50, np.uint8))
    r = invoke("filter", tmp_path / "x.png", "-o", tmp_path / "o", "--kernel", kfile, "--auto-mask")
    assert r.exit_code == 2 and message in r.output and "k.txt" in r.output


def test_kernel_files_that_are_too_big_or_special(tmp_path):
    """A kernel file is input like an image: the size cap of the named kernels (4001 px a side),
    no FIFO (np.load would wait on it forever), not a folder, not binary junk as text."""
    import os

    write_image(tmp_path / "x.png", np.full((20, 20, 3), 50, np.uint8))
    np.save(tmp_path / "tall.npy", np.ones((4003, 1)))
    (tmp_path / "wide.txt").write_text(" ".join(["1"] * 4003) + "\n")
    os.mkfifo(tmp_path / "fifo.npy")
    (tmp_path / "junk.txt").write_bytes(b"\xff\xfe\x00binary")
    for name, msg in [("tall.npy", "4003x1 is above the largest kernel"),
                      ("wide.txt", "1x4003 is above the largest kernel"),
                      ("fifo.npy", "not a regular file"), ("junk.txt", "not a valid kernel")]:
        r = invoke("filter", tmp_path / "x.png", "-o", tmp_path / "o", "--kernel",
                   tmp_path / name, "--auto-mask")
        assert r.exit_code == 2 and msg in r.output and name in r.output, (name, r.output)
    assert not (tmp_path / "o").exists()


def test_kernel_option_errors(tmp_path):
    write_image(tmp_path / "x.png", np.full((20, 20, 3), 50, np.uint8))
    for args, msg in [([], "Missing option '--kernel'"),
                      (["--kernel", "blur"], "neither a kernel name"),
                      (["--kernel", "sharpen", "--window", "7"], "takes no other size"),
                      (["--kernel", "sharpen", "--sigma", "2"], "sigma"),
                      (["--kernel", "mean", "--size", "4"], "odd")]:
        r = invoke("filter", tmp_path / "x.png", "-o", tmp_path / "o", *args)
        assert r.exit_code == 2 and msg in r.output, (args, r.output)


def test_window_is_one_option_with_auto(tmp_path):
    """filter takes --window N|auto like normalize (--size is an alias); mean defaults to auto."""
    root = make_drive(tmp_path / "D", 1, 0)
    outs = {}
    for name, args in [("auto", ["--kernel", "mean"]), ("w", ["--kernel", "mean", "--window", "auto"]),
                       ("size", ["--kernel", "mean", "--size", "21"])]:
        r = invoke("filter", root / "training", "-o", tmp_path / name, *args, "-j", "2")
        assert r.exit_code == 0, r.output
        rec = [json.loads(x) for x in (tmp_path / name / "manifest.jsonl").open()][1]
        outs[name] = rec["params"]["kernel"]
    assert outs["auto"] == outs["w"] and outs["auto"].startswith("box")
    assert outs["size"] == "box 21"
    cfg = tmp_path / "c.toml"
    cfg.write_text("window = 31\n")  # a shared config key every command understands
    for cmd in ("filter", "normalize"):
        extra = ["--kernel", "mean"] if cmd == "filter" else []
        r = invoke(cmd, root / "training", "-o", tmp_path / f"cfg_{cmd}", "--config", cfg, *extra)
        assert r.exit_code == 0, r.output


def test_masked_gaussian_of_constant_is_constant_to_the_margin():
    s = synthetic_fundus((200, 200), seed=1, vessels=False, noise=0)
    img = np.where(s.mask[..., None], 120, 0).astype(np.uint8)
    k = named_kernel("gaussian", sigma=8)
    masked, _ = masked_filter(img, s.mask, k)
    plain, _ = masked_filter(img, None, k)
    assert np.allclose(masked[s.mask], 120, atol=1e-3)
    d = margin_distance(s.mask)
    assert plain[s.mask & (d < 2)].mean() < 80  # the unmasked filter darkens the margin


def test_feather_mask_and_soft_mask_paths():
    m = np.zeros((30, 30), bool)
    m[5:25, 5:25] = True
    f = feather_mask(m, 4)
    assert f.dtype == np.float32 and f[~m].max() == 0 and f[15, 15] == 1
    assert 0 < f[5, 15] < 1
    assert np.array_equal(feather_mask(m, 0), m.astype(np.float32))
    img = np.full((30, 30, 3), 77, np.uint8)
    out = normalize_illumination(img, f, window=5)
    assert np.all(out[m] == 128) and np.all(out[~m] == 0)
    with pytest.raises(ValueError):
        feather_mask(m, -1)


def test_standardize_method(tmp_path):
    s = synthetic_fundus((200, 200), seed=2, background=5)
    out = normalize_illumination(s.image, s.mask, window=21, method="standardize", scale=20)
    inside = out[s.mask].astype(float)
    assert abs(inside.mean() - 128) < 6
    with pytest.raises(ValueError, match="valid methods"):
        normalize_illumination(s.image, s.mask, window=21, method="zscore")
    write_image(tmp_path / "in" / "e.png", s.image)
    write_image(tmp_path / "in" / "e_mask.png", s.mask.astype(np.uint8) * 255)
    r = invoke("normalize", tmp_path / "in", "-o", tmp_path / "o", "--method", "standardize",
               "--scale", 20, "--window", 21, "--feather", 3)
    assert r.exit_code == 0, r.output


def test_standardize_matches_brute_force(rng):
    image = rng.integers(0, 256, (30, 32)).astype(np.uint8)
    mask = np.zeros((30, 32), bool)
    mask[3:27, 2:30] = True
    out = normalize_illumination(image, mask, window=7, method="standardize", scale=32)
    box = np.ones((7, 7)) / 49
    mu, _ = masked_convolve_ref(image, mask, box)
    sq, _ = masked_convolve_ref(image.astype(float) ** 2, mask, box)
    sd = np.sqrt(np.maximum(sq - mu**2, 0))
    ref = np.clip(np.rint(128 + 32 * (image - mu) / np.maximum(sd, 2.0)), 0, 255)
    ref[~mask] = 0
    assert np.abs(out.astype(int) - ref).max() <= 1


def test_filter_crop_resize_with_weights_mask_and_bounds(tmp_path):
    """filter cuts like normalize: image, weights, mask all N x N, the mask's outside at the
    fill; the bounds file gets a row per image (-j 2)."""
    import csv

    from retina_prep.io import read_image, read_mask

    from .helpers import make_drive

    root = make_drive(tmp_path / "DRIVE", 2, 1)
    r = CliRunner().invoke(cli, ["filter", str(root), "-o", str(tmp_path / "out"), "--kernel",
                                 "gaussian", "--sigma", "2", "--crop", "fov", "--resize", "48",
                                 "--write-weights", "--write-mask", "--bounds",
                                 str(tmp_path / "b.csv"), "-j", "2"])
    assert r.exit_code == 0, r.output
    images = [p for p in (tmp_path / "out").rglob("*.png")
              if not p.stem.endswith(("_mask", "_weights"))]
    assert len(images) == 3
    for im in images:
        m = read_mask(im.with_name(im.stem + "_mask.png"))
        w = read_image(im.with_name(im.stem + "_weights.png"))
        assert read_image(im).shape[:2] == m.shape == w.shape == (48, 48)
        assert (read_image(im)[~m] == 0).all()
    assert len(list(csv.DictReader(open(tmp_path / "b.csv")))) == 3


def test_cut_float_output_pads_with_the_fill_it_already_has(tmp_path):
    """A float32 filter output keeps its units (8-bit values): the padding where the frame cuts
    the disc and the outside of the cut mask hold the same fill as the uncut output."""
    from retina_prep.io import read_image, read_mask

    s = synthetic_fundus((90, 120), seed=2, radius=0.6)  # the frame cuts the disc
    write_image(tmp_path / "eye.png", s.image)
    write_image(tmp_path / "eye_mask.png", s.mask.astype(np.uint8) * 255)
    r = CliRunner().invoke(cli, ["filter", str(tmp_path / "eye.png"), "--mask",
                                 str(tmp_path / "eye_mask.png"), "-o", str(tmp_path / "out"),
                                 "--kernel", "mean", "--window", "5", "--fill", "40", "--dtype",
                                 "float32", "--format", "tif", "--crop", "fov", "--write-mask"])
    assert r.exit_code == 0, r.output
    out = read_image(tmp_path / "out" / "eye.tif")
    m = read_mask(tmp_path / "out" / "eye_mask.png")
    assert out.shape[:2] == m.shape and out.shape[0] == out.shape[1] > 90
    assert np.allclose(out[~m], 40.0)
