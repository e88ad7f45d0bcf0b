"""Typed results: a status enum, errors and warnings with stable codes, the path and the
parameters; the CLI words its advice by code, never by the library's prose."""

import json
import pickle

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from retina_prep.batch import Result, Status, run_one
from retina_prep.cli.main import cli
from retina_prep.cli.runner import _ADVICE, cli_wording, notice_wording
from retina_prep.dataset import Pair
from retina_prep.errors import (
    ImageTooLargeError,
    Notice,
    OutputExistsError,
    RetinaPrepError,
    ValueRangeError,
)


def test_status_is_an_enum_that_reads_as_the_manifest_word():
    r = Result(Pair("a.png", None, "estimated", None), "done")
    assert r.status is Status.DONE and r.status == "done"
    assert f"{r.status}" == "done" and json.dumps({"s": r.status}) == '{"s": "done"}'
    with pytest.raises(ValueError):
        Result(Pair("a.png", None, "estimated", None), "finished")


def test_errors_and_notices_keep_code_path_params_through_pickling():
    """(What a worker process sends back.)"""
    e = ImageTooLargeError("image has 9 pixels, above the limit of 4", "big.png",
                           advice="raise max_pixels if the file is trusted", pixels=9, limit=4)
    e2 = pickle.loads(pickle.dumps(e))
    assert type(e2) is ImageTooLargeError and e2.code == "too-large"
    assert (e2.path, e2.pixels, e2.limit, e2.params) == ("big.png", 9, 4, {"pixels": 9, "limit": 4})
    assert str(e2) == str(e) == ("big.png: image has 9 pixels, above the limit of 4 (raise"
                                 " max_pixels if the file is trusted)")
    n = Notice("few-bits", "16-bit image with 12-bit values", "a.tif", advice="library words",
               bits=12, high=4095)
    n2 = pickle.loads(pickle.dumps(n))
    assert n2 == n and n2.params == {"bits": 12, "high": 4095} and n2.code == "few-bits"


def test_cli_advice_is_keyed_on_the_code_not_the_text():
    """Rewording a library message (or its advice) changes nothing the CLI adds."""
    n = Notice("order1-untrimmed", "any wording at all", "a.png", advice="any library advice")
    assert notice_wording(n) == "a.png: any wording at all; add --rim auto or --erode"
    n = Notice("few-bits", "whatever", "b.tif", advice="x", bits=10, high=1023)
    assert notice_wording(n) == "b.tif: whatever; if the data is 10-bit, add --value-range 0,1023"
    n = Notice("no-advice-for-this", "text", "c.png", advice="library advice")
    assert notice_wording(n) == "c.png: text; library advice"  # (the library's, for unknown codes)

    def fails(exc):
        def step(pair):
            raise exc
        return run_one(step, Pair("im.png", None, "estimated", None))

    r = fails(ValueRangeError("reworded", code="float-range", advice="lib"))
    assert r.error_code == "float-range" and r.status is Status.FAILED
    assert cli_wording(r) == f"im.png: reworded ({_ADVICE['float-range']})"
    r = fails(OutputExistsError("anything", "out/im.png"))
    assert r.error_code == "output-exists" and r.error_path == "out/im.png"
    assert cli_wording(r).endswith("(use --overwrite to replace it, or --skip-existing to keep it)")
    r = fails(RetinaPrepError("plain", "m.png"))
    assert cli_wording(r) == "m.png: plain" and r.error_code == "error"
    r = fails(OSError(5, "Input/output error", "x.png"))
    assert r.error_code == "os-error"


def test_every_cli_advice_code_is_raised_or_warned_by_the_library():
    """No advice for a code the library never uses (a renamed code would silently lose it)."""
    import pathlib

    import retina_prep

    src = "".join(p.read_text() for p in pathlib.Path(retina_prep.__file__).parent.rglob("*.py")
                  if "cli" not in p.parts)
    for code in _ADVICE:
        assert f'"{code}"' in src, code


