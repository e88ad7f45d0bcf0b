"""Hostile input and faults: every promise holds (one line per bad file, no damage, resumable)."""

import hashlib
import json
import os
import resource
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from retina_prep.cli.main import cli
from retina_prep.errors import ImageReadError
from retina_prep.io import read_image, read_mask, write_image

from .helpers import make_image


def invoke(*args, input=None):
    return CliRunner().invoke(cli, [str(a) for a in args], input=input, catch_exceptions=False)


def error_lines(output):
    return [line for line in output.splitlines() if line.startswith("error:")]


def _png_header_only(path, w, h):
    """A tiny PNG whose header declares w x h pixels (a decompression bomb's header)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", w, h, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _checksums(folder):
    return {p: hashlib.sha1(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


@pytest.mark.parametrize("side", [15000, 60000])
def test_pixel_bomb_refused_from_the_header_with_small_memory(tmp_path, side):
    bomb = tmp_path / "bomb.png"
    _png_header_only(bomb, side, side)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(ImageReadError, match="above the limit"):
        read_image(bomb)
    with pytest.raises(Exception, match="above the limit"):
        read_mask(bomb)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    assert grown_mb < 100


def test_special_files_are_refused_not_read(tmp_path):
    src = tmp_path / "in"
    make_image(src / "good.png")
    os.mkfifo(src / "x.png")
    os.symlink("/dev/zero", src / "z.png")
    os.symlink(src / "loop.png", src / "loop.png")  # a symlink loop
    r = invoke("normalize", src, "-o", tmp_path / "out", "--auto-mask", "-j", "2")
    assert r.exit_code == 1
    errs = error_lines(r.output)
    assert len(errs) == 3, r.output
    assert any("x.png" in e and "regular file" in e for e in errs)
    assert any("z.png" in e and "regular file" in e for e in errs)
    assert any("loop.png" in e for e in errs)
    assert (tmp_path / "out" / "good.png").is_file()


def test_panels_equal_to_output_is_refused(tmp_path):
    make_image(tmp_path / "in" / "a.png")
    make_image(tmp_path / "in" / "b.png")
    out = tmp_path / "out"
    r = invoke("normalize", tmp_path / "in", "-o", out, "--panels", out, "--auto-mask")
    # a usage error, once, before anything is written (it failed image by image)
    assert r.exit_code == 2 and "is the output folder" in r.output
    assert not out.exists()


def test_manifest_may_not_be_an_input(tmp_path):
    make_image(tmp_path / "in" / "a.png")
    before = _checksums(tmp_path / "in")
    r = invoke("normalize", tmp_path / "in", "-o", tmp_path / "out", "--auto-mask",
               "--manifest", tmp_path / "in" / "a.png")
    assert r.exit_code == 2 and "manifest" in r.output
    assert _checksums(tmp_path / "in") == before


def test_skip_existing_does_not_count_a_folder_as_done(tmp_path):
    make_image(tmp_path / "in" / "a.png")
    (tmp_path / "out" / "a.png").mkdir(parents=True)
    r = invoke("normalize", tmp_path / "in", "-o", tmp_path / "out", "--auto-mask", "--skip-existing")
    assert r.exit_code == 1 and "0 skipped" in r.output and "a.png" in r.output


def test_duplicate_inputs_processed_once(tmp_path):
    make_image(tmp_path / "a.png")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{tmp_path / 'a.png'}\n{tmp_path / 'a.png'}\n")
    r = invoke("normalize", "--files-from", listing, "-o", tmp_path / "out", "--auto-mask")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out" / "a.png").is_file()


def test_missing_path_in_files_from_is_one_failed_input(tmp_path):
    make_image(tmp_path / "a.png")
    listing = tmp_path / "list.txt"
    listing.write_text(f"{tmp_path / 'gone.png'}\n{tmp_path / 'a.png'}\n")
    r = invoke("normalize", "--files-from", listing, "-o", tmp_path / "out", "--auto-mask")
    assert r.exit_code == 1
    assert len(error_lines(r.output)) == 1 and "gone.png" in r.output
    assert (tmp_path / "out" / "a.png").is_file()


def test_non_utf8_name_with_shard(tmp_path):
    name = os.fsdecode(b"caf\xe9.png")
    make_image(tmp_path / "in" / name)
    codes = [invoke("normalize", tmp_path / "in", "-o", tmp_path / "out", "--auto-mask",
                    "--shard", f"{k}/2").exit_code for k in (1, 2)]
    assert codes == [0, 0]
    assert len(list((tmp_path / "out").glob("*.png"))) == 1


def test_newline_in_a_name_stays_on_one_line(tmp_path):
    bad = tmp_path / "in" / "a\nb.png"
    bad.parent.mkdir()
    bad.write_bytes(b"not an image")
    r = invoke("normalize", tmp_path / "in", "-o", tmp_path / "out", "--auto-mask")
    assert r.exit_code == 1
    errs = error_lines(r.output)
    assert len(errs) == 1 and "a\\nb.png" in errs[0]


def test_long_names_fit(tmp_path):
    name = "x" * 240 + ".png"
    make_image(tmp_path / "in" / name)
    r = invoke("normalize", tmp_path / "in", "-o", tmp_path / "out", "--auto-mask")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "out" / name).is_file()


def test_concurrent_write_never_replaces_without_overwrite(tmp_path):
    from retina_prep.errors import OutputExistsError
    from retina_prep.io import write_bytes

    p = tmp_path / "o.png"
    write_bytes(p, b"first")
    with pytest.raises(OutputExistsError):
        write_bytes(p, b"second")
    assert p.read_bytes() == b"first"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["o.png"]


def test_manifest_write_failure_is_one_line(tmp_path):
    """/dev/full: every write fails with ENOSPC, like a full disk."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    make_image(tmp_path / "in" / "a.png")
    r = invoke("normalize", tmp_path / "in", "-o", tmp_path / "out", "--auto-mask",
               "--manifest", "/dev/full")
    assert r.exit_code == 1
    assert "manifest" in r.output and "Traceback" not in r.output
    assert (tmp_path / "out" / "a.png").is_file()


