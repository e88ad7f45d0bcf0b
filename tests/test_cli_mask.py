import numpy as np
from click.testing import CliRunner

from retina_prep.cli.main import cli
from retina_prep.fov import margin_distance, trim_rim
from retina_prep.io import read_image, read_mask
from retina_prep.synthetic import synthetic_fundus

from .helpers import make_drive, make_image


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def test_mask_command_on_drive_tree_with_sheet(tmp_path):
    root = make_drive(tmp_path / "DRIVE")
    out = tmp_path / "masks"
    sheet = tmp_path / "sheet.png"
    r = invoke("mask", root, "-o", out, "--sheet", sheet)
    assert r.exit_code == 0, r.output
    written = sorted(str(p.relative_to(out)) for p in out.rglob("*.png"))
    assert written == ["test/01_test_mask.png", "test/02_test_mask.png",
                       "training/21_training_mask.png", "training/22_training_mask.png"]
    m = read_image(out / "test/01_test_mask.png")
    assert m.dtype == np.uint8 and set(np.unique(m)) == {0, 255}
    truth = read_mask(root / "test/mask/01_test_mask.gif")
    assert iou(m > 0, truth) > 0.97
    s = read_image(sheet)
    assert s.shape[0] > 240 and s.shape[1] > 2 * 240
    # refused without --overwrite, sheet included
    r = invoke("mask", root, "-o", out, "--sheet", sheet)
    assert r.exit_code == 2 and "--overwrite" in r.output
    r = invoke("mask", root, "-o", out)
    assert r.exit_code == 1 and "--overwrite" in r.output


def test_masks_feed_normalize(tmp_path):
    make_image(tmp_path / "in" / "a.png", seed=1)
    make_image(tmp_path / "in" / "b.png", seed=2)
    assert invoke("mask", tmp_path / "in", "-o", tmp_path / "m").exit_code == 0
    r = invoke("normalize", tmp_path / "in", "--mask-dir", tmp_path / "m", "--mask-pattern",
               "{stem}_mask.png", "-o", tmp_path / "o")
    assert r.exit_code == 0 and "warning" not in r.output


def test_mask_bad_file_goes_on(tmp_path):
    make_image(tmp_path / "in" / "a.png", seed=1)
    (tmp_path / "in" / "b.png").write_bytes(b"\x89PNG broken")
    (tmp_path / "in" / "c.png").write_bytes(b"")
    r = invoke("mask", tmp_path / "in", "-o", tmp_path / "m", "--erode", 3)
    assert r.exit_code == 1
    assert [p.name for p in (tmp_path / "m").glob("*.png")] == ["a_mask.png"]
    assert r.output.count("error:") == 2


def test_uniform_image_cannot_be_masked(tmp_path):
    from retina_prep.io import write_image

    write_image(tmp_path / "flat.png", np.full((50, 50, 3), 90, np.uint8))
    r = invoke("mask", tmp_path / "flat.png", "-o", tmp_path / "m")
    assert r.exit_code == 1 and "flat.png" in r.output and "field of view" in r.output


def _rimmed(seed=0):
    """A synthetic fundus with a dark 3-px rim and a bright ring at 4-5 px, DRIVE-like (and sized)."""
    s = synthetic_fundus((600, 600), seed=seed, background=5, strength=0.3, vessels=False, noise=0)
    d = margin_distance(s.mask)
    img = s.image.astype(float)
    img[s.mask & (d < 3)] *= 0.4
    img[s.mask & (d >= 3) & (d < 5)] *= 1.12
    return np.clip(img, 0, 255).astype(np.uint8), s.mask, d


def test_trim_rim_drops_dark_rim_and_bright_ring():
    img, mask, d = _rimmed()
    trimmed = trim_rim(img, mask)
    assert not trimmed[mask & (d < 3)].any()
    assert not trimmed[mask & (d >= 3) & (d < 4.5)].any()
    assert trimmed[mask & (d >= 12)].all()  # nothing deeper is touched
    assert not (trimmed & ~mask).any()


def test_trim_rim_leaves_a_clean_margin_alone():
    s = synthetic_fundus((300, 300), seed=1, background=5, strength=0.2, vessels=True, noise=1.0)
    trimmed = trim_rim(s.image, s.mask)
    assert (s.mask & ~trimmed).sum() < 0.01 * s.mask.sum()


def test_rim_option_in_normalize(tmp_path):
    from retina_prep.io import write_image

    img, mask, d = _rimmed()
    write_image(tmp_path / "in" / "eye.png", img)
    write_image(tmp_path / "in" / "eye_mask.png", mask.astype(np.uint8) * 255)
    assert invoke("normalize", tmp_path / "in", "-o", tmp_path / "keep", "--window", 15,
                  "--rim", "none").exit_code == 0
    # the default trims the rim of a mask file too
    assert invoke("normalize", tmp_path / "in", "-o", tmp_path / "trim", "--window", 15).exit_code == 0
    keep = read_image(tmp_path / "keep" / "eye.png").astype(float)
    trim = read_image(tmp_path / "trim" / "eye.png").astype(float)
    band = mask & (d >= 5) & (d < 10)
    # with the rim kept, the dark rim drags the mean down and the band comes out bright
    assert np.abs(trim[band] - 128).mean() < np.abs(keep[band] - 128).mean() - 2
    assert (trim[mask & (d < 3)] == 0).all()