def test_manifest_records_warning_codes_with_two_workers(tmp_path):
    """A batch of several images without masks, -j 2: each image's warnings are in the
    manifest with their codes, and the summary line counts them as one kind."""
    from retina_prep.synthetic import synthetic_fundus

    src = tmp_path / "in"
    src.mkdir()
    for i in range(3):
        cv2.imwrite(str(src / f"e{i}.png"), synthetic_fundus(seed=i).image[..., ::-1])
    r = CliRunner().invoke(cli, ["normalize", str(src), "-o", str(tmp_path / "out"), "-j", "2"])
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in (tmp_path / "out" / "manifest.jsonl").read_text().splitlines()]
    images = [x for x in lines if x.get("type") == "image"]
    assert len(images) == 3
    for x in images:
        assert x["status"] == "done" and "estimated-mask" in x["warning_codes"]
        assert len(x["warning_codes"]) == len(x["warnings"])
    assert "3 of 3 images: no mask found; using an estimated field of view" in r.output
    out = cv2.imread(str(tmp_path / "out" / "e0.png"))
    assert out is not None and np.isfinite(out).all()


def test_stdout_closed_early_is_an_error(tmp_path, monkeypatch):
    """``-o - | head -c 10``: when the reader goes away before the image is written, the
    command says the output is incomplete and exits 1 (it exited 0). (On a machine whose
    pipes take the whole image, nothing can tell; here the write raises as a closed pipe
    makes it.)"""
    import types

    import retina_prep.cli.normalize as mod
    from retina_prep.synthetic import synthetic_fundus

    cv2.imwrite(str(tmp_path / "eye.png"), synthetic_fundus().image[..., ::-1])

    class Closed:
        def write(self, data):
            raise BrokenPipeError(32, "Broken pipe")

        def flush(self):
            pass

    fake = types.SimpleNamespace(stdout=types.SimpleNamespace(buffer=Closed()),
                                 stderr=__import__("sys").stderr)
    monkeypatch.setattr(mod, "sys", fake)
    r = CliRunner().invoke(cli, ["normalize", str(tmp_path / "eye.png"), "-o", "-"])
    assert r.exit_code == 1
    assert "standard output was closed before the image was written" in r.output
    assert "eye.png" in r.output


def test_report_writers_are_library_calls(tmp_path):
    """evaluate's tables and files, and the bounds CSV, from the library (no click)."""
    from retina_prep.batch import Result, Status
    from retina_prep.reports import BOUNDS_COLUMNS, BoundsFile, markdown_report, write_reports

    summary = {"images": 1, "labelled_images": 0, "bands": ["0-2"],
               "bias": {"none": {"0-2": [1.0, 2.0, 3.0]}}, "edge_interior": {"none": 0.5},
               "pixels": {"none": {"0-2": 10}}, "auc": {}}
    assert "| none | +1.0/+2.0/+3.0 | 0.50 |" in markdown_report(summary)
    written = write_reports(summary, tmp_path / "rep")
    assert sorted(p.name for p in written) == ["auc.csv", "bias.csv", "report.json"]
    assert (tmp_path / "rep" / "bias.csv").read_text().splitlines()[1] == \
        "none,0-2,1.0000,2.0000,3.0000,10"
    with pytest.raises(RetinaPrepError) as info:
        BoundsFile(tmp_path / "rep" / "bias.csv" / "x.csv")  # (a file where a folder must be)
    assert info.value.code == "bounds-file"
    geometry = {"original_size": [10, 8], "output_size": [4, 4], "fov_centre": [5.0, 4.0],
                "fov_radius": 3.0, "fov_bounds": [2, 1, 8, 7], "crop": None,
                "matrix": [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]}
    with BoundsFile(tmp_path / "b.csv") as rows:
        for _ in range(2):  # a rerun of the same output keeps its last row
            rows(Result(Pair("a.png", None, "estimated", None), Status.DONE,
                        outputs=[tmp_path / "o.png"], info={"geometry": geometry}))
    lines = (tmp_path / "b.csv").read_text().splitlines()
    assert lines[0].split(",") == list(BOUNDS_COLUMNS) and len(lines) == 2
