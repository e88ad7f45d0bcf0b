from pathlib import Path, PurePath

import pytest

from retina_prep.dataset import find_mask, find_pairs
from retina_prep.errors import DatasetError

from .helpers import make_drive, make_image, make_mask


def test_drive_root(tmp_path):
    root = make_drive(tmp_path / "DRIVE")
    pairs = find_pairs([root])
    assert [str(p.rel) for p in pairs] == [
        "test/01_test", "test/02_test", "training/21_training", "training/22_training"]
    for p in pairs:
        assert p.mask_source == "dataset"
        assert p.mask.name == f"{p.image.stem}_mask.gif"
        assert p.mask.parent.name == "mask"


def test_drive_split_and_single_file(tmp_path):
    root = make_drive(tmp_path / "DRIVE")
    pairs = find_pairs([root / "test"])
    assert [p.rel for p in pairs] == [PurePath("01_test"), PurePath("02_test")]
    img = root / "training" / "images" / "21_training.tif"
    (pair,) = find_pairs([img])
    assert pair.mask == root / "training" / "mask" / "21_training_mask.gif"
    assert pair.rel == PurePath("21_training")


def test_plain_folder_masks_beside(tmp_path):
    m = make_image(tmp_path / "a.png")
    make_mask(tmp_path / "a_mask.png", m)
    make_image(tmp_path / "b.png")
    pairs = find_pairs([tmp_path])
    assert [p.image.name for p in pairs] == ["a.png", "b.png"]  # a_mask.png is not an image
    assert pairs[0].mask.name == "a_mask.png" and pairs[1].mask is None
    assert pairs[1].mask_source == "none"


def test_labels_and_masks_never_images(tmp_path):
    root = make_drive(tmp_path / "D", 1, 1)
    files = [str(p.image.relative_to(root)) for p in find_pairs([root])]
    assert not any("mask" in f or "manual" in f for f in files)
    # given directly, they are skipped too
    with pytest.raises(DatasetError, match="no images"):
        find_pairs([root / "test" / "mask" / "01_test_mask.gif"])


def test_mask_dir_and_pattern(tmp_path):
    make_image(tmp_path / "imgs" / "x1.png")
    make_image(tmp_path / "imgs" / "x2.png")
    pairs = find_pairs([tmp_path / "imgs"], mask_dir=tmp_path / "fov", mask_pattern="{stem}_fov.png")
    assert [p.mask for p in pairs] == [tmp_path / "fov" / "x1_fov.png", tmp_path / "fov" / "x2_fov.png"]
    assert all(p.mask_source == "given" for p in pairs)
    with pytest.raises(DatasetError, match="stem"):
        find_pairs([tmp_path / "imgs"], mask_dir=tmp_path, mask_pattern="fixed.png")


def test_single_mask_needs_single_image(tmp_path):
    make_image(tmp_path / "x1.png")
    make_image(tmp_path / "x2.png")
    with pytest.raises(DatasetError, match="--mask-dir"):
        find_pairs([tmp_path], mask=tmp_path / "m.png")
    (p,) = find_pairs([tmp_path / "x1.png"], mask=tmp_path / "m.png")
    assert p.mask == tmp_path / "m.png" and p.mask_source == "given"


def test_missing_input_and_empty_folder(tmp_path):
    with pytest.raises(DatasetError, match="no such file"):
        find_pairs([tmp_path / "nope"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no image files"):
        find_pairs([tmp_path / "empty"])


def test_output_folder_inside_input_is_excluded(tmp_path):
    make_image(tmp_path / "a.png")
    make_image(tmp_path / "out" / "a.png")
    pairs = find_pairs([tmp_path], exclude=[tmp_path / "out"])
    assert [p.image for p in pairs] == [tmp_path / "a.png"]


def test_find_mask_case_and_extensions(tmp_path):
    img = tmp_path / "images" / "01_dr.JPG"
    img.parent.mkdir()
    img.write_bytes(b"x")
    make_mask(tmp_path / "mask" / "01_dr_mask.tif", __import__("numpy").ones((3, 3), bool))
    assert find_mask(img) == tmp_path / "mask" / "01_dr_mask.tif"
    assert find_mask(Path(tmp_path / "images" / "other.png")) is None