@pytest.mark.parametrize("extra", [[], ["--normalize"], ["--kernel", "mean"]])
def test_compare_with_workers_on_several_images(tmp_path, extra):
    for i in range(3):
        make_image(tmp_path / "in" / f"e{i}.png", seed=i)
    r = invoke("compare", tmp_path / "in", "-o", tmp_path / "figs", "--auto-mask", "-j", "2", *extra)
    assert r.exit_code == 0, r.output
    assert len(list((tmp_path / "figs").glob("e*.png"))) == 3


def test_outputs_of_an_image_succeed_or_fail_together(tmp_path):
    """The panel cannot be written (a file where its folder should be): no image output either."""
    for name in ("a.png", "b.png"):
        make_image(tmp_path / "in" / "sub" / name)
    (tmp_path / "panels").mkdir()
    (tmp_path / "panels" / "sub").write_text("a file where a folder is expected")
    args = ["normalize", tmp_path / "in", "-o", tmp_path / "out", "--auto-mask",
            "--panels", tmp_path / "panels", "-j", "2"]
    r = invoke(*args)
    assert r.exit_code == 1
    assert len(error_lines(r.output)) == 2
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file() and p.suffix == ".png"]
    assert not list(tmp_path.rglob(".retina-prep-tmp-*"))
    # fixed, a resumed run completes them
    (tmp_path / "panels" / "sub").unlink()
    r = invoke(*args, "--skip-existing")
    assert r.exit_code == 0, r.output
    assert sorted(p.name for p in (tmp_path / "panels" / "sub").iterdir()) == ["a.png", "b.png"]


def test_skip_existing_completes_an_image_whose_outputs_are_partly_there(tmp_path):
    make_image(tmp_path / "in" / "a.png")
    base = ["normalize", tmp_path / "in", "-o", tmp_path / "out", "--auto-mask"]
    assert invoke(*base).exit_code == 0
    out = tmp_path / "out" / "a.png"
    before = (out.stat().st_ino, out.read_bytes())
    r = invoke(*base, "--panels", tmp_path / "panels", "--skip-existing")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "panels" / "a.png").is_file()
    assert (out.stat().st_ino, out.read_bytes()) == before  # kept, not rewritten
    r = invoke(*base, "--panels", tmp_path / "panels", "--skip-existing")
    assert "1 skipped" in r.output


