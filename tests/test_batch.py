"""Batch behaviour: workers, resume, manifest, shell pipelines, shards, layouts, bad inputs."""

import json
import os
import time

import cv2
import imageio.v3 as iio
import numpy as np
import pytest
from click.testing import CliRunner

from retina_prep.cli.main import cli
from retina_prep.dataset import find_label, find_pairs, shard_pairs
from retina_prep.io import read_image, write_image

from .helpers import make_drive, make_image, make_mask


def invoke(*args, input=None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)


def _pngs(folder):
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*.png"))


def _manifest(folder, name="manifest.jsonl"):
    return [json.loads(line) for line in (folder / name).read_text().splitlines()]


def test_jobs_give_identical_outputs_and_ordered_manifest(tmp_path):
    root = make_drive(tmp_path / "D", 3, 3)
    r1 = invoke("normalize", root, "-o", tmp_path / "j1", "-j", 1, "--window", 9)
    r2 = invoke("normalize", root, "-o", tmp_path / "j2", "-j", 2, "--window", 9)
    assert r1.exit_code == r2.exit_code == 0
    assert _pngs(tmp_path / "j1") == _pngs(tmp_path / "j2")
    for rel in _pngs(tmp_path / "j1"):
        assert np.array_equal(read_image(tmp_path / "j1" / rel), read_image(tmp_path / "j2" / rel))
    lines = _manifest(tmp_path / "j2")
    assert lines[0]["type"] == "run" and lines[0]["version"] and lines[0]["config"]["window"] == 9
    images = [line for line in lines if line["type"] == "image"]
    assert [line["input"] for line in images] == sorted(line["input"] for line in images)
    first = images[0]
    assert first["status"] == "done" and first["mask_source"] == "dataset"
    assert first["outputs"][0].endswith(".png") and first["seconds"] >= 0
    assert first["params"]["window"] == 9


def test_skip_existing_resumes_and_appends(tmp_path):
    root = make_drive(tmp_path / "D", 2, 2)
    out = tmp_path / "o"
    assert invoke("normalize", root, "-o", out).exit_code == 0
    (out / "test" / "02_test.png").unlink()
    r = invoke("normalize", root, "-o", out, "--skip-existing")
    assert r.exit_code == 0 and "1 done, 0 failed, 3 skipped" in r.output
    assert len(_pngs(out)) == 4
    lines = _manifest(out)
    assert sum(line["type"] == "run" for line in lines) == 2
    assert [line["status"] for line in lines if line["type"] == "image"].count("done") == 5


def test_stale_temporaries_are_removed(tmp_path):
    make_image(tmp_path / "in" / "a.png")
    out = tmp_path / "o"
    out.mkdir()
    stale = out / ".retina-prep-tmp-abcd1234.part"
    stale.write_bytes(b"partial")
    foreign = out / ".a.png.abcd1234.part"  # not ours: never touched
    foreign.write_bytes(b"someone else's")
    old = time.time() - 3600
    for f in (stale, foreign):
        os.utime(f, (old, old))
    assert invoke("normalize", tmp_path / "in", "-o", out, "--auto-mask").exit_code == 0
    assert not stale.exists() and foreign.exists()
    assert not list(out.glob(".retina-prep-tmp-*"))


def test_files_from_print_outputs_and_null(tmp_path):
    root = make_drive(tmp_path / "D", 2, 0)
    imgs = sorted(str(p) for p in (root / "training" / "images").iterdir())
    listing = tmp_path / "list.txt"
    listing.write_text("\n".join(imgs) + "\n")
    r = CliRunner().invoke(cli, ["normalize", "--files-from", str(listing), "-o", str(tmp_path / "o"),
                                 "--print-outputs", "-q"])
    assert r.exit_code == 0
    assert r.stdout.splitlines() == [str(tmp_path / "o" / "21_training.png"),
                                     str(tmp_path / "o" / "22_training.png")]
    r = CliRunner().invoke(cli, ["normalize", "--files-from", "-", "-0", "-o", str(tmp_path / "p"),
                                 "-q"], input="\0".join(imgs) + "\0")
    assert r.exit_code == 0 and len(_pngs(tmp_path / "p")) == 2


