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


def test_one_mask_for_many_images(tmp_path):
    make_image(tmp_path / "x1.png")
    make_image(tmp_path / "x2.png")
    pairs = find_pairs([tmp_path / "x1.png", tmp_path / "x2.png"], mask=tmp_path / "m.png")
    assert [p.mask for p in pairs] == [tmp_path / "m.png"] * 2
    assert {p.mask_source for p in pairs} == {"given"}


def test_default_mask_dir_lookup_takes_any_ending(tmp_path):
    make_image(tmp_path / "in" / "a.jpg")
    make_image(tmp_path / "in" / "b.jpg")
    (tmp_path / "masks").mkdir()
    (tmp_path / "masks" / "a_mask.png").write_bytes(b"x")
    (tmp_path / "masks" / "b_mask.gif").write_bytes(b"x")
    pairs = find_pairs([tmp_path / "in"], mask_dir=tmp_path / "masks")
    assert [p.mask.name for p in pairs] == ["a_mask.png", "b_mask.gif"]


@pytest.mark.parametrize("pattern", ["../{stem}.png", "/etc/{stem}", "{stem}{0}", "{stem.__class__}",
                                     "{stem!r}.png", "{stem:>9}.png", "mask.png", "{stem"])
def test_mask_pattern_is_a_plain_name(tmp_path, pattern):
    make_image(tmp_path / "x1.png")
    with pytest.raises(DatasetError):
        find_pairs([tmp_path / "x1.png"], mask_dir=tmp_path, mask_pattern=pattern)


def test_duplicate_inputs_are_processed_once(tmp_path):
    make_image(tmp_path / "a.png")
    pairs = find_pairs([tmp_path / "a.png", tmp_path / "a.png", str(tmp_path / "." / "a.png")])
    assert len(pairs) == 1



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


def test_pairing_lists_each_folder_once(tmp_path, monkeypatch):
    """Pairing N images with masks beside them lists each folder a fixed number of times, not
    once per image (quadratic: 42 s for 2000 images, 278 s for 5000); the pairs are right."""
    import os

    import retina_prep.dataset as ds

    folder = tmp_path / "f"
    folder.mkdir()
    n = 1500
    for i in range(n):
        (folder / f"im{i:05d}.png").touch()
        (folder / f"im{i:05d}_mask.png").touch()
    (folder / "im00007_fov.png").touch()  # two masks: the first in sorted order, as before
    calls = []
    scandir, listdir = os.scandir, os.listdir  # every way a folder is listed counts
    monkeypatch.setattr(os, "scandir", lambda p=".": calls.append(p) or scandir(p))
    monkeypatch.setattr(os, "listdir", lambda p=".": calls.append(p) or listdir(p))
    names = [folder / f"im{i:05d}.png" for i in range(n)]
    pairs = ds.find_pairs(names)
    assert len(pairs) == n and len(calls) <= 6, len(calls)
    want = {p.image.stem: folder / f"{p.image.stem}_mask.png" for p in pairs}
    want["im00007"] = folder / "im00007_fov.png"
    assert all(p.mask == want[p.image.stem] and p.mask_source == "dataset" for p in pairs)
    calls.clear()
    pairs = ds.find_pairs([folder], mask_dir=folder)
    assert len(pairs) == n and len(calls) <= 6 and pairs[7].mask == folder / "im00007_fov.png"


def test_stepped_slurm_arrays():
    """--array=0-4:2 runs tasks 0, 2, 4: shards 1/3, 2/3, 3/3 (task 4 was refused and shard 2
    never ran)."""
    from retina_prep.dataset import shard_from_environment

    env = {"SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_STEP": "2", "SLURM_ARRAY_TASK_COUNT": "3"}
    got = [shard_from_environment(environ={**env, "SLURM_ARRAY_TASK_ID": str(i)}) for i in (0, 2, 4)]
    assert got == [(1, 3), (2, 3), (3, 3)]
    import pytest

    with pytest.raises(ValueError, match="steps of 2"):
        shard_from_environment(environ={**env, "SLURM_ARRAY_TASK_ID": "3"})
    assert shard_from_environment(environ={"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_MIN": "1",
                                           "SLURM_ARRAY_TASK_COUNT": "10"}) == (7, 10)


def test_listing_stats_equal_os_stat(tmp_path):
    """Inputs are classified from their folder's listing (one call per folder, not one per
    file, which mattered at 100 000 inputs): the same file type and identity as os.stat, for
    files, folders, links to either, broken links, a FIFO and names that do not exist."""
    import os
    import stat as st_

    from retina_prep.dataset import _Listings

    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / "d").mkdir()
    (tmp_path / "la.png").symlink_to(tmp_path / "a.png")
    (tmp_path / "ld").symlink_to(tmp_path / "d")
    (tmp_path / "broken.png").symlink_to(tmp_path / "nowhere.png")
    os.mkfifo(tmp_path / "f.png")
    listings = _Listings()
    for name in ("a.png", "d", "la.png", "ld", "broken.png", "f.png", "missing.png", "d/../a.png"):
        path = str(tmp_path / name)
        got = listings.stat_of(path)
        try:
            want = os.stat(path)
        except OSError:
            assert got is None, name
            continue
        assert got is not None, name
        assert st_.S_IFMT(got[0]) == st_.S_IFMT(want.st_mode), name
        if st_.S_ISREG(want.st_mode):
            assert (got[1], got[2]) == (want.st_dev, want.st_ino), name
