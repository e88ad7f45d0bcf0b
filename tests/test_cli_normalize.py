import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from retina_prep import __version__
from retina_prep.cli.main import cli
from retina_prep.io import read_image, read_mask, write_image

from .helpers import make_drive, make_image, make_mask
from .reference import masked_convolve_ref


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def test_version_and_help():
    r = invoke("--version")
    assert r.exit_code == 0 and __version__ in r.output
    r = invoke("normalize", "--help")
    assert r.exit_code == 0 and "Examples" in r.output and "--window" in r.output


def test_python_dash_m():
    r = subprocess.run([sys.executable, "-m", "retina_prep", "--version"], capture_output=True,
                       text=True)
    assert r.returncode == 0 and __version__ in r.stdout


def test_drive_tree_end_to_end(tmp_path):
    root = make_drive(tmp_path / "DRIVE")
    out = tmp_path / "out"
    r = invoke("normalize", root, "-o", out, "--window", 15, "--erode", 2)
    assert r.exit_code == 0, r.output
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert written == ["test/01_test.png", "test/02_test.png",
                       "training/21_training.png", "training/22_training.png"]
    assert "4 done, 0 failed" in r.output


def test_output_matches_brute_force(tmp_path):
    root = make_drive(tmp_path / "DRIVE", 1, 0)
    out = tmp_path / "out"
    assert invoke("normalize", root, "-o", out, "--window", 9, "--rim", "none").exit_code == 0
    img = read_image(root / "training/images/21_training.tif")
    mask = read_mask(root / "training/mask/21_training_mask.gif")
    got = read_image(out / "training/21_training.png").astype(int)
    mean, _ = masked_convolve_ref(img, mask, np.ones((9, 9)) / 81)
    ref = np.clip(np.rint(img - mean + 128), 0, 255)
    ref[~mask] = 0
    assert np.abs(got - ref).max() <= 1


def test_overwrite_refused_then_allowed(tmp_path):
    root = make_drive(tmp_path / "D", 1, 0)
    out = tmp_path / "out"
    assert invoke("normalize", root, "-o", out).exit_code == 0
    before = (out / "training/21_training.png").stat().st_mtime_ns
    r = invoke("normalize", root, "-o", out)
    assert r.exit_code == 1 and "--overwrite" in r.output
    assert (out / "training/21_training.png").stat().st_mtime_ns == before
    assert invoke("normalize", root, "-o", out, "--overwrite").exit_code == 0


def test_bad_file_does_not_stop_batch(tmp_path):
    d = tmp_path / "in"
    make_image(d / "a.png", seed=1)
    (d / "b.png").write_bytes(b"")
    (d / "c.tif").write_text("this is text, not a TIFF")
    make_image(d / "e.png", seed=2)
    out = tmp_path / "out"
    r = invoke("normalize", d, "-o", out, "--window", 9)
    assert r.exit_code == 1
    assert sorted(p.name for p in out.glob("*.png")) == ["a.png", "e.png"]
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 2
    assert "b.png" in errors[0] and "empty" in errors[0]
    assert "c.tif" in errors[1] and "decode" in errors[1]
    assert "2 done, 2 failed" in r.output


def test_mask_size_mismatch_and_empty_mask(tmp_path):
    d = tmp_path / "in"
    m = make_image(d / "a.png", seed=1)
    make_mask(d / "a_mask.png", np.ones((10, 10), bool))
    make_image(d / "b.png", seed=2)
    make_mask(d / "b_mask.png", np.zeros_like(m))
    make_image(d / "c.png", seed=3)
    make_mask(d / "c_mask.png", m)
    out = tmp_path / "out"
    r = invoke("normalize", d, "-o", out, "--window", 9)
    assert r.exit_code == 1
    assert "a_mask.png is 10x10 px but the image is 110x120 px" in r.output
    assert "b_mask.png: mask is empty" in r.output
    assert [p.name for p in out.glob("*.png")] == ["c.png"]


def test_missing_mask_is_estimated_with_warning(tmp_path):
    make_image(tmp_path / "in" / "x.png")
    r = invoke("normalize", tmp_path / "in", "-o", tmp_path / "out", "--window", 9)
    assert r.exit_code == 0
    assert "warning:" in r.output and "estimated" in r.output
    r = invoke("normalize", tmp_path / "in", "-o", tmp_path / "out2", "--auto-mask")
    assert r.exit_code == 0 and "warning" not in r.output