def test_stdout_single_image(tmp_path):
    m = make_image(tmp_path / "eye.png")
    make_mask(tmp_path / "eye_mask.png", m)
    r = CliRunner().invoke(cli, ["normalize", str(tmp_path / "eye.png"), "-o", "-"])
    assert r.exit_code == 0
    data = r.stdout_bytes
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
    assert invoke("normalize", tmp_path / "eye.png", "-o", tmp_path / "o").exit_code == 0
    assert np.array_equal(img[..., ::-1], read_image(tmp_path / "o" / "eye.png"))
    r = invoke("normalize", tmp_path, "-o", "-")
    assert r.exit_code == 2
    # without a mask file: its warning on stderr, or with -q nothing there (it ignored -q)
    (tmp_path / "eye_mask.png").unlink()
    r = CliRunner().invoke(cli, ["normalize", str(tmp_path / "eye.png"), "-o", "-"])
    assert r.exit_code == 0 and r.stderr.startswith("warning:") and "estimated" in r.stderr
    r = CliRunner().invoke(cli, ["normalize", str(tmp_path / "eye.png"), "-o", "-", "-q"])
    assert r.exit_code == 0 and r.stderr == "" and r.stdout_bytes[:4] == b"\x89PNG"


def test_dry_run_writes_nothing(tmp_path):
    root = make_drive(tmp_path / "D", 1, 1)
    r = CliRunner().invoke(cli, ["normalize", str(root), "-o", str(tmp_path / "o"), "--dry-run"])
    assert r.exit_code == 0
    rows = r.stdout.splitlines()
    assert rows[0] == "image\tmask\tmask_source\toutputs" and len(rows) == 3
    assert "01_test_mask.gif" in rows[1] and rows[1].endswith("01_test.png")
    assert not (tmp_path / "o").exists()


def test_shards_cover_every_input_once(tmp_path):
    root = make_drive(tmp_path / "D", 5, 5)
    pairs = find_pairs([root])
    shards = [shard_pairs(pairs, k, 3) for k in (1, 2, 3)]
    got = sorted(str(p.rel) for s in shards for p in s)
    assert got == sorted(str(p.rel) for p in pairs)
    # stable under reordering of the inputs
    again = shard_pairs(list(reversed(pairs)), 2, 3)
    assert sorted(str(p.rel) for p in again) == sorted(str(p.rel) for p in shards[1])
    for k in (1, 2, 3):
        r = invoke("normalize", root, "-o", tmp_path / "o", "--shard", f"{k}/3", "-q")
        assert r.exit_code == 0
        assert (tmp_path / "o" / f"manifest.shard-{k}-of-3.jsonl").exists()
    assert len(_pngs(tmp_path / "o")) == 10
    assert invoke("normalize", root, "-o", tmp_path / "x", "--shard", "4/3").exit_code == 2


def test_hrf_chase_stare_idrid_layouts(tmp_path):
    hrf = tmp_path / "HRF"
    m = make_image(hrf / "images" / "01_dr.png")
    (hrf / "images" / "01_dr.png").rename(hrf / "images" / "01_dr.JPG")
    make_mask(hrf / "mask" / "01_dr_mask.tif", m)
    make_mask(hrf / "manual1" / "01_dr.tif", m)
    (p,) = find_pairs([hrf])
    assert p.mask.name == "01_dr_mask.tif" and find_label(p.image).parent.name == "manual1"

    chase = tmp_path / "CHASE"
    make_image(chase / "Image_01L.png")
    (chase / "Image_01L.png").rename(chase / "Image_01L.jpg")
    make_mask(chase / "Image_01L_1stHO.png", m)
    make_mask(chase / "Image_01L_2ndHO.png", m)
    (p,) = find_pairs([chase])
    assert p.image.name == "Image_01L.jpg" and p.mask is None
    assert find_label(p.image).name == "Image_01L_1stHO.png"

    stare = tmp_path / "STARE"
    make_image(stare / "im0001.png")
    write_image(stare / "im0001.png", read_image(stare / "im0001.png"), overwrite=True)
    iio.imwrite(stare / "im0001.ppm", read_image(stare / "im0001.png"))
    (stare / "im0001.png").unlink()
    iio.imwrite(stare / "im0001.ah.ppm", np.dstack([m.astype(np.uint8) * 255] * 3))
    iio.imwrite(stare / "im0001.vk.ppm", np.dstack([m.astype(np.uint8) * 255] * 3))
    (p,) = find_pairs([stare])
    assert p.image.name == "im0001.ppm" and find_label(p.image).name == "im0001.ah.ppm"

    idrid = tmp_path / "IDRiD"
    make_image(idrid / "1. Original Images" / "a. Training Set" / "IDRiD_01.png")
    make_mask(idrid / "2. All Segmentation Groundtruths" / "a. Training Set" / "1. Microaneurysms"
              / "IDRiD_01_MA.png", m)
    (p,) = find_pairs([idrid])
    assert p.image.name == "IDRiD_01.png"

    r = CliRunner().invoke(cli, ["pairs", str(tmp_path / "CHASE")])
    assert r.exit_code == 0 and "CHASE_DB1" in r.stderr
    assert r.stdout.splitlines()[1].split("\t")[1] == "-"


