"""A worker process that dies (kill -9, SIGTERM, out of memory, a crash in a decoder) does not
stop the batch: the images it held run again, each alone, and only one that kills its worker
again fails, with one line."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from functools import partial
from pathlib import Path, PurePath

import pytest

from retina_prep.batch import Result, run_batch
from retina_prep.dataset import Pair


def _step(pair: Pair, marks: str, sig: int) -> Result:
    """Kill this worker with ``sig`` for images named ``bad*`` (always) and ``once*`` (the
    first time only: a marker file remembers); the others finish."""
    name = pair.image.name
    mark = Path(marks) / name
    if name.startswith("bad") or (name.startswith("once") and not mark.exists()):
        mark.touch()
        os.kill(os.getpid(), sig)
    return Result(pair, "done", info={"pid": os.getpid()})


def _pairs(names):
    return [Pair(Path(n), None, "none", PurePath(n)) for n in names]


def test_a_killed_worker_does_not_stop_the_batch(tmp_path):
    names = [f"ok{i}" for i in range(6)] + ["bad0"] + [f"ok{i}" for i in range(6, 12)] \
        + ["once0"] + [f"ok{i}" for i in range(12, 20)]
    for sig in (signal.SIGKILL, signal.SIGTERM):
        marks = tmp_path / f"m{sig}"
        marks.mkdir()
        results = list(run_batch(_pairs(names), partial(_step, marks=str(marks), sig=sig), jobs=2))
        assert [r.pair.image.name for r in results] == names  # every image, in input order
        status = {r.pair.image.name: r.status for r in results}
        assert status.pop("bad0") == "failed"
        failed = [(r.pair.image.name, r.error) for r in results if r.status != "done"]
        assert set(status.values()) == {"done"}, failed  # once0 ran again and finished
        bad = next(r for r in results if r.pair.image.name == "bad0")
        assert "worker process died while processing this image" in bad.error
        assert bad.error.startswith("bad0: ")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl")
def test_a_helper_orphaned_before_it_asked_to_die_with_its_parent_exits():
    """The fork server asks to die with the main process while it starts; a main process
    killed before that (a loaded machine) left it and the resource tracker running for good
    when a subreaper, not init, adopted it (about one CI run in ten). It now checks its
    parent against the main process's pid: another parent means it was orphaned."""
    code = ("import sys; from retina_prep._workers import _die_with_parent;"
            " _die_with_parent(int(sys.argv[1])); print('alive')")
    me = os.getpid()
    ok = subprocess.run([sys.executable, "-c", code, str(me)], capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout.strip() == "alive", ok.stderr
    orphan = subprocess.run([sys.executable, "-c", code, str(me + 1_000_000)],
                            capture_output=True, text=True)
    assert orphan.returncode == 1 and orphan.stdout == ""


def test_a_stop_raised_where_it_cannot_unwind_is_sent_again():
    """A worker's SIGTERM whose SystemExit lands in a weakref callback (the import machinery's)
    is re-sent, not printed as 'Exception ignored' and lost."""
    import subprocess
    import sys

    code = """
import signal, sys, weakref
import retina_prep.batch as b
got = []
b._worker_init()
b._stopping = True
signal.signal(signal.SIGTERM, lambda *a: got.append('again'))
class X: pass
def cb(ref):
    raise SystemExit(143)
x = X(); r = weakref.ref(x, cb); del x
for _ in range(1000):
    if got: break
print('RESENT' if got else 'LOST')
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "RESENT", (out.stdout, out.stderr)
    assert "Exception ignored" not in out.stderr
