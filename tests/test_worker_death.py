"""A worker process that dies (kill -9, SIGTERM, out of memory, a crash in a decoder) does not
stop the batch: the images it held run again, each alone, and only one that kills its worker
again fails, with one line."""

from __future__ import annotations

import os
import signal
from functools import partial
from pathlib import Path, PurePath

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