def test_every_bad_input_one_line_and_the_rest_written(tmp_path):
    d = tmp_path / "in"
    m = make_image(d / "good.png", seed=1)
    (d / "zero.png").write_bytes(b"")
    good = (d / "good.png").read_bytes()
    (d / "truncated.png").write_bytes(good[: len(good) // 3])
    (d / "text.tif").write_text("not an image")
    (d / "fake.jp2").write_bytes(b"\x00\x00\x00\x0cjP  \r\n\x87\n garbage")
    rgba = np.dstack([read_image(d / "good.png"), np.full(m.shape, 255, np.uint8)])
    iio.imwrite(d / "rgba.png", rgba)
    make_image(d / "wrongmask.png", seed=2)
    make_mask(d / "wrongmask_mask.png", np.ones((10, 10), bool))
    make_image(d / "emptymask.png", seed=3)
    make_mask(d / "emptymask_mask.png", np.zeros_like(m))
    make_image(d / "with space ü.png", seed=4)
    gray = read_image(d / "good.png")[..., 1]
    write_image(d / "gray.png", gray)
    write_image(d / "deep16.png", gray.astype(np.uint16) * 257)
    out = tmp_path / "out"
    r = invoke("normalize", d, "-o", out, "--auto-mask", "--window", 9)
    assert r.exit_code == 1
    errors = [line for line in r.output.splitlines() if line.startswith("error:")]
    bad = {"zero.png", "truncated.png", "text.tif", "fake.jp2"}
    assert len(errors) == len(bad)
    for name in bad:
        assert sum(name in e for e in errors) == 1
    written = set(_pngs(out))
    assert {"good.png", "rgba.png", "wrongmask.png", "emptymask.png", "with space ü.png",
            "gray.png", "deep16.png"} <= written  # --auto-mask ignores the bad mask files
    assert read_image(out / "deep16.png").dtype == np.uint16
    assert read_image(out / "gray.png").ndim == 2
    # the mask problems, when masks are used
    r = invoke("normalize", d / "wrongmask.png", d / "emptymask.png", "-o", tmp_path / "o2")
    assert r.exit_code == 1 and "10x10 px" in r.output and "empty" in r.output


def test_decompression_bomb_refused_before_decoding(tmp_path):
    make_image(tmp_path / "big.png")
    r = invoke("normalize", tmp_path / "big.png", "-o", tmp_path / "o", "--max-pixels", 1000)
    assert r.exit_code == 1 and "--max-pixels" in r.output and "big.png" in r.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads everything")
def test_unreadable_input(tmp_path):
    make_image(tmp_path / "in" / "a.png")
    make_image(tmp_path / "in" / "b.png")
    (tmp_path / "in" / "a.png").chmod(0)
    r = invoke("normalize", tmp_path / "in", "-o", tmp_path / "o", "--auto-mask")
    assert r.exit_code == 1 and "permission denied" in r.output
    assert _pngs(tmp_path / "o") == ["b.png"]


def test_output_folder_inside_input_not_picked_up(tmp_path):
    d = tmp_path / "in"
    make_image(d / "a.png")
    for _ in range(2):
        r = invoke("normalize", d, "-o", d / "out", "--auto-mask", "--overwrite")
        assert r.exit_code == 0 and "1 done" in r.output
    r = invoke("normalize", d, "-o", d, "--auto-mask", "--overwrite")
    # the output folder is never searched: said as such, once (it said "no image files")
    assert r.exit_code == 2 and "the input folder is the output folder" in r.output
    r = invoke("normalize", d / "a.png", "-o", d, "--auto-mask", "--overwrite")
    assert r.exit_code == 1 and "overwrite an input" in r.output


def test_python_user_runs_and_resumes_a_batch_without_click(tmp_path):
    """The batch engine is library code: run, resume, manifest, collisions, no Click."""
    import json as _json
    from functools import partial

    from retina_prep.batch import process
    from retina_prep.dataset import find_pairs
    from retina_prep.pipeline import (
        NormalizeSettings,
        OutputSettings,
        normalize_outputs,
        normalize_pair,
    )

    for i in range(3):
        make_image(tmp_path / "in" / f"e{i}.png", seed=i)
    out = tmp_path / "out"
    settings = NormalizeSettings(window=11)
    pairs = find_pairs([tmp_path / "in"])
    output = OutputSettings(keep_existing=True)
    kw = dict(outputs_of=partial(normalize_outputs, outdir=out, output=output), outdir=out,
              manifest=out / "manifest.jsonl", jobs=2)
    step = partial(normalize_pair, outdir=out, settings=settings, output=output)
    assert [r.status for r in process(pairs, step, **kw)] == ["done"] * 3
    (out / "e1.png").unlink()
    assert [r.status for r in process(pairs, step, skip_existing=True, **kw)] == \
        ["skipped", "skipped", "done"]  # early results first, then the images that ran
    lines = [_json.loads(x) for x in (out / "manifest.jsonl").open()]
    assert [x["type"] for x in lines].count("run") == 2 and len(lines) == 8
    import subprocess
    import sys

    code = "import sys, retina_prep.batch, retina_prep.pipeline; assert 'click' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0  # the library has no Click


@pytest.mark.parametrize("argv,expected", [
    (["normalize", "in", "-o", "out", "-j", "3"], 3), (["normalize", "-j2"], 2),
    (["filter", "--jobs=4"], 4), (["mask", "--jobs", "1"], 1), (["normalize", "in"], None),
    (["normalize", "-j", "x"], None),
])
def test_jobs_read_from_the_command_line(argv, expected):
    from retina_prep._workers import _jobs_in

    assert _jobs_in(argv) == expected


def test_fork_server_starts_early_only_for_batch_runs_with_workers(monkeypatch):
    import retina_prep._workers as w

    started = []
    monkeypatch.setattr(w, "start_helpers", lambda ctx: started.append(ctx))
    monkeypatch.setattr(w, "default_jobs", lambda: 2)
    assert w.start_early(["normalize", "in", "-o", "out"]) and len(started) == 1
    for argv in (["normalize", "in", "-j", "1"], ["normalize", "--help"], ["pairs", "in"],
                 ["normalize", "in", "--dry-run"], [], ["bench"]):
        assert not w.start_early(argv)
    monkeypatch.setattr(w, "default_jobs", lambda: 1)
    assert not w.start_early(["normalize", "in"]) and len(started) == 1


def test_outputs_written_before_a_stop_are_recorded_from_the_files(tmp_path):
    import time as _time
    from pathlib import PurePath

    from retina_prep.batch import Batch, Status
    from retina_prep.dataset import Pair

    pairs = [Pair(tmp_path / f"{i}.png", None, "none", PurePath(str(i))) for i in range(3)]
    outs = {p: [tmp_path / "out" / f"{p.rel}.png"] for p in pairs}
    run = Batch(pairs, lambda p: None, outputs_of=lambda p: outs[p], outdir=tmp_path / "out")
    old = outs[pairs[0]][0]
    old.write_bytes(b"from an earlier run")
    started = _time.time() + 0.05
    _time.sleep(0.1)
    outs[pairs[1]][0].write_bytes(b"written in this run")  # pairs[2]: nothing written
    got = run._written_before_stop(pairs, started)
    assert [r.pair for r in got] == [pairs[1]] and got[0].status == Status.DONE
    assert got[0].outputs == outs[pairs[1]]