def test_single_image_with_mask_option_and_tif(tmp_path):
    m = make_image(tmp_path / "eye.png")
    make_mask(tmp_path / "fov.png", m)
    r = invoke("normalize", tmp_path / "eye.png", "--mask", tmp_path / "fov.png", "-o",
               tmp_path / "o", "--format", "tif", "--kernel", "gaussian", "--sigma", 4,
               "--window", 13)
    assert r.exit_code == 0, r.output
    out = read_image(tmp_path / "o" / "eye.tif")
    assert out.dtype == np.uint8 and np.all(out[~m] == 0)


def test_ignore_mask_output_still_cut_to_fov(tmp_path):
    m = make_image(tmp_path / "in" / "eye.png")
    make_mask(tmp_path / "in" / "eye_mask.png", m)
    assert invoke("normalize", tmp_path / "in", "-o", tmp_path / "o", "--ignore-mask").exit_code == 0
    out = read_image(tmp_path / "o" / "eye.png")
    assert np.all(out[~m] == 0) and out[m].mean() > 50


@pytest.mark.parametrize(
    "args, message",
    [
        (["--window", "4"], "odd"),
        (["--window", "big"], "odd"),
        (["--erode", "-2"], "negative"),
        (["--kernel", "median"], "median"),
        (["--sigma", "3"], "gaussian kernel only"),
        (["--format", "jpg"], "jpg"),
    ],
)
def test_usage_errors_exit_2(tmp_path, args, message):
    make_image(tmp_path / "x.png")
    r = invoke("normalize", tmp_path / "x.png", "-o", tmp_path / "o", *args)
    assert r.exit_code == 2 and message in r.output
    assert not (tmp_path / "o").exists()


def test_missing_input_is_usage_error(tmp_path):
    r = invoke("normalize", tmp_path / "nope.png", "-o", tmp_path / "o")
    assert r.exit_code == 2 and "nope.png" in r.output


def test_config_file_and_override(tmp_path):
    make_image(tmp_path / "in" / "x.png")
    cfg = tmp_path / "c.toml"
    cfg.write_text('[normalize]\nwindow = 4\n')
    r = invoke("normalize", tmp_path / "in", "-o", tmp_path / "o", "--config", cfg)
    assert r.exit_code == 2 and "odd" in r.output
    # the flag wins over the file
    r = invoke("normalize", tmp_path / "in", "-o", tmp_path / "o", "--config", cfg, "--window", 5)
    assert r.exit_code == 0, r.output
    cfg.write_text('windw = 5\n')
    r = invoke("normalize", tmp_path / "in", "-o", tmp_path / "o2", "--config", cfg)
    assert r.exit_code == 2 and "unknown key 'windw'" in r.output


def test_shipped_configs_are_valid(tmp_path):
    from .conftest import REPO

    make_image(tmp_path / "in" / "x.png")
    for name in ["default.toml", "drive.toml"]:
        r = invoke("normalize", tmp_path / "in", "-o", tmp_path / name, "--auto-mask",
                   "--config", REPO / "configs" / name)
        assert r.exit_code == 0, r.output


def test_input_never_overwritten(tmp_path):
    d = tmp_path / "in"
    make_image(d / "x.png")
    data = (d / "x.png").read_bytes()
    r = invoke("normalize", d / "x.png", "-o", d, "--overwrite")
    assert r.exit_code == 1 and "overwrite an input" in r.output
    assert (d / "x.png").read_bytes() == data


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_stops(tmp_path):
    make_image(tmp_path / "x.png")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    r = invoke("normalize", tmp_path / "x.png", "-o", ro / "sub")
    assert r.exit_code == 1 and "cannot create output folder" in r.output


def test_output_that_is_a_file_stops(tmp_path):
    make_image(tmp_path / "x.png")
    (tmp_path / "taken").write_text("a file")
    r = invoke("normalize", tmp_path / "x.png", "-o", tmp_path / "taken" / "sub")
    assert r.exit_code == 1 and "cannot create output folder" in r.output


def test_sample_data_runs(tmp_path):
    from .conftest import REPO

    src = tmp_path / "sample_data"
    shutil.copytree(REPO / "sample_data", src)
    r = invoke("normalize", src, "-o", tmp_path / "out")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == [
        "retina_cc0.png", "synthetic_01.png", "synthetic_02.png"]


