"""Errors that belong to the run are said once (exit 2, nothing written), not once per image;
and the two places where the command line had drifted from the library's steps."""

from __future__ import annotations

import json

import numpy as np
import pytest

from retina_prep.io import read_image, write_image
from retina_prep.synthetic import synthetic_fundus

from .test_cli_commands import invoke
from .test_hostile import error_lines


@pytest.fixture
def photos(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # run as a user does, from a folder of their own
    for i in range(3):
        s = synthetic_fundus((150, 160), seed=i, background=4)
        write_image(tmp_path / "in" / f"e{i}.png", s.image)
        write_image(tmp_path / "in" / f"e{i}_mask.png", s.mask.astype(np.uint8) * 255)
    return tmp_path


def _usage(r, *words):
    assert r.exit_code == 2, r.output
    assert all(w in r.output for w in words), r.output
    return r


@pytest.mark.parametrize("args, words", [
    (["--mask", "nope.png"], ["--mask", "nope.png: no such file"]),
    (["--mask", "in"], ["--mask", "is a directory"]),
    (["--mask-dir", "nope"], ["--mask-dir", "nope: no such folder"]),
    (["--fill", "nan"], ["--fill", "not a finite number"]),
    (["--fill", "inf"], ["--fill"]),
    (["--feather", "nan"], ["--feather", "not a finite number"]),
    (["--erode", "1e300"], ["--erode", "at most 10000 pixels"]),
    (["--target", "300"], ["--target"]),
    (["--panels", "out"], ["--panels", "is the output folder"]),
])
def test_run_errors_once_and_nothing_written(photos, args, words):
    _usage(invoke("normalize", "in", "-o", "out", *args), *words)
    assert not (photos / "out").exists()


def test_output_folder_that_is_or_holds_the_input(photos):
    _usage(invoke("normalize", "in", "-o", "in"), "the input folder is the output folder")
    (photos / "proj").mkdir()
    (photos / "in").rename(photos / "proj" / "raw")
    _usage(invoke("normalize", "proj/raw", "-o", "proj"), "the input folder is the output"
           " folder or inside it")
    assert not (photos / "proj" / "manifest.jsonl").exists()


def test_a_rerun_without_overwrite_says_it_once(photos):
    assert invoke("normalize", "in", "-o", "out").exit_code == 0
    r = invoke("normalize", "in", "-o", "out")
    assert r.exit_code == 1
    errs = error_lines(r.output)
    assert errs == ["error: 3 of 3 images: output exists (out/e0.png and 2 more) (use --overwrite"
                    " to replace them, or --skip-existing to keep them)"], r.output


def test_stdout_takes_crop_and_resize_and_refuses_side_outputs(photos):
    """`-o - --crop fov --resize 64` wrote 584x584 (the CLI's own copy of the step), and
    `--panels` with -o - wrote nothing, exit 0."""
    from click.testing import CliRunner

    from retina_prep.cli.main import cli

    r = CliRunner().invoke(cli, ["normalize", "in/e0.png", "-o", "-", "--crop", "fov",
                                 "--resize", "64", "-q"])
    assert r.exit_code == 0
    (photos / "s.png").write_bytes(r.stdout_bytes)
    assert read_image(photos / "s.png").shape == (64, 64, 3)
    assert invoke("normalize", "in/e0.png", "-o", "file", "--crop", "fov", "--resize", "64",
                  "-q").exit_code == 0
    assert np.array_equal(read_image(photos / "s.png"), read_image(photos / "file" / "e0.png"))
    _usage(invoke("normalize", "in/e0.png", "-o", "-", "--panels", "p"), "--panels")


def test_auto_mask_is_estimated_in_the_plan_pairs_and_manifest(photos):
    r = invoke("normalize", "in", "-o", "out", "--auto-mask", "--dry-run")
    rows = [x.split("\t") for x in r.output.splitlines()[1:] if "\t" in x]
    assert rows and all(row[1] == "-" and row[2] == "estimated" for row in rows), r.output
    r = invoke("pairs", "in", "--auto-mask")
    rows = [x.split("\t") for x in r.output.splitlines()[1:] if "\t" in x]
    assert rows and all(row[2] == "estimated" for row in rows)
    assert invoke("mask", "in", "-o", "masks").exit_code == 0
    recs = [json.loads(x) for x in (photos / "masks" / "manifest.jsonl").open()][1:]
    assert all(x["mask"] is None and x["mask_source"] == "estimated" for x in recs)


def test_o_file_writes_that_file(photos):
    """`normalize eye.png -o eye_out.png` writes that file (it made a folder of that name); with
    many inputs it is a usage error; an existing file needs --overwrite; .tif writes TIFF."""
    r = invoke("normalize", "in/e0.png", "--mask", "in/e0_mask.png", "-o", "e0_out.png",
               "--config", "drive", "-q")
    assert r.exit_code == 0, r.output
    assert (photos / "e0_out.png").is_file()
    assert invoke("normalize", "in/e0.png", "-o", "folder", "--mask", "in/e0_mask.png",
                  "--config", "drive", "-q").exit_code == 0
    assert np.array_equal(read_image(photos / "e0_out.png"), read_image(photos / "folder" / "e0.png"))
    _usage(invoke("normalize", "in", "-o", "x.png"), "3 were given")
    _usage(invoke("normalize", "in/e0.png", "-o", "e0_out.png"), "output exists")
    assert invoke("normalize", "in/e0.png", "-o", "e0_out.png", "--overwrite", "-q").exit_code == 0
    assert invoke("normalize", "in/e0.png", "-o", "e0.tif", "-q").exit_code == 0
    assert (photos / "e0.tif").read_bytes()[:2] in (b"II", b"MM")
    # an image ending it cannot write is refused, not made a folder of that name
    _usage(invoke("normalize", "in/e0.png", "-o", "e0.jpg"), "outputs are written as PNG or TIFF")
    assert not (photos / "e0.jpg").exists()


def test_compare_writes_the_suffixes_it_can(photos):
    assert invoke("compare", "in/e0.png", "-o", "fig.tif", "-q").exit_code == 0
    assert (photos / "fig.tif").is_file()
    _usage(invoke("compare", "in/e0.png", "-o", "fig.jpg"), "figures are written as PNG or TIFF")
    assert not (photos / "fig.jpg").exists()


def test_bounds_rows_stay_one_per_image_on_a_rerun(photos):
    """--bounds on a rerun with --overwrite gave 2 rows per image (81 for 40)."""
    import csv

    for _ in range(2):
        r = invoke("normalize", "in", "-o", "out", "--crop", "fov", "--resize", "64",
                   "--bounds", "b.csv", "--overwrite", "-q")
        assert r.exit_code == 0, r.output
    rows = list(csv.reader((photos / "b.csv").open()))
    assert rows[0][:2] == ["image", "output"] and len(rows) == 1 + 3
    assert len({row[1] for row in rows[1:]}) == 3


def test_api_traps(photos):
    """normalize_illumination(image, None) is the whole image as the README says (it raised
    unless a window was given); to_original takes a shape, and refuses a shape passed as a
    size (it returned the transposed grid)."""
    import retina_prep as rp
    from retina_prep import geometry as g

    img = read_image(photos / "in" / "e0.png")
    out = rp.normalize_illumination(img, None)
    assert out.shape == img.shape and out.dtype == img.dtype
    m = rp.read_mask(photos / "in" / "e0_mask.png")[:, :140]
    t = g.fov_transform(m, crop=True, size=32)
    a = np.zeros((32, 32), np.float32)
    assert g.to_original(a, t, shape=m.shape).shape == m.shape
    assert g.to_original(a, t).shape == m.shape
    with pytest.raises(ValueError, match="transposed"):
        g.to_original(a, t, m.shape)