def test_write_outputs_is_all_or_nothing(tmp_path):
    from retina_prep.io import write_outputs

    def boom():
        raise ValueError("encoder failed")

    with pytest.raises(ValueError):
        write_outputs([(tmp_path / "a.bin", b"a"), (tmp_path / "b.bin", boom)])
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "c.bin").mkdir()  # the second target cannot be replaced
    with pytest.raises(OSError):
        write_outputs([(tmp_path / "a.bin", b"a"), (tmp_path / "c.bin", b"c")], overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.bin"]


def test_float_tiff_out_of_range_and_nan(tmp_path):
    """A float TIFF in 8-bit units is refused with advice; with --value-range it matches uint8,
    and NaN pixels are treated as outside the field of view (no spreading)."""
    from retina_prep.io import write_image

    mask = make_image(tmp_path / "u" / "a.png")
    img = read_image(tmp_path / "u" / "a.png")
    f = img.astype(np.float32)
    f[60:63, 50:53] = np.nan
    write_image(tmp_path / "f" / "a.tif", f)
    r = invoke("normalize", tmp_path / "f" / "a.tif", "-o", tmp_path / "out_f", "--auto-mask")
    assert r.exit_code == 1
    errs = error_lines(r.output)
    assert len(errs) == 1 and "a.tif" in errs[0] and "--value-range 0,255" in errs[0]
    assert not list((tmp_path / "out_f").glob("*.tif"))
    ref = tmp_path / "ref"
    assert invoke("normalize", tmp_path / "u" / "a.png", "-o", ref, "--auto-mask").exit_code == 0
    r = invoke("normalize", tmp_path / "f" / "a.tif", "-o", tmp_path / "out_f", "--auto-mask",
               "--value-range", "0,255", "--format", "tif")
    assert r.exit_code == 0, r.output
    out = read_image(tmp_path / "out_f" / "a.tif")
    want = read_image(ref / "a.png").astype(np.float32)  # the output keeps the range 0..255
    assert np.isfinite(out).all()
    assert (out[60:63, 50:53] == 0).all()
    far = np.ones(mask.shape, bool)
    far[45:78, 35:68] = False  # beyond a window of the NaN block the result is the same
    inside = far & (want.max(axis=-1) > 0) & (out.max(axis=-1) > 0)
    assert inside.sum() > 1000
    assert np.abs(out - want)[inside].max() <= 0.5 + 1e-3  # the PNG is the same value rounded


def test_library_noise_is_silenced_one_line_per_file(tmp_path):
    """Truncated PNG/TIFF make OpenCV log [WARN]/[ERROR] lines on the C level: a real process."""
    import cv2

    good = make_image(tmp_path / "in" / "ok.png")
    data = cv2.imencode(".tif", (good * 200).astype(np.uint8))[1].tobytes()
    (tmp_path / "in" / "w.tif").write_bytes(data[:300])
    png = (tmp_path / "in" / "ok.png").read_bytes()
    (tmp_path / "in" / "t.png").write_bytes(png[:3000])
    # cut in the pixel data, libpng itself prints 'libpng error: ...' on file descriptor 2
    (tmp_path / "in" / "half.png").write_bytes(png[: len(png) // 2])
    # bytes changed in the middle of the scan: libjpeg prints 'Corrupt JPEG data: ...' and
    # returns an image with a gray or garbled part, which must not be taken for the photograph
    jpg = bytearray(cv2.imencode(".jpg", (good * 200).astype(np.uint8))[1].tobytes())
    for i in range(len(jpg) // 3, len(jpg) // 3 + 200):
        jpg[i] ^= 0x5A
    (tmp_path / "in" / "c.jpg").write_bytes(bytes(jpg))
    proc = subprocess.run([sys.executable, "-m", "retina_prep", "normalize", str(tmp_path / "in"),
                           "-o", str(tmp_path / "out"), "--auto-mask", "-j", "2"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    errors = error_lines(proc.stderr)
    assert len(errors) == 4, proc.stderr
    assert all(line.startswith(("error:", "normalize:")) for line in lines), proc.stderr
    assert any("c.jpg: damaged image data" in e and "Corrupt JPEG data" in e for e in errors)
    assert any("half.png" in e and "libpng error" in e for e in errors)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["ok.png"]


def test_decoder_messages_captured_only_when_asked(tmp_path, monkeypatch, capfd):
    """The library leaves file descriptor 2 alone unless the command line's switch is set; with
    it, a JPEG that libjpeg reports as corrupt is refused, naming the file."""
    import cv2

    from retina_prep.io import CAPTURE_ENV

    img = (np.arange(64 * 64 * 3) % 251).astype(np.uint8).reshape(64, 64, 3)
    jpg = bytearray(cv2.imencode(".jpg", img)[1].tobytes())
    for i in range(len(jpg) // 3, len(jpg) // 3 + 100):
        jpg[i] ^= 0x5A
    path = tmp_path / "c.jpg"
    path.write_bytes(bytes(jpg))
    monkeypatch.delenv(CAPTURE_ENV, raising=False)
    assert read_image(path).shape == (64, 64, 3)  # libjpeg's own line goes where it goes
    monkeypatch.setenv(CAPTURE_ENV, "1")
    capfd.readouterr()
    with pytest.raises(ImageReadError, match="c.jpg.*damaged image data.*Corrupt JPEG data"):
        read_image(path)
    assert capfd.readouterr().err == ""  # captured, not printed
    good = tmp_path / "g.png"
    cv2.imwrite(str(good), img)
    assert read_image(good).shape == (64, 64, 3)  # and file descriptor 2 is back
    os.write(2, b"still here\n")
    assert capfd.readouterr().err == "still here\n"


def _run_processes(marker: str) -> list[int]:
    """PIDs of live processes whose environment holds ``marker`` (the run and all it started)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as fh:
                env = fh.read()
            with open(f"/proc/{entry}/stat", "rb") as fh:
                state = fh.read().rsplit(b")", 1)[1].split()[0]
        except OSError:
            continue
        if marker.encode() in env and state != b"Z":
            pids.append(int(entry))
    return pids


def _describe_process(pid: int) -> str:
    """A leftover process: its command line, state, parent and signal dispositions."""
    try:
        cmd = open(f"/proc/{pid}/cmdline", "rb").read()[:120].replace(b"\0", b" ").decode()
        status = open(f"/proc/{pid}/status").read().splitlines()
    except OSError:
        return f"{pid} (gone)"
    keep = [x for x in status if x.split(":")[0] in ("State", "PPid", "SigBlk", "SigIgn", "SigCgt",
                                                     "Threads")]
    extra = []
    for name in ("wchan", "syscall"):
        try:
            extra.append(f"{name}={open(f'/proc/{pid}/{name}').read().strip()}")
        except OSError:
            pass
    return f"{pid} {cmd} {' '.join(keep)} {' '.join(extra)}"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
@pytest.mark.parametrize("how", ["kill9-main", "term-group", "int-group"])
def test_no_process_of_a_run_survives(tmp_path, how):
    import signal
    import time
    import uuid

    from retina_prep.io import write_image
    from retina_prep.synthetic import synthetic_fundus

    for i in range(24):  # enough work that the run is still going when the signal comes
        write_image(tmp_path / "in" / f"{i:02d}.png", synthetic_fundus((700, 760), seed=i).image)
    marker = f"RP_TEST_{uuid.uuid4().hex}"
    env = {**os.environ, marker: "1"}
    with open(tmp_path / "stdout", "wb") as out, open(tmp_path / "stderr", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", "retina_prep", "normalize",
                                 str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--auto-mask",
                                 "-j", "2"], stdout=out, stderr=err, env=env,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        manifest = tmp_path / "out" / "manifest.jsonl"
        while ((len(_run_processes(marker)) < 3 or not manifest.exists()
                or manifest.stat().st_size == 0) and time.monotonic() < deadline):
            # (a run that ended already, a crash at start-up, fails here and says why)
            assert proc.poll() is None, (tmp_path / "stderr").read_text()[-2000:]
            time.sleep(0.05)  # the pool is up and the run has begun (its first manifest line)
        time.sleep(0.1)
        if how == "kill9-main":
            proc.kill()
        else:  # a group signal, as a terminal's Ctrl-C or a scheduler's SIGTERM sends
            os.killpg(proc.pid, signal.SIGTERM if how == "term-group" else signal.SIGINT)
        proc.wait(timeout=30)
        deadline = time.monotonic() + 30  # slow exits under load; a real orphan stays forever
        while _run_processes(marker) and time.monotonic() < deadline:
            time.sleep(0.1)
        left = _run_processes(marker)
        assert left == [], "\n".join(_describe_process(p) for p in left)
        assert not list((tmp_path / "out").glob(".retina-prep-tmp-*"))
        if how != "kill9-main":
            assert proc.returncode == 130
            lines = (tmp_path / "stderr").read_text().splitlines()
            assert len(lines) == 1 and "interrupted" in lines[0], lines
            # every output that exists is recorded, and the summary counts it
            records = [json.loads(x) for x in (tmp_path / "out" / "manifest.jsonl").open()]
            done = {r["input"] for r in records if r.get("status") == "done"}
            written = sorted(p.name for p in (tmp_path / "out").glob("*.png"))
            assert sorted(os.path.basename(d) for d in done) == written
            assert f"after {len(written)} done" in lines[0]
    finally:
        for pid in _run_processes(marker):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("text, needle", [
    ("target = [1, 2]", "single value"),
    ("mask = 5", "mask"),
    ("window = 1e400", "window"),
    ("overwrite = \"yes\"", "true or false"),
    ("[filter]\nbogus = 1", "unknown key 'bogus' in [filter]"),
    ("[nonsense]\nx = 1", "unknown table"),
])
def test_config_values_of_the_wrong_type_are_usage_errors(tmp_path, text, needle):
    make_image(tmp_path / "in" / "a.png")
    cfg = tmp_path / "c.toml"
    cfg.write_text(text + "\n")
    r = invoke("normalize", tmp_path / "in", "-o", tmp_path / "out", "--config", cfg)
    assert r.exit_code == 2, r.output
    assert needle in r.output and "Traceback" not in r.output


def test_config_not_utf8_is_a_usage_error(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_bytes(b"\xff\xfe = 1\n")
    r = invoke("normalize", tmp_path, "-o", tmp_path / "out", "--config", cfg)
    assert r.exit_code == 2 and "not a valid TOML file" in r.output


def test_other_commands_table_is_accepted_when_valid(tmp_path):
    make_image(tmp_path / "in" / "a.png")
    cfg = tmp_path / "c.toml"
    cfg.write_text("[filter]\nsize = 5\n[normalize]\nwindow = 11\n")
    r = invoke("normalize", tmp_path / "in", "-o", tmp_path / "out", "--config", cfg, "--auto-mask")
    assert r.exit_code == 0, r.output


def test_unreadable_input_even_as_root(tmp_path, monkeypatch):
    """Root reads every file, so the permission error is injected where the file is read."""
    from pathlib import Path

    make_image(tmp_path / "in" / "a.png")
    make_image(tmp_path / "in" / "b.png")
    real = Path.read_bytes

    def read_bytes(self):
        if self.name == "a.png" and "in" in self.parts:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    r = invoke("normalize", tmp_path / "in", "-o", tmp_path / "o", "--auto-mask", "-j", "1")
    assert r.exit_code == 1
    errs = error_lines(r.output)
    assert len(errs) == 1 and "a.png" in errs[0] and "permission denied" in errs[0]
    assert sorted(p.name for p in (tmp_path / "o").glob("*.png")) == ["b.png"]


def test_unwritable_output_folder_even_as_root(tmp_path, monkeypatch):
    """An output folder the process may not write to stops the run with one line (exit 1)."""
    make_image(tmp_path / "x.png")
    ro = tmp_path / "ro"
    ro.mkdir()
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode, **kw: False if (
        str(p) == str(ro) and mode & os.W_OK) else real(p, mode, **kw))
    r = invoke("normalize", tmp_path / "x.png", "-o", ro, "--auto-mask")
    assert r.exit_code == 1 and "not writable" in r.output
    assert list(ro.iterdir()) == []


@pytest.mark.parametrize("args", [["--window", "30001"], ["--kernel", "gaussian", "--sigma", "5000"],
                                  ["--kernel", "gaussian", "--window", "4003"]])
def test_a_mistyped_huge_window_is_refused_at_once(tmp_path, args, monkeypatch):
    """A window of 30001 (for 3001) would build a 30001 x 30001 kernel: 14 GB and half a
    minute. Kernels are capped at 4001 px: a usage error naming the size, before any image is
    read (checked by making any image read fail: a wall-clock bound here failed on a cold
    machine), and nothing written."""
    import retina_prep.pipeline as pl
    from retina_prep.io import write_image
    from retina_prep.synthetic import synthetic_fundus

    write_image(tmp_path / "in" / "a.png", synthetic_fundus((60, 64), seed=1).image)

    def never(*a, **k):
        raise AssertionError("an image was read before the refusal")

    monkeypatch.setattr(pl, "read_image", never)
    r = CliRunner().invoke(cli, ["normalize", str(tmp_path / "in"), "-o", str(tmp_path / "out"),
                                 "--auto-mask", *args])
    assert r.exit_code == 2, r.output
    assert "4001 px" in r.output and r.output.count("Error:") == 1
    assert not (tmp_path / "out").exists()


def test_float16_tiff_follows_the_advice_to_a_float_tiff(tmp_path):
    """A float16 TIFF: the PNG error advises --format tif; following it writes the values (as
    float32, the same numbers), not uint8 holding 0 and 1."""
    import imageio.v3 as iio

    from retina_prep.synthetic import synthetic_fundus

    s = synthetic_fundus((120, 110), seed=1, background=5)
    img = (s.image / 255).astype(np.float16)
    iio.imwrite(tmp_path / "f16.tif", img)
    r = invoke("normalize", tmp_path / "f16.tif", "-o", tmp_path / "png", "--rim", "none")
    assert r.exit_code == 1 and "--format tif" in r.output
    r = invoke("normalize", tmp_path / "f16.tif", "-o", tmp_path / "tif", "--format", "tif",
               "--rim", "none")
    assert r.exit_code == 0, r.output
    out = read_image(tmp_path / "tif" / "f16.tif")
    assert out.dtype == np.float32
    inside = out[out.max(axis=-1) > 0]
    assert 0.3 < float(np.median(inside)) < 0.7  # I0 = 128/255 in 0..1 units, not 0/1 integers
    assert len(np.unique(inside)) > 50


def test_a_folder_that_cannot_be_listed_fails_with_a_line(tmp_path):
    """A sub-folder os.walk cannot list (here: below a path longer than PATH_MAX; for a user,
    also a folder without read permission) is one failed input with a line, not a silent skip."""
    from retina_prep.synthetic import synthetic_fundus

    root = tmp_path / "in"
    write_image(root / "a.png", synthetic_fundus((90, 100), seed=1, background=5).image)
    fd = os.open(root, os.O_RDONLY)
    try:
        for _ in range(20):  # 20 x 250 characters: beyond PATH_MAX (4096)
            name = "d" * 250
            os.mkdir(name, dir_fd=fd)
            new = os.open(name, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = new
        with os.fdopen(os.open("deep.png", os.O_WRONLY | os.O_CREAT, dir_fd=fd), "wb") as f:
            f.write(b"not reached")
    finally:
        os.close(fd)
    r = invoke("normalize", root, "-o", tmp_path / "out")
    assert r.exit_code == 1, r.output
    errs = error_lines(r.output)
    assert len(errs) == 1 and "cannot read this folder" in errs[0], r.output
    assert (tmp_path / "out" / "a.png").exists()


def test_config_and_file_lists_are_read_within_bounds(tmp_path):
    """--config /dev/zero and --files-from /dev/zero are refused, not read without end; stdin
    closed is a usage error, not a traceback; a config with a UTF-8 BOM reads."""
    import subprocess
    import sys

    make_image(tmp_path / "e.png")
    r = invoke("normalize", tmp_path / "e.png", "-o", tmp_path / "o", "--config", "/dev/zero")
    assert r.exit_code == 2 and "not a config file" in r.output
    r = invoke("normalize", "--files-from", "/dev/zero", "-o", tmp_path / "o")
    assert r.exit_code == 2 and "not a list of files" in r.output
    p = subprocess.run([sys.executable, "-m", "retina_prep", "normalize", "--files-from", "-",
                        "-o", str(tmp_path / "o")], stdin=subprocess.DEVNULL, capture_output=True)
    assert p.returncode == 2 and b"Traceback" not in p.stderr  # empty stdin: no images
    p = subprocess.run(f"{sys.executable} -m retina_prep normalize --files-from - -o"
                       f" {tmp_path / 'o'} <&-", shell=True, capture_output=True)
    assert p.returncode == 2 and b"standard input is closed" in p.stderr, p.stderr
    (tmp_path / "bom.toml").write_bytes(b"\xef\xbb\xbfwindow = 31\n")
    r = invoke("normalize", tmp_path / "e.png", "-o", tmp_path / "b", "--config", tmp_path / "bom.toml")
    assert r.exit_code == 0, r.output
    rec = [json.loads(x) for x in (tmp_path / "b" / "manifest.jsonl").open()][-1]
    assert rec["params"]["window"] == 31


def test_levels_and_value_ranges_are_checked(tmp_path):
    """--target 300 or -50 (every FOV pixel 255 or 0) is a usage error; --value-range that the
    image's values leave, or that its dtype cannot hold, fails that image with one line."""
    make_image(tmp_path / "e.png")
    for t in ("300", "-50", "nan"):
        r = invoke("normalize", tmp_path / "e.png", "-o", tmp_path / "o", "--target", t)
        assert r.exit_code == 2 and "target" in r.output, t
    r = invoke("normalize", tmp_path / "e.png", "-o", tmp_path / "o", "--fill", "inf")
    assert r.exit_code == 2 and "--fill" in r.output
    for vr, says in (("0,1", "outside the value range 0,1"),
                     ("0,1e308", "does not fit uint8 images")):
        r = invoke("normalize", tmp_path / "e.png", "-o", tmp_path / vr, "--value-range", vr)
        assert r.exit_code == 1 and says in r.output, r.output
        assert not (tmp_path / vr / "e.png").exists()
    from retina_prep.normalize import normalize_illumination

    with pytest.raises(ValueError, match="target must be a level from 0 to 255"):
        normalize_illumination(np.zeros((20, 20), np.uint8), None, window=5, target=300)


def test_a_manifest_cut_mid_line_gets_whole_lines_on_resume(tmp_path):
    """A manifest cut mid-line (a killed run), then --skip-existing: the resume's lines are
    whole lines of their own, not appended to the cut one."""
    make_image(tmp_path / "in" / "a.png")
    make_image(tmp_path / "in" / "b.png", seed=1)
    assert invoke("normalize", tmp_path / "in", "-o", tmp_path / "o").exit_code == 0
    man = tmp_path / "o" / "manifest.jsonl"
    data = man.read_bytes()
    man.write_bytes(data[: len(data) - 40])  # the last image line cut
    (tmp_path / "o" / "b.png").unlink()
    r = invoke("normalize", tmp_path / "in", "-o", tmp_path / "o", "--skip-existing")
    assert r.exit_code == 0, r.output
    lines = man.read_text().splitlines()
    parsed = []
    for x in lines:
        try:
            parsed.append(json.loads(x))
        except ValueError:
            parsed.append(None)
    assert parsed.count(None) == 1  # only the cut line
    runs = [x for x in parsed if x and x["type"] == "run"]
    assert len(runs) == 2


def test_a_manifest_removed_during_the_run_is_an_error(tmp_path):
    from retina_prep.batch import Manifest

    m = Manifest(tmp_path / "out" / "manifest.jsonl")
    assert m.write({"type": "run"})
    (tmp_path / "out" / "manifest.jsonl").unlink()
    assert not m.write({"type": "image"})
    assert "removed or replaced during the run" in m.error
    m.close()


def test_a_float_mask_with_nan_outside(tmp_path):
    """1.0 inside and NaN outside: the 1.0 pixels are the field of view (it was refused as
    empty); inf pixels are outside too."""
    from retina_prep.fov import binarize_mask

    m = np.full((20, 30), np.nan, np.float32)
    m[5:15, 5:25] = 1.0
    m[0, 0] = np.inf
    got = binarize_mask(m)
    assert got.sum() == 200 and got[5:15, 5:25].all()
    with pytest.raises(Exception, match="empty"):
        binarize_mask(np.full((4, 4), np.nan))


def test_a_concurrent_resume_placing_the_same_output_is_not_an_error(tmp_path, monkeypatch):
    """Two --skip-existing resumes on one folder: an output the other run placed between this
    run's check and its write is kept, not reported as "output exists"."""
    import retina_prep.io.write as rio

    real = rio._place

    def other_run_first(tmp, path, overwrite):
        Path(path).write_bytes(Path(tmp).read_bytes())  # the other resume wins the race
        return real(tmp, path, overwrite)

    monkeypatch.setattr(rio, "_place", other_run_first)
    out = rio.write_outputs([(tmp_path / "a.png", b"data")], keep_existing=True)
    assert out == [tmp_path / "a.png"] and (tmp_path / "a.png").read_bytes() == b"data"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".retina-prep-tmp")]
    with pytest.raises(rio.OutputExistsError):
        rio.write_outputs([(tmp_path / "b.png", b"data")])  # without keep_existing: refused


def test_gray_alpha_png_stays_gray_and_extra_samples_are_channels(tmp_path):
    """A gray+alpha PNG is a gray image (it came out RGB); a TIFF with RGB and 2 extra samples
    is an RGB image of its own size (it was taken as 5 frames: "image is 5x240 px")."""
    from PIL import Image

    g = (np.arange(60 * 80) % 251).astype(np.uint8).reshape(60, 80)
    Image.fromarray(np.dstack([g, np.full_like(g, 200)]), "LA").save(tmp_path / "ga.png")
    got = read_image(tmp_path / "ga.png")
    assert got.shape == (60, 80) and np.array_equal(got, g)
    five = np.dstack([g, g // 2, g // 3, g, g]).astype(np.uint8)
    (tmp_path / "five.tif").write_bytes(_tiff_with_extra_samples(five))
    got = read_image(tmp_path / "five.tif")
    assert got.shape == (60, 80, 3) and np.array_equal(got, five[..., :3])


def _tiff_with_extra_samples(a: np.ndarray) -> bytes:
    """A little-endian, uncompressed, one-strip RGB TIFF with ``a.shape[2] - 3`` extra samples."""
    h, w, n = a.shape
    pixels = a.tobytes()
    entries = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 2),
               (273, 4, 1, 0), (277, 3, 1, n), (278, 4, 1, h), (279, 4, 1, len(pixels)),
               (284, 3, 1, 1), (338, 3, n - 3, 0)]
    ifd_size = 2 + 12 * len(entries) + 4
    extra_at = 8 + ifd_size
    data_at = extra_at + 2 * (n - 3)
    body = b""
    for tag, kind, count, value in entries:
        if tag == 273:
            value = data_at
        if tag == 338:
            field = struct.pack("<HHII", tag, kind, count, extra_at) if count > 2 else \
                struct.pack("<HHI", tag, kind, count) + struct.pack("<HH", 0, 0)
        elif kind == 3:
            field = struct.pack("<HHIHH", tag, kind, count, value, 0)
        else:
            field = struct.pack("<HHII", tag, kind, count, value)
        body += field
    head = b"II*\x00" + struct.pack("<I", 8)
    ifd = struct.pack("<H", len(entries)) + body + struct.pack("<I", 0)
    return head + ifd + b"\x00\x00" * (n - 3) + pixels



@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_tiled_tiff_with_any_orientation(tmp_path, dtype):
    """Tiled TIFFs with EXIF orientations 1-8 read as the strip version turned (8-bit tiles
    came out scrambled with orientations 2, 3, 6: OpenCV's RGBA-tile path)."""
    from retina_prep.io import apply_orientation
    from retina_prep.synthetic import synthetic_fundus

    # (64 px tiles on 300 x 400: OpenCV's own reader turns orientations 2, 3 and 6 of the
    # 8-bit file into a mean error of 20 gray levels; its 16 px tiles it cannot read at all)
    a = synthetic_fundus((300, 400), seed=1).image.astype(dtype) * (257 if dtype == np.uint16 else 1)
    for o in range(1, 9):
        (tmp_path / f"t{o}.tif").write_bytes(_tiled_tiff(a, tile=64, orientation=o))
        got = read_image(tmp_path / f"t{o}.tif")
        assert got.dtype == dtype and np.array_equal(got, apply_orientation(a, o)), o
        assert np.array_equal(read_image(tmp_path / f"t{o}.tif", orientation=False), a), o


def _tiled_tiff(a, tile=16, orientation=1):
    """Little-endian, uncompressed, tiled RGB (or gray) TIFF with an Orientation tag."""
    if a.ndim == 2:
        a = a[..., None]
    h, w, n = a.shape
    bps = a.dtype.itemsize * 8
    tx, ty = -(-w // tile), -(-h // tile)
    tiles = []
    for j in range(ty):
        for i in range(tx):
            t = np.zeros((tile, tile, n), a.dtype)
            blk = a[j * tile:(j + 1) * tile, i * tile:(i + 1) * tile]
            t[:blk.shape[0], :blk.shape[1]] = blk
            tiles.append(t.astype(a.dtype.newbyteorder("<")).tobytes())
    ntags = 13
    ifd_at = 8
    extra_at = ifd_at + 2 + 12 * ntags + 4
    bits_at = extra_at
    offs_at = bits_at + 2 * n
    cnts_at = offs_at + 4 * len(tiles)
    data_at = cnts_at + 4 * len(tiles)
    offsets, pos = [], data_at
    for t in tiles:
        offsets.append(pos)
        pos += len(t)

    def e(tag, kind, count, value):
        if kind == 3 and count == 1:
            return struct.pack("<HHIHH", tag, kind, count, value, 0)
        return struct.pack("<HHII", tag, kind, count, value)
    photometric = 2 if n == 3 else 1
    entries = [e(256, 4, 1, w), e(257, 4, 1, h),
               (e(258, 3, n, bits_at) if n > 2 else e(258, 3, 1, bps)),
               e(259, 3, 1, 1), e(262, 3, 1, photometric), e(274, 3, 1, orientation),
               e(277, 3, 1, n), e(284, 3, 1, 1), e(322, 3, 1, tile), e(323, 3, 1, tile),
               e(324, 4, len(tiles), offs_at), e(325, 4, len(tiles), cnts_at),
               e(339, 3, 1, 1)]
    assert len(entries) == ntags
    out = (b"II*\x00" + struct.pack("<I", ifd_at) + struct.pack("<H", ntags) + b"".join(entries)
           + struct.pack("<I", 0))
    out += struct.pack(f"<{n}H", *([bps] * n)) + struct.pack(f"<{len(tiles)}I", *offsets)
    out += struct.pack(f"<{len(tiles)}I", *[len(t) for t in tiles]) + b"".join(tiles)
    return out