def test_png_level_changes_size_not_pixels(tmp_path):
    root = make_drive(tmp_path / "DRIVE", 1, 1)
    sizes, pixels = {}, {}
    for level in [None, 0, 9]:
        out = tmp_path / f"out{level}"
        args = ["normalize", root, "-o", out, "--window", 15, "-j", 2]
        r = invoke(*args, *(["--png-level", level] if level is not None else []))
        assert r.exit_code == 0, r.output
        files = sorted(out.rglob("*.png"))
        assert len(files) == 2
        sizes[level] = sum(f.stat().st_size for f in files)
        pixels[level] = [read_image(f) for f in files]
    for level in (0, 9):
        assert all(np.array_equal(a, b) for a, b in zip(pixels[None], pixels[level]))
    assert sizes[0] > 2 * sizes[9]
    r = CliRunner().invoke(cli, ["normalize", str(root), "-o", str(tmp_path / "x"),
                                 "--png-level", "10"])
    assert r.exit_code == 2 and "--png-level" in r.output


def test_crop_resize_labels_bounds_and_restore(tmp_path):
    """The learning-pipeline example end to end on a DRIVE-shaped tree with -j 2: 64 px
    images, masks and labels that line up, one bounds row per image, and restore maps a
    prediction (here the cut label itself) back onto the original within one pixel of edges."""
    import csv

    import cv2

    root = make_drive(tmp_path / "DRIVE", 2, 2)
    out = tmp_path / "prep"
    r = invoke("normalize", root, "-o", out, "--crop", "fov", "--resize", 64, "--with-labels",
               "auto", "--write-mask", "--bounds", tmp_path / "bounds.csv", "-j", 2,
               "--window", 15)
    assert r.exit_code == 0, r.output
    images = sorted(p for p in out.rglob("*.png") if not p.stem.endswith(("_mask", "_label")))
    assert len(images) == 4
    preds = tmp_path / "preds"
    preds.mkdir()
    for im in images:
        m = read_mask(im.with_name(im.stem + "_mask.png"))
        lab = read_image(im.with_name(im.stem + "_label.png"))
        assert read_image(im).shape[:2] == m.shape == lab.shape[:2] == (64, 64)
        assert (read_image(im)[~m] == 0).all()  # outside the mask: the fill
        (preds / f"{im.stem}_vessels.png").write_bytes(
            (im.with_name(im.stem + "_label.png")).read_bytes())
    rows = list(csv.DictReader(open(tmp_path / "bounds.csv")))
    assert len(rows) == 4 and {r["output_width"] for r in rows} == {"64"}
    r = invoke("restore", preds, "--manifest", out / "manifest.jsonl", "-o", tmp_path / "back",
               "--interpolation", "nearest", "-j", 2)
    assert r.exit_code == 0, r.output
    for row in rows:
        stem = os.path.splitext(os.path.basename(row["output"]))[0]
        back = read_image(tmp_path / "back" / f"{stem}_vessels.png")
        from retina_prep.dataset import find_label

        orig = read_image(find_label(row["image"]))
        orig = orig if orig.ndim == 2 else orig[..., 0]
        assert back.shape == orig.shape
        scale = float(row["m00"])
        reach = int(np.ceil(0.5 / scale + 0.5))
        k = np.ones((2 * reach + 1,) * 2, np.uint8)
        edge = cv2.dilate(orig, k) != cv2.erode(orig, k)
        x0, y0, side = int(row["crop_x0"]), int(row["crop_y0"]), int(row["crop_side"])
        covered = np.zeros(orig.shape, bool)
        covered[max(y0, 0):y0 + side, max(x0, 0):x0 + side] = True
        assert not ((back != orig) & ~edge & covered).any()
    # a prediction named like no output: one error line, the others restored
    (preds / "stranger.png").write_bytes(images[0].read_bytes())
    r = invoke("restore", preds, "--manifest", out / "manifest.jsonl", "-o", tmp_path / "back2")
    assert r.exit_code == 1 and "stranger.png" in r.output and "named like" in r.output
    assert len(list((tmp_path / "back2").glob("*_vessels.png"))) == 4
    r = invoke("normalize", root, "-o", tmp_path / "x", "--bounds", tmp_path / "b.csv")
    assert r.exit_code == 2 and "--crop fov or --resize" in r.output
    # a float probability map: PNG cannot hold it, the error names the flag; TIFF keeps it
    probs = tmp_path / "probs"
    probs.mkdir()
    write_image(probs / f"{images[0].stem}_prob.tif",
                np.linspace(0, 1, 64 * 64, dtype=np.float32).reshape(64, 64))
    r = invoke("restore", probs, "--manifest", out / "manifest.jsonl", "-o", tmp_path / "p1")
    assert r.exit_code == 1 and "write TIFF (--format tif)" in r.output
    r = invoke("restore", probs, "--manifest", out / "manifest.jsonl", "-o", tmp_path / "p2",
               "--format", "tif")
    assert r.exit_code == 0, r.output
    back = read_image(tmp_path / "p2" / f"{images[0].stem}_prob.tif")
    assert back.dtype == np.float32 and 0 <= back.min() and back.max() <= 1


