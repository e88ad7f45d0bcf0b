"""Per-image steps: the run's shared-mask cache gives the same outputs as computing each mask
anew."""

import os
import pickle
from pathlib import Path, PurePath

import numpy as np
import pytest

import retina_prep.pipeline as pl
from retina_prep.dataset import Pair
from retina_prep.io import read_image, write_image
from retina_prep.normalize import normalize_illumination
from retina_prep.steps import Caches, NormalizeStep
from retina_prep.synthetic import synthetic_fundus


def _camera(tmp_path, n=3):
    """n photographs from one camera sharing one mask file."""
    mask = synthetic_fundus((120, 130), seed=0).mask
    write_image(tmp_path / "mask.png", mask.astype(np.uint8) * 255)
    pairs = []
    for i in range(n):
        img = synthetic_fundus((120, 130), seed=i + 1).image
        img[~mask] = 0
        write_image(tmp_path / f"im{i}.png", img)
        pairs.append(Pair(tmp_path / f"im{i}.png", tmp_path / "mask.png", "given",
                          PurePath(f"im{i}")))
    return pairs, mask


@pytest.mark.parametrize("order", [0, 1])
def test_shared_mask_read_once_and_outputs_unchanged(tmp_path, monkeypatch, order):
    pairs, _ = _camera(tmp_path)
    reads = []
    real = pl.read_mask
    monkeypatch.setattr(pl, "read_mask", lambda *a, **k: reads.append(a) or real(*a, **k))
    settings = pl.NormalizeSettings(window=15, order=order)
    mask_settings = pl.MaskSettings(erode=2, rim="none")  # a trim that looks at each image: no cache
    step = NormalizeStep(tmp_path / "out", settings, mask_settings)
    for p in pairs:
        step(p)
    assert len(reads) == 1
    assert len(step.caches.prepared) == 1  # prepared once it was seen to be shared
    for p in pairs:  # the reference: every image on its own, no cache
        image, mask, _ = pl.load_pair(p, mask_settings)
        want = normalize_illumination(image, mask, window=15, order=order)
        np.testing.assert_array_equal(read_image(tmp_path / "out" / f"{p.rel}.png"), want)


def test_a_changed_mask_file_is_read_again(tmp_path, monkeypatch):
    pairs, mask = _camera(tmp_path, 2)
    settings = pl.NormalizeSettings(window=15)
    given = pl.MaskSettings(rim="none")
    caches = Caches()
    first = pl.load_pair(pairs[0], given, caches=caches)[1]
    smaller = mask.copy()
    smaller[:, :40] = False
    write_image(tmp_path / "mask.png", smaller.astype(np.uint8) * 255, overwrite=True)
    st = os.stat(tmp_path / "mask.png")
    os.utime(tmp_path / "mask.png", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    second = pl.load_pair(pairs[1], given, caches=caches)[1]
    assert first.sum() != second.sum() and np.array_equal(second, smaller)
    pl.normalize_loaded(read_image(pairs[1].image), second, settings, caches=caches)


def test_cached_masks_are_read_only_and_size_checked(tmp_path):
    pairs, _ = _camera(tmp_path, 1)
    given = pl.MaskSettings(rim="none")
    caches = Caches()
    _, mask, _ = pl.load_pair(pairs[0], given, caches=caches)
    _, again, info = pl.load_pair(pairs[0], given, caches=caches)
    assert again is mask and not mask.flags.writeable and info["warnings"] == []
    _, fresh, _ = pl.load_pair(pairs[0], given)  # no cache: read anew
    assert fresh is not mask and fresh.flags.writeable
    write_image(tmp_path / "small.png", np.zeros((60, 65, 3), np.uint8))
    small = Pair(Path(tmp_path / "small.png"), tmp_path / "mask.png", "given", PurePath("small"))
    with pytest.raises(pl.MaskError, match="130x120 px but the image is 65x60"):
        pl.load_pair(small, given, caches=caches)


def test_rim_auto_masks_are_not_cached(tmp_path):
    pairs, _ = _camera(tmp_path, 2)
    caches = Caches()
    pl.load_pair(pairs[0], pl.MaskSettings(rim="auto"), caches=caches)
    pl.load_pair(pairs[0], caches=caches)  # the default trims too
    assert len(caches.masks) == 0


def test_a_pickled_cache_is_one_per_process_and_run():
    a, b = Caches(), Caches()
    # what a worker process unpickles for each image of one run: the same cache every time
    first, again = pickle.loads(pickle.dumps(a)), pickle.loads(pickle.dumps(a))
    assert first is again and first.token == a.token
    assert pickle.loads(pickle.dumps(b)) is not first  # another run: another cache
    step = NormalizeStep(Path("out"), caches=a)
    assert pickle.loads(pickle.dumps(step)).caches is first


def test_predictions_match_outputs_by_name_and_folder():
    from retina_prep.errors import RetinaPrepError

    rec = {"geometry": {}, "input": "x"}
    transforms = {"prep/test/01.png": {**rec, "output": "prep/test/01.png"},
                  "prep/train/01.png": {**rec, "output": "prep/train/01.png"},
                  "prep/test/01_a.png": {**rec, "output": "prep/test/01_a.png"},
                  "prep/test/02.png": {**rec, "output": "prep/test/02.png"}}
    m = pl.match_transform
    assert m(Path("p/02_vessels.png"), transforms)["output"] == "prep/test/02.png"
    assert m(Path("p/01_a_vessels.png"), transforms)["output"] == "prep/test/01_a.png"  # longest
    assert m(Path("p/test/01_vessels.png"), transforms, PurePath("test/01_vessels"))["output"] \
        == "prep/test/01.png"
    assert m(Path("p/train/01.png"), transforms, PurePath("train/01"))["output"] \
        == "prep/train/01.png"
    assert m(Path("p/03.png"), transforms) is None
    assert m(Path("p/02x.png"), transforms) is None  # 02 followed by a letter: another name
    with pytest.raises(RetinaPrepError, match="several outputs"):
        m(Path("p/01_vessels.png"), transforms, PurePath("01_vessels"))
