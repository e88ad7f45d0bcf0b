"""Steps: one object per command names its outputs by role and makes exactly those; the
batch, -o - and the library calls go through the same step."""

import pickle
from pathlib import Path, PurePath

import numpy as np
import pytest

from retina_prep.batch import Status, run_batch
from retina_prep.dataset import Pair
from retina_prep.io import read_image, write_image
from retina_prep.pipeline import (
    FilterSettings,
    GeometrySettings,
    MaskSettings,
    NormalizeSettings,
    OutputSettings,
    normalize_pair,
)
from retina_prep.steps import (
    Caches,
    CompareStep,
    EvaluateStep,
    FilterStep,
    MaskStep,
    NormalizeStep,
)
from retina_prep.synthetic import synthetic_fundus


@pytest.fixture
def photo(tmp_path):
    s = synthetic_fundus((150, 160), seed=3)
    write_image(tmp_path / "in" / "eye.png", s.image)
    write_image(tmp_path / "labels" / "eye.png", (s.vessels * 255).astype(np.uint8))
    return Pair(tmp_path / "in" / "eye.png", None, "none", PurePath("eye")), tmp_path


GEOMETRIES = [GeometrySettings(), GeometrySettings(write_mask=True),
              GeometrySettings(crop=True, resize=64, write_mask=True, labels=None)]


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("panels", [False, True])
def test_normalize_renders_the_roles_it_names(photo, geometry, panels):
    pair, tmp = photo
    step = NormalizeStep(tmp / "out", NormalizeSettings(window=15), MaskSettings(auto_mask=True),
                         panels_dir=tmp / "panels" if panels else None, geometry=geometry)
    made = step.render(pair)
    assert list(made.files) == list(step.outputs(pair))
    res = step(pair)
    assert res.status == Status.DONE and res.outputs == step.output_list(pair)
    assert all(p.is_file() for p in res.outputs)


def test_labels_role_with_and_without_the_mask(photo):
    pair, tmp = photo
    for write_mask in (False, True):
        step = FilterStep(tmp / f"f{write_mask}", FilterSettings("gaussian", sigma=2.0),
                          MaskSettings(auto_mask=True),
                          geometry=GeometrySettings(write_mask=write_mask, labels=tmp / "labels"))
        roles = list(step.outputs(pair))
        assert roles == (["image", "mask", "labels"] if write_mask else ["image", "labels"])
        res = step(pair)
        labels = read_image(step.outputs(pair)["labels"])
        # the labels, not the mask
        np.testing.assert_array_equal(labels, read_image(tmp / "labels" / "eye.png"))
        assert res.outputs == step.output_list(pair)


def test_rendered_bytes_are_the_file_the_batch_writes(photo):
    pair, tmp = photo
    geometry = GeometrySettings(crop=True, resize=64)
    step = NormalizeStep(tmp / "out", NormalizeSettings(window=15), MaskSettings(auto_mask=True),
                         geometry=geometry)
    data = NormalizeStep(None, step.settings, step.mask_settings,
                         geometry=geometry).render(pair).data("image")
    (path,) = step(pair).outputs
    assert path.read_bytes() == data
    assert read_image(path).shape[:2] == (64, 64)


def test_steps_pickle_for_workers_and_agree_with_one_process(photo):
    pair, tmp = photo
    pairs = []
    for i in range(4):
        write_image(tmp / "many" / f"{i}.png", synthetic_fundus((120, 130), seed=i).image)
        pairs.append(Pair(tmp / "many" / f"{i}.png", None, "none", PurePath(str(i))))
    outs = {}
    for jobs in (1, 2):
        step = NormalizeStep(tmp / f"j{jobs}", NormalizeSettings(window=15),
                             MaskSettings(auto_mask=True))
        results = list(run_batch(pairs, step, jobs=jobs))
        assert [r.status for r in results] == [Status.DONE] * 4
        outs[jobs] = [r.outputs[0].read_bytes() for r in results]
    assert outs[1] == outs[2]
    assert pickle.loads(pickle.dumps(MaskStep(tmp / "m"))).outputs(pair) == {
        "mask": tmp / "m" / "eye_mask.png"}


def test_products_carry_what_is_not_a_file(photo):
    pair, tmp = photo
    res = MaskStep(tmp / "m", thumb_width=60)(pair)
    assert res.products["thumb"].shape[1] == 60 and "thumb" not in res.info
    ev = EvaluateStep(window=15, mask_settings=MaskSettings(auto_mask=True), labels=None)
    res = ev(pair)
    assert res.outputs == [] and "evaluation" in res.products and "evaluation" not in res.info
    fig = CompareStep(tmp / "c", kernel="gaussian", sigma=2.0,
                      mask_settings=MaskSettings(auto_mask=True))
    assert fig.outputs(pair) == {"figure": tmp / "c" / "eye.png"}
    assert fig(pair).outputs == [tmp / "c" / "eye.png"]


def test_the_library_call_is_the_step(photo):
    pair, tmp = photo
    a = normalize_pair(pair, tmp / "a", NormalizeSettings(window=15), MaskSettings(auto_mask=True))
    b = NormalizeStep(tmp / "b", NormalizeSettings(window=15), MaskSettings(auto_mask=True),
                      caches=Caches())(pair)
    assert a.outputs[0].read_bytes() == b.outputs[0].read_bytes()
    assert a.info == b.info


def test_a_rendered_step_writes_nothing(photo):
    pair, tmp = photo
    step = NormalizeStep(tmp / "out", NormalizeSettings(window=15), MaskSettings(auto_mask=True),
                         output_settings=OutputSettings())
    step.render(pair)
    assert not (tmp / "out").exists()
    with pytest.raises(ValueError, match="only rendered"):
        NormalizeStep(None).outputs(pair)
    assert isinstance(Path(step.outputs(pair)["image"]), Path)