def test_exif_rotated_photo_with_mask_in_displayed_orientation(tmp_path):
    """A phone adapter's JPEG stored sideways (EXIF orientation 6) and a mask drawn on the
    photo as shown: normalize turns the photo, the mask fits, the manifest records it;
    --ignore-orientation uses the stored pixels, so the mask no longer fits."""
    import json

    from PIL import Image

    from retina_prep.synthetic import synthetic_fundus

    s = synthetic_fundus((90, 60), seed=3)  # displayed: 60 wide, 90 high
    stored = np.ascontiguousarray(np.rot90(s.image, 1))  # what the sensor wrote
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "eye.jpg", quality=95, exif=exif.tobytes())
    Image.fromarray(s.mask.astype(np.uint8) * 255).save(tmp_path / "eye_mask.png")
    for j in (1, 2):
        out = tmp_path / f"out{j}"
        r = invoke("normalize", tmp_path / "eye.jpg", tmp_path / "eye.jpg", "--mask",
                   tmp_path / "eye_mask.png", "-o", out, "--window", 9, "-j", j)
        assert r.exit_code == 0, r.output
        assert read_image(out / "eye.png").shape == (90, 60, 3)
        recs = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()]
        assert [x["params"]["orientation"] for x in recs if x["type"] == "image"] == [6]
    r = invoke("normalize", tmp_path / "eye.jpg", "--mask", tmp_path / "eye_mask.png", "-o",
               tmp_path / "raw", "--ignore-orientation")
    assert r.exit_code == 1 and "60x90 px but the image is 90x60 px" in r.output


def test_progress_bar_on_a_terminal_and_lines_above_it(tmp_path, monkeypatch):
    """On a terminal the batch shows a tqdm bar on stderr (tqdm is imported only then) and an
    error line is printed on its own line; off a terminal there is no bar."""
    import retina_prep.cli.runner as runner

    root = make_drive(tmp_path / "DRIVE")
    (root / "test" / "images" / "99_test.tif").write_bytes(b"not an image")
    for terminal in (True, False):
        monkeypatch.setattr(runner, "stderr_is_terminal", lambda t=terminal: t)
        r = CliRunner().invoke(cli, ["normalize", str(root / "test"), "-o",
                                     str(tmp_path / f"o{terminal}"), "--window", "15"])
        assert r.exit_code == 1
        err = r.stderr
        # the error line starts a line of its own (after the bar's carriage return)
        segments = err.replace("\r", "\n").splitlines()
        assert any(x.startswith("error: ") and "99_test.tif" in x for x in segments), err
        assert "normalize: 2 done, 1 failed" in err
        assert ("img/s" in err) == terminal, err


def test_sensor_bits_in_16_bit_files_get_a_warning(tmp_path):
    """12-bit data in a 16-bit PNG, without --value-range: I0 is 32896 and the deviations stay at
    the data's scale, a nearly flat gray result. One warning names the flag and the range; with
    the range, or with data using the 16-bit range, none."""
    from retina_prep.io import write_image
    from retina_prep.synthetic import synthetic_fundus

    s = synthetic_fundus((120, 150), seed=1, background=2)
    for name, scale in (("raw12", 16), ("full", 257)):
        write_image(tmp_path / "in" / f"{name}.png", s.image.astype(np.uint16) * scale)
        write_image(tmp_path / "in" / f"{name}_mask.png", s.mask.astype(np.uint8) * 255)
    r = CliRunner().invoke(cli, ["normalize", str(tmp_path / "in"), "-o", str(tmp_path / "o"),
                                 "-j", "2"])
    assert r.exit_code == 0, r.output
    warned = [line for line in r.stderr.splitlines() if "12-bit values" in line]
    assert len(warned) == 1 and "1 of 2 images" in warned[0]
    assert "--value-range 0,4095" in warned[0]
    r = CliRunner().invoke(cli, ["normalize", str(tmp_path / "in" / "raw12.png"), "-o",
                                 str(tmp_path / "o2"), "--value-range", "0,4095"])
    assert r.exit_code == 0 and "bit values" not in r.stderr
    out = read_image(tmp_path / "o2" / "raw12.png")
    inside = s.mask
    assert abs(float(np.median(out[inside])) - 2048) < 40  # I0 on the 12-bit scale
