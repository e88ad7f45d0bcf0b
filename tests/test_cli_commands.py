"""Every writing command, on several images, with worker processes; options shared by commands."""

import json
import os
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


def test_base_mirrors_files_given_one_by_one(tmp_path):
    for sub, ext in (("a", ".png"), ("b", ".tif"), ("patient X/left", ".png")):
        write_image(tmp_path / "arch" / sub / f"eye{ext}", synthetic_fundus((90, 100), seed=1).image)
    listing = "\n".join(str(p) for p in sorted((tmp_path / "arch").rglob("eye.*")))
    r = CliRunner().invoke(cli, ["normalize", "--files-from", "-", "--base", str(tmp_path / "arch"),
                                 "-o", str(tmp_path / "out"), "-j", "2"], input=listing)
    assert r.exit_code == 0, r.output
    got = sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*.png"))
    assert got == ["a/eye.png", "b/eye.png", "patient X/left/eye.png"]
    # without --base the names collide: every clashing image is reported, nothing overwritten
    r = CliRunner().invoke(cli, ["normalize", "--files-from", "-", "-o", str(tmp_path / "flat")],
                           input=listing)
    assert r.exit_code == 1 and "collides" in r.output
    r = invoke("normalize", tmp_path / "elsewhere.png", "--base", tmp_path / "arch", "-o", tmp_path / "x")
    assert r.exit_code == 2


def test_print0_survives_spaces_and_newlines(tmp_path):
    names = ["a b.png", "c\nd.png", "e.png"]
    for i, n in enumerate(names):
        write_image(tmp_path / "in" / n, synthetic_fundus((90, 100), seed=i).image)
    r = CliRunner().invoke(cli, ["normalize", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                                 "--print0", "-q", "-j", "2"])
    assert r.exit_code == 0
    printed = [p for p in r.stdout_bytes.split(b"\0") if p]
    assert sorted(os.path.basename(os.fsdecode(p)) for p in printed) == sorted(names)
    assert all(os.path.isfile(os.fsdecode(p)) for p in printed)


def test_shards_are_balanced_and_cover_everything():
    from pathlib import PurePath

    from retina_prep.dataset import Pair, shard_pairs

    pairs = [Pair(Path(f"/x/{i:03d}.png"), None, "none", PurePath(f"{i:03d}")) for i in range(40)]
    shards = [shard_pairs(pairs, k, 3) for k in (1, 2, 3)]
    assert sorted(len(s) for s in shards) == [13, 13, 14]
    assert sorted(p.rel for s in shards for p in s) == sorted(p.rel for p in pairs)
    shuffled = pairs[::-1]
    assert [set(p.rel for p in shard_pairs(shuffled, k, 3)) for k in (1, 2, 3)] == \
        [set(p.rel for p in s) for s in shards]


@pytest.mark.parametrize("env, arg, want", [
    ({"SLURM_ARRAY_TASK_ID": "2", "SLURM_ARRAY_TASK_MIN": "0", "SLURM_ARRAY_TASK_COUNT": "4"},
     "auto", (3, 4)),
    ({"SLURM_ARRAY_TASK_ID": "4", "SLURM_ARRAY_TASK_MIN": "1", "SLURM_ARRAY_TASK_COUNT": "4"},
     "auto", (4, 4)),
    ({"JOB_COMPLETION_INDEX": "0"}, "auto/5", (1, 5)),
    ({"AWS_BATCH_JOB_ARRAY_INDEX": "9"}, "auto/10", (10, 10)),
])
def test_shard_auto_reads_the_array_job(monkeypatch, tmp_path, env, arg, want):
    for var in ("SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_MIN", "SLURM_ARRAY_TASK_COUNT",
                "JOB_COMPLETION_INDEX", "AWS_BATCH_JOB_ARRAY_INDEX"):
        monkeypatch.delenv(var, raising=False)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    root = make_drive(tmp_path / "D", 2, 2)
    r = invoke("normalize", root, "-o", tmp_path / "o", "--shard", arg, "-j", "1")
    assert r.exit_code == 0, r.output
    k, n = want
    assert (tmp_path / "o" / f"manifest.shard-{k}-of-{n}.jsonl").is_file()


def test_shard_auto_without_an_array_job_is_a_usage_error(monkeypatch, tmp_path):
    for var in ("SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX", "AWS_BATCH_JOB_ARRAY_INDEX"):
        monkeypatch.delenv(var, raising=False)
    r = invoke("normalize", tmp_path, "-o", tmp_path / "o", "--shard", "auto")
    assert r.exit_code == 2 and "no array job" in r.output
    monkeypatch.setenv("JOB_COMPLETION_INDEX", "1")
    r = invoke("normalize", tmp_path, "-o", tmp_path / "o", "--shard", "auto")
    assert r.exit_code == 2 and "auto/N" in r.output


def test_presets_by_name_from_any_folder(tmp_path, monkeypatch):
    """--config drive works outside the repository; `presets` lists and prints them; a
    mistyped name says which presets exist."""
    from retina_prep.io import write_image
    from retina_prep.synthetic import synthetic_fundus

    monkeypatch.chdir(tmp_path)
    s = synthetic_fundus((150, 160), seed=2, background=4)
    write_image(tmp_path / "eye.png", s.image)
    write_image(tmp_path / "m.png", s.mask.astype(np.uint8) * 255)
    r = invoke("normalize", "eye.png", "--mask", "m.png", "-o", "out", "--config", "drive", "-q")
    assert r.exit_code == 0, r.output
    rec = [json.loads(x) for x in (tmp_path / "out" / "manifest.jsonl").open()][-1]
    assert rec["params"]["window"] == 41 and rec["params"]["order"] == 1
    r = invoke("presets")
    assert r.exit_code == 0 and {ln.split("\t")[0] for ln in r.output.splitlines()} >= {"default",
                                                                                       "drive"}
    r = invoke("presets", "drive")
    assert r.exit_code == 0 and "window = 41" in r.output
    r = invoke("normalize", "eye.png", "-o", "out2", "--config", "drvie")
    assert r.exit_code == 2 and "no preset of that name (presets: ben-graham, default, drive)" in r.output


def test_help_lists_every_command_as_click_would_without_importing_them():
    import subprocess
    import sys

    from retina_prep.cli.main import COMMANDS, cli

    code = ("import sys; sys.argv = ['retina-prep', '--help']\n"
            "from retina_prep.cli.entry import main\n"
            "try:\n    main()\nexcept SystemExit:\n    pass\n"
            "heavy = [m for m in ('cv2', 'numpy', 'retina_prep.pipeline') if m in sys.modules]\n"
            "print('HEAVY', heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout, out.stdout[-300:]
    # the lines --help reads from the source are the ones click makes from the commands
    ctx = cli.make_context("retina-prep", [], resilient_parsing=True)
    for name in COMMANDS:
        cmd = cli.get_command(ctx, name)
        want = cmd.get_short_help_str(ctx.make_formatter().width - 6 - max(map(len, COMMANDS)))
        assert f"  {name} " in out.stdout
        line = next(x for x in out.stdout.splitlines() if x.startswith(f"  {name} "))
        assert line.split(None, 1)[1] == want, name
