"""Running one per-image step over many pairs, recording every outcome.

The runner never prints: it yields one :class:`Result` per pair, in input
order, and a :class:`Report` collects them and sets the exit status. A
failure of one image is recorded and the batch goes on.
"""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2

from .dataset import Pair
from .errors import RetinaPrepError, printable

__all__ = ["Result", "Report", "run_batch", "run_one", "default_jobs", "output_clashes"]


@dataclass
class Result:
    """Outcome of one image."""

    pair: Pair
    status: str
    outputs: list[Path] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    error_kind: str | None = None  # the exception's class name, for callers that word advice


@dataclass
class Report:
    """Counts of a batch and the failures, in order."""

    done: int = 0
    failed: int = 0
    failures: list[Result] = field(default_factory=list)

    def add(self, result: Result) -> None:
        if result.status == "done":
            self.done += 1
        else:
            self.failed += 1
            self.failures.append(result)

    @property
    def exit_code(self) -> int:
        """0 when every image succeeded, 1 when any failed."""
        return 1 if self.failed else 0


def _describe(exc: BaseException) -> str:
    if isinstance(exc, RetinaPrepError):
        return str(exc)
    if isinstance(exc, OSError):
        where = f"{printable(exc.filename)}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc}"
    if isinstance(exc, (ValueError, MemoryError)):
        return f"{exc}"
    return f"internal error ({type(exc).__name__}: {exc})"


def run_one(step: Callable[[Pair], Result], pair: Pair) -> Result:
    """Run ``step`` on one pair; an exception becomes a ``failed`` Result naming the file."""
    t0 = time.perf_counter()
    try:
        result = step(pair)
    except Exception as exc:  # recorded, the batch goes on
        msg = _describe(exc)
        msg = " ".join(msg.split("\n"))  # one line, whatever the exception said
        if isinstance(exc, RetinaPrepError) and exc.path is not None:
            line = msg
        else:
            line = f"{printable(pair.image)}: {msg}"
        result = Result(pair, "failed", error=line, error_kind=type(exc).__name__)
    result.seconds = time.perf_counter() - t0
    return result


def default_jobs() -> int:
    """The number of cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the parent process dies (a kill -9 of the main process)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - no prctl
        pass


def _worker_init():
    # one OpenCV thread per worker process: the pool already uses every core
    cv2.setNumThreads(1)
    # Ctrl-C goes to the whole process group: the parent stops the workers, which stay quiet
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # a SIGTERM to a worker unwinds quietly (SystemExit prints no traceback), so atomic writes
    # remove their temporary files
    signal.signal(signal.SIGTERM, _exit_quietly)
    _die_with_parent()
    if os.getppid() == 1:  # the parent died before prctl took effect
        os._exit(1)


def _exit_quietly(signum, frame):
    raise SystemExit(128 + signum)


def _run_in_worker(step, pair) -> Result:
    """:func:`run_one` in a pool worker. A SIGTERM (or the parent's death) unwinds the step, so
    atomic writes remove their temporaries, and then ends the process: the pool machinery would
    otherwise catch the SystemExit and keep the worker alive."""
    try:
        return run_one(step, pair)
    except SystemExit as exc:
        os._exit(exc.code if isinstance(exc.code, int) else 1)


def _forkserver_init():  # pragma: no cover - runs in the fork server
    _die_with_parent()


def _mp_context():
    """forkserver on Linux: never fork a process whose OpenCV thread pool is running (that can
    deadlock); the server preloads the heavy modules, so workers still start quickly."""
    if sys.platform.startswith("linux"):
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(["numpy", "cv2", "retina_prep.pipeline", "retina_prep._forkserver"])
        return ctx
    return multiprocessing.get_context("spawn")


def run_batch(pairs: Iterable[Pair], step: Callable[[Pair], Result], *, jobs: int = 1,
              finished_on_stop: list | None = None) -> Generator[Result, None, None]:
    """Run ``step`` on every pair, yielding a :class:`Result` for each, in input order.

    ``step`` returns a Result with status ``done``; any exception it raises
    (other than KeyboardInterrupt/SystemExit) becomes a ``failed`` Result
    whose error line names the file and the problem. With ``jobs > 1`` the
    pairs run in a pool of worker processes (``step`` must be picklable);
    results still come in input order. Interrupting the iteration (or closing
    the generator) stops the workers; the results of images that workers had
    already finished, whose outputs therefore exist, are appended to
    ``finished_on_stop`` so the caller can still record them.
    """
    pairs = list(pairs)
    if jobs <= 1 or len(pairs) <= 1:
        for pair in pairs:
            yield run_one(step, pair)
        return
    ctx = _mp_context()
    pool = ProcessPoolExecutor(max_workers=min(jobs, len(pairs)), mp_context=ctx,
                               initializer=_worker_init)
    try:
        window = 4 * jobs  # a bounded number of tasks in flight keeps memory flat
        futures: deque = deque()
        it = iter(pairs)
        for pair in it:
            futures.append(pool.submit(_run_in_worker, step, pair))
            if len(futures) >= window:
                break
        while futures:
            result = futures.popleft().result()
            nxt = next(it, None)
            if nxt is not None:
                futures.append(pool.submit(_run_in_worker, step, nxt))
            yield result
    except BaseException:
        for f in futures:
            f.cancel()
        for proc in list(getattr(pool, "_processes", {}).values()):
            if proc.is_alive():
                proc.terminate()  # SIGTERM: workers unwind and clean up
        pool.shutdown(wait=True, cancel_futures=True)
        if finished_on_stop is not None:
            for f in futures:
                if f.done() and not f.cancelled() and f.exception() is None:
                    finished_on_stop.append(f.result())
        raise
    else:
        pool.shutdown(wait=True)


def output_clashes(pairs: list[Pair], outputs_of: Callable[[Pair], list[Path]], *,
                   reserved: Iterable = ()) -> dict[Pair, str]:
    """Pairs any of whose outputs is another output (of any image) or a ``reserved`` path
    (the manifest), each with a one-line reason. Names are compared case-insensitively, so
    a run behaves the same on case-insensitive file systems."""
    key = lambda p: os.path.normcase(os.path.abspath(p)).lower()  # noqa: E731
    taken = {key(r): r for r in reserved}
    owner: dict = {}
    clashes: dict = {}
    for p in pairs:
        for o in outputs_of(p):
            k = key(o)
            if k in taken:
                clashes[p] = (f"{printable(o)}: output would overwrite {printable(taken[k])};"
                              " choose another folder")
            elif k in owner:
                other = owner[k]
                what = ("another output of the same image" if other is p
                        else f"the output of {printable(other.image)}")
                clashes[p] = f"{printable(o)}: output collides with {what}; use separate folders"
                if other is not p:
                    clashes.setdefault(other, clashes[p])
            else:
                owner[k] = p
    return clashes