def test_masks_the_tool_writes_are_masks_it_reads(tmp_path):
    """`mask -o masks` then `normalize --mask-dir masks` with no pattern, with workers: the
    outputs are identical to `normalize` alone (the README's two-step example)."""
    import json

    from retina_prep.io import write_image

    for i in range(4):
        s = synthetic_fundus((300, 300), seed=i, background=5)
        img = s.image.astype(float)
        img[s.mask & (margin_distance(s.mask) < 2)] *= 0.5  # a dark rim for the trim to find
        write_image(tmp_path / "photos" / f"eye {i}.png", img.astype(np.uint8))
    r = invoke("mask", tmp_path / "photos", "-o", tmp_path / "fovs", "-j", 2)
    assert r.exit_code == 0, r.output
    r = invoke("normalize", tmp_path / "photos", "--mask-dir", tmp_path / "fovs", "-o",
               tmp_path / "out", "-j", 2)
    assert r.exit_code == 0, r.output
    assert "estimated" not in r.output
    lines = [json.loads(x) for x in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    images = [x for x in lines if x["type"] == "image"]
    assert len(images) == 4 and all(x["mask_source"] == "given" for x in images)
    assert all(x["mask"].endswith("_mask.png") for x in images)
    # `mask` writes the trimmed mask normalize would use: read back, it is not trimmed again
    assert all(x["params"]["order"] == 1 and x["params"]["rim"] == "none" for x in images)
    r = invoke("normalize", tmp_path / "photos", "-o", tmp_path / "one", "-j", 2)
    assert r.exit_code == 0, r.output
    for i in range(4):
        two = read_image(tmp_path / "out" / f"eye {i}.png")
        one = read_image(tmp_path / "one" / f"eye {i}.png")
        assert np.array_equal(one, two), i
    one_lines = [json.loads(x) for x in (tmp_path / "one" / "manifest.jsonl").read_text().splitlines()]
    assert all(x["params"]["rim_dropped"] > 0 for x in one_lines if x["type"] == "image")


def test_a_trimmed_mask_says_so_in_its_file(tmp_path):
    """`mask` (its default --rim auto, or --erode) notes in the PNG that the rim is gone, so
    `normalize --mask-dir` does not trim it again and runs order "auto" as 1, as on the estimate
    itself, even with --rim none, and without a warning for an explicit --order 1; the note is an
    ordinary PNG text entry that other tools show. A mask written with --rim none is an
    ordinary mask file: trimmed by default, used as given with --rim none."""
    import json

    from PIL import Image

    from retina_prep.io import write_image

    s = synthetic_fundus((300, 300), seed=1, background=5)
    write_image(tmp_path / "photos" / "eye.png", s.image)
    cases = ((["--rim", "auto"], 1), (["--erode", "3"], 1), ([], 1), (["--rim", "none"], 0))
    for i, (args, order) in enumerate(cases):
        masks, out = tmp_path / f"m{i}", tmp_path / f"o{i}"
        assert invoke("mask", tmp_path / "photos", "-o", masks, *args).exit_code == 0
        text = Image.open(masks / "eye_mask.png").info
        assert ("retina-prep" in text) == (order == 1)
        r = invoke("normalize", tmp_path / "photos", "--mask-dir", masks, "-o", out, "-v")
        assert r.exit_code == 0, r.output
        rec = [json.loads(x) for x in (out / "manifest.jsonl").read_text().splitlines()][-1]
        assert rec["params"]["order"] == 1, args  # trimmed before, or trimmed now
        assert rec["params"]["rim"] == ("none" if order == 1 else "auto"), args
        r = invoke("normalize", tmp_path / "photos", "--mask-dir", masks, "-o", out / "g", "-v",
                   "--rim", "none")
        rec = [json.loads(x) for x in (out / "g" / "manifest.jsonl").read_text().splitlines()][-1]
        assert rec["params"]["order"] == order, args
        r = invoke("normalize", tmp_path / "photos", "--mask-dir", masks, "-o", out / "x",
                   "--order", "1", "--rim", "none")
        assert ("untrimmed" in r.output) == (order == 0), r.output


def test_one_mask_for_a_camera(tmp_path):
    from retina_prep.io import write_image

    s = synthetic_fundus((200, 220), seed=1, background=5)
    for i in range(3):
        write_image(tmp_path / "in" / f"img{i}.png", s.image)
    write_image(tmp_path / "camera_fov.png", s.mask.astype(np.uint8) * 255)
    r = invoke("normalize", tmp_path / "in", "--mask", tmp_path / "camera_fov.png", "-o",
               tmp_path / "out", "-j", 2)
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "out").glob("img*.png"))) == 3


def test_estimate_and_rim_recorded_in_manifest(tmp_path):
    import json

    from retina_prep.io import write_image

    s = synthetic_fundus((400, 400), seed=2, background=5, dark_sector=0.07)
    write_image(tmp_path / "in" / "eye.png", s.image)
    r = invoke("normalize", tmp_path / "in", "-o", tmp_path / "out")
    assert r.exit_code == 0, r.output
    line = [json.loads(x) for x in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()][-1]
    est = line["params"]["fov_estimate"]
    assert est["confidence"] >= 0.85 and est["filled"] > 0 and len(est["circle"]) == 3
    assert {"rim_dropped", "rim_depth_mean", "rim_depth_max"} <= set(line["params"])
