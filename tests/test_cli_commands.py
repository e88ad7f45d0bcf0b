"""Every writing command, on several images, with worker processes; options shared by commands."""

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from retina_prep.cli.main import cli
from retina_prep.io import write_image
from retina_prep.synthetic import synthetic_fundus

from .helpers import make_drive


def invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def manifest_images(path):
    return [r for r in map(json.loads, path.open()) if r["type"] == "image"]


WRITERS = {
    "normalize": [],
    "normalize --panels": ["--panels", "{tmp}/panels"],
    "filter": ["--kernel", "gaussian", "--sigma", "2", "--write-weights"],
    "mask": [],
    "compare": ["--kernel", "sharpen"],
    "compare --normalize": ["--normalize"],
    "evaluate": [],
}


@pytest.mark.parametrize("name", list(WRITERS))
def test_every_writing_command_on_several_images_with_workers(tmp_path, name):
    root = make_drive(tmp_path / "D", 2, 2)
    cmd = name.split()[0]
    extra = [a.replace("{tmp}", str(tmp_path)) for a in WRITERS[name]]
    r = invoke(cmd, root, "-o", tmp_path / "out", "-j", "2", *extra)
    assert r.exit_code == 0, r.output
    assert "Traceback" not in r.output
    if cmd == "evaluate":
        assert (tmp_path / "out" / "report.json").is_file()
        return
    records = manifest_images(tmp_path / "out" / "manifest.jsonl")
    assert len(records) == 4 and all(rec["status"] == "done" for rec in records)
    for rec in records:
        assert rec["outputs"] and all(Path(o).is_file() for o in rec["outputs"])


def test_compare_single_figure_writes_no_manifest_beside_it(tmp_path):
    root = make_drive(tmp_path / "D", 1, 0)
    img = next((root / "training" / "images").iterdir())
    r = invoke("compare", img, "-o", tmp_path / "fig.png")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["D", "fig.png"]
    r = invoke("compare", img, "-o", tmp_path / "fig2.png", "--manifest", tmp_path / "m.jsonl")
    assert r.exit_code == 0 and len(manifest_images(tmp_path / "m.jsonl")) == 1


def test_inset_outside_the_image_is_one_line(tmp_path):
    root = make_drive(tmp_path / "D", 1, 0)
    img = next((root / "training" / "images").iterdir())
    r = invoke("compare", img, "-o", tmp_path / "fig.png", "--inset", "9999,10,80")
    assert r.exit_code == 1
    errs = [x for x in r.output.splitlines() if x.startswith("error:")]
    assert len(errs) == 1 and "does not fit" in errs[0]
    assert not (tmp_path / "fig.png").exists()


def test_evaluate_refuses_gray_level_labels(tmp_path):
    root = make_drive(tmp_path / "D", 1, 0)
    img = next((root / "training" / "images").iterdir())
    labels = tmp_path / "labels"
    ramp = np.tile(np.linspace(0, 255, 110), (120, 1)).astype(np.uint8)
    write_image(labels / (img.stem + ".png"), ramp)
    r = invoke("evaluate", img, "-o", tmp_path / "rep", "--labels", labels, "--mask-dir",
               root / "training" / "mask")
    assert r.exit_code == 1 and "not binary" in r.output


def test_pairs_and_dry_run_share_columns(tmp_path):
    root = make_drive(tmp_path / "D", 1, 1)
    pairs = invoke("pairs", root).output.splitlines()
    plan = invoke("normalize", root, "-o", tmp_path / "o", "--dry-run").output.splitlines()
    assert pairs[0].split("\t")[:3] == plan[0].split("\t")[:3]
    for a, b in zip(pairs[1:], plan[1:]):
        ia, ib = a.split("\t"), b.split("\t")
        assert ia[:3] == ib[:3]
        assert ib[3] == str(tmp_path / "o" / ia[4]) + ".png"


def test_per_image_warnings_are_counted_once_and_listed_with_v(tmp_path):
    for i in range(3):
        write_image(tmp_path / "in" / f"e{i}.png",
                    synthetic_fundus((90, 100), seed=i).image)
    r = invoke("normalize", tmp_path / "in", "-o", tmp_path / "a", "-j", "2")
    lines = [x for x in r.output.splitlines() if x.startswith("warning:")]
    assert r.exit_code == 0 and len(lines) == 1 and "3 of 3 images: no mask found" in lines[0]
    recs = manifest_images(tmp_path / "a" / "manifest.jsonl")
    assert all(any("no mask found" in w for w in rec["warnings"]) for rec in recs)
    r = invoke("normalize", tmp_path / "in", "-o", tmp_path / "b", "-v")
    assert len([x for x in r.output.splitlines() if x.startswith("warning:")]) == 4
    r = invoke("normalize", tmp_path / "in", "-o", tmp_path / "c", "-q")
    assert r.exit_code == 0 and r.output == ""
