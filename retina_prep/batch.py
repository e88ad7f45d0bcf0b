"""Running one per-image step over many pairs, recording every outcome.

The runner never prints: it yields one :class:`Result` per pair, in input
order, and a :class:`Report` collects them and sets the exit status. A
failure of one image is recorded and the batch goes on.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Generator, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from types import FrameType
from typing import Any, NoReturn

import cv2

from ._types import PathLike
from ._workers import PARENT_ENV, default_jobs, mp_context, start_helpers
from .dataset import Pair
from .errors import DatasetError, Notice, RetinaPrepError, printable
from .io import remove_stale_temporaries

__all__ = ["Result", "Status", "Report", "run_batch", "run_one", "default_jobs", "output_clashes", "process",
           "Batch", "Manifest", "ManifestError", "check_manifest", "prepare_output_folder"]


class Status(str, Enum):
    """What became of one image (the values are the manifest's words)."""

    DONE = "done"
    FAILED = "failed"
    SKIPPED = "skipped"

    def __str__(self) -> str:  # (its value, in f-strings and JSON alike, on every Python)
        return str(self.value)

    def __format__(self, spec: str) -> str:
        return format(str(self.value), spec)


@dataclass
class Result:
    """Outcome of one image.

    Attributes
    ----------
    pair : Pair
    status : Status
    outputs : list of Path
        What it wrote (or would have: the expected outputs of a skipped image).
    error : str or None
        The failure's line, ``"<file>: <problem> (<advice>)"``, in the library's terms.
    seconds : float
    warnings : list of Notice
        Each with a stable ``code``, the image's path, the parameters and the text.
    info : dict
        The manifest's ``params`` record of the image.
    products : dict
        What the step made besides files, for its caller (a ``"thumb"`` for a contact sheet,
        the ``"evaluation"`` numbers); not in the manifest, and not sent back from worker
        processes unless the step made it.
    error_kind : str or None
        The exception's class name.
    error_code : str or None
        A stable name of the failure (:attr:`RetinaPrepError.code`, or ``"os-error"``,
        ``"value-error"``, ``"memory"``, ``"internal"``, ``"worker-died"``,
        ``"output-collision"``): callers key their advice on it, never on the text.
    error_message : str or None
        ``error`` without the advice.
    error_params : dict
        The numbers and names the error was made from.
    error_path : str or None
        The file the error is about (an output that exists, a mask file), else the image.
    """

    pair: Pair
    status: Status | str
    outputs: list[Path] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0
    warnings: list[Notice] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    products: dict = field(default_factory=dict)
    error_kind: str | None = None
    error_code: str | None = None
    error_message: str | None = None
    error_params: dict = field(default_factory=dict)
    error_path: str | None = None

    def __post_init__(self) -> None:
        self.status = Status(self.status)
        if self.error is not None and self.error_message is None:
            self.error_message = self.error


@dataclass
class Report:
    """Counts of a batch and the failures, in order."""

    done: int = 0
    failed: int = 0
    skipped: int = 0
    failures: list[Result] = field(default_factory=list)

    def add(self, result: Result) -> None:
        if result.status == Status.DONE:
            self.done += 1
        elif result.status == Status.SKIPPED:
            self.skipped += 1
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


def _code(exc: BaseException) -> str:
    """The stable code of a failure (see :class:`Result`)."""
    if isinstance(exc, RetinaPrepError):
        return exc.code
    if isinstance(exc, OSError):
        return "os-error"
    if isinstance(exc, ValueError):
        return "value-error"
    if isinstance(exc, MemoryError):
        return "memory"
    return "internal"


def run_one(step: Callable[[Pair], Result], pair: Pair) -> Result:
    """Run ``step`` on one pair; an exception becomes a ``failed`` Result naming the file."""
    t0 = time.perf_counter()
    try:
        if pair.error is not None:  # found but not processable (a folder that cannot be listed)
            raise DatasetError(pair.error, pair.image)
        result = step(pair)
    except Exception as exc:  # recorded, the batch goes on
        named = isinstance(exc, RetinaPrepError) and exc.path is not None

        def line(msg: str) -> str:  # one line, whatever the exception said, naming the file
            msg = " ".join(msg.split("\n"))
            return msg if named else f"{printable(pair.image)}: {msg}"

        bare = exc.describe(advice=False) if isinstance(exc, RetinaPrepError) else _describe(exc)
        result = Result(pair, Status.FAILED, error=line(_describe(exc)),
                        error_kind=type(exc).__name__, error_code=_code(exc),
                        error_message=line(bare),
                        error_params=getattr(exc, "params", {}),
                        error_path=getattr(exc, "path", None) or os.fspath(pair.image))
    result.seconds = time.perf_counter() - t0
    return result


def _worker_init() -> None:
    # one OpenCV thread per worker process: the pool already uses every core
    cv2.setNumThreads(1)
    # Ctrl-C goes to the whole process group: the parent stops the workers, which stay quiet
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # between steps a SIGTERM ends the worker at once (the default action, which the kernel
    # carries out whichever thread the signal reaches); during a step it unwinds the step
    # (see _run_in_worker)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if hasattr(signal, "pthread_sigmask"):  # (whatever mask the process was forked with)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    sys.unraisablehook = _unraisable
    # dying with the parent was arranged when the fork server forked this process; a watch
    # on the main process covers what that misses (seen: a worker forked as the main process
    # was killed, idle on the pool's queue for good, about one run in 15)
    try:
        main = int(os.environ.get(PARENT_ENV, ""))
    except ValueError:
        return
    threading.Thread(target=_watch_main, args=(main, os.getppid()), daemon=True,
                     name="retina-prep-watch").start()


def _watch_main(main: int, parent: int) -> None:  # pragma: no cover - runs in workers
    """In a worker: stop (a SIGTERM to itself: a step in progress unwinds, an idle worker ends)
    once the main process or the fork server is gone."""
    while True:
        time.sleep(0.5)
        try:
            os.kill(main, 0)
            gone = os.getppid() != parent
        except (ProcessLookupError, PermissionError):  # (Permission: a pid reused by another user)
            gone = True
        if gone:
            os.kill(os.getpid(), signal.SIGTERM)
            return


_stopping = False  # in a worker: a SIGTERM came during a step


def _exit_quietly(signum: int, frame: FrameType | None) -> NoReturn:
    global _stopping
    _stopping = True
    raise SystemExit(128 + signum)


def _unraisable(unraisable: sys.UnraisableHookArgs) -> None:
    """In a worker: a SIGTERM whose SystemExit was raised inside a callback that cannot raise
    (a weakref callback of the import machinery, a ``__del__``) is sent again, to unwind the
    step from its next line, instead of being printed and lost."""
    if _stopping and isinstance(unraisable.exc_value, SystemExit):
        os.kill(os.getpid(), signal.SIGTERM)
        return
    sys.__unraisablehook__(unraisable)


def _run_in_worker(step: Callable[[Pair], Result], pair: Pair) -> Result:
    """:func:`run_one` in a pool worker. A SIGTERM (or the parent's death) during the step
    unwinds it quietly (SystemExit prints no traceback), so atomic writes remove their
    temporaries, and then ends the process: the pool machinery would otherwise catch the
    SystemExit and keep the worker alive. Between steps the default action ends the worker:
    a Python handler runs only when the main thread next runs Python code, and a worker idle
    on the pool's queue whose signal reached another thread (a library's) slept on, orphaned,
    holding the resource tracker's pipe (about one run in 25)."""
    signal.signal(signal.SIGTERM, _exit_quietly)
    try:
        return run_one(step, pair)
    except SystemExit as exc:
        os._exit(exc.code if isinstance(exc.code, int) else 1)
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _finished(fut: Future[Result] | None) -> bool:
    """Whether a pool future holds a result (not pending, cancelled or failed)."""
    return fut is not None and fut.done() and not fut.cancelled() and fut.exception() is None


@contextlib.contextmanager
def _stop_signals_to_main_thread() -> Iterator[None]:
    """Threads a pool starts inside (its manager thread, its queue's feeder) block SIGINT and
    SIGTERM, so that a stop signal reaches the main thread at once: a process-directed signal
    that lands in another thread leaves the main thread's wait unbroken, and the main process
    went on rerunning images (in pools started after the signal) before it noticed the stop.
    A process started meanwhile (a fork server restarted by the submit) inherits the blocked
    signals: the server and the workers unblock SIGTERM first thing, and the resource tracker
    ignores both."""
    if (not hasattr(signal, "pthread_sigmask")
            or threading.current_thread() is not threading.main_thread()):
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def _run_isolated(new_pool: Callable[[int], ProcessPoolExecutor], step: Callable[[Pair], Result],
                  pair: Pair, attempts: int = 2) -> Result:
    """Run ``step`` on ``pair`` in a worker pool of its own (the image may only have been in
    flight when another worker died, so it gets ``attempts`` tries); a worker that dies every
    time fails the image with one line instead of stopping the batch."""
    t0 = time.perf_counter()
    for _ in range(attempts):
        pool = new_pool(1)
        try:
            with _stop_signals_to_main_thread():
                fut = pool.submit(_run_in_worker, step, pair)
            return fut.result()
        except BrokenProcessPool:
            continue
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    result = Result(pair, Status.FAILED, error=f"{printable(pair.image)}: the worker process died"
                    " while processing this image (killed, out of memory, or a crash in a"
                    " decoder)", error_kind="WorkerDied", error_code="worker-died")
    result.seconds = time.perf_counter() - t0
    return result


def run_batch(pairs: Iterable[Pair], step: Callable[[Pair], Result], *, jobs: int = 1,
              finished_on_stop: list | None = None,
              lost_on_stop: list | None = None) -> Generator[Result, None, None]:
    """Run ``step`` on every pair, yielding a :class:`Result` for each, in input order.

    ``step`` returns a Result with status ``done``; any exception it raises
    (other than KeyboardInterrupt/SystemExit) becomes a ``failed`` Result
    whose error line names the file and the problem. With ``jobs > 1`` the
    pairs run in a pool of worker processes (``step`` must be picklable);
    results still come in input order. Interrupting the iteration (or closing
    the generator) stops the workers; the results of images that workers had
    already finished, whose outputs therefore exist, are appended to
    ``finished_on_stop`` so the caller can still record them; the pairs in flight whose results
    did not come back (a worker stopped between writing and reporting, or its report still in
    the pool's queue) to ``lost_on_stop``.
    """
    pairs = list(pairs)
    if jobs <= 1 or len(pairs) <= 1:
        for pair in pairs:
            try:
                result = run_one(step, pair)
            except BaseException:  # stopped in the step: it may have written its outputs
                if lost_on_stop is not None:
                    lost_on_stop.append(pair)
                raise
            yield result
        return
    ctx = mp_context()
    start_helpers(ctx)

    def new_pool(workers: int) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init)

    pool = new_pool(min(jobs, len(pairs)))
    futures: deque = deque()  # (pair, future), in input order
    try:
        window = 4 * jobs  # a bounded number of tasks in flight keeps memory flat
        it = iter(pairs)

        def refill() -> None:
            while len(futures) < window:
                nxt = next(it, None)
                if nxt is None:
                    return
                try:
                    with _stop_signals_to_main_thread():
                        fut = pool.submit(_run_in_worker, step, nxt)
                except BrokenProcessPool:  # the pool broke since the last result
                    fut = None
                futures.append((nxt, fut))

        refill()
        # an item leaves `futures` only once its result is in hand, just before it is yielded:
        # a stop at any other moment finds it there (finished, or lost: see below)
        while futures:
            pair, fut = futures[0]
            try:
                if fut is None:
                    raise BrokenProcessPool("a worker died")
                result = fut.result()
            except BrokenProcessPool:
                # a worker died (killed, out of memory, a crash in a decoder): every task in
                # flight is lost with the pool. Those that had finished keep their results;
                # the others run again one at a time, each in a pool of its own, so only an
                # image that kills its worker again fails; then a new pool takes the rest.
                # (no cancelling: the pool's manager thread is failing those futures itself, and
                # cancelling one under it raises there on Python < 3.12, gh-107219)
                pool.shutdown(wait=True)
                while futures:
                    p, f = futures[0]
                    if _finished(f):
                        again = f.result()
                    else:
                        again = _run_isolated(new_pool, step, p)
                    futures.popleft()
                    yield again
                pool = new_pool(min(jobs, len(pairs)))
                refill()
                continue
            futures.popleft()
            refill()
            yield result
    except BaseException:
        # the workers are stopped, not their tasks cancelled: the pool then fails every task
        # still pending itself (cancelling a future while its manager thread fails it raises
        # there on Python < 3.12 and prints a traceback: gh-107219)
        try:
            for proc in list(getattr(pool, "_processes", {}).values()):
                if proc.is_alive():
                    proc.terminate()  # SIGTERM: workers unwind and clean up
            pool.shutdown(wait=True)
        finally:  # (whatever the stopping raised, what was in flight is accounted for)
            for p, f in list(futures):
                if _finished(f):
                    if finished_on_stop is not None:
                        finished_on_stop.append(f.result())
                elif lost_on_stop is not None:
                    lost_on_stop.append(p)
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


# ------------------------------------------------------------------ the batch engine


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if hasattr(value, "tolist"):  # NumPy scalars and arrays
        return _jsonable(value.tolist())
    return str(value)


class Manifest:
    """An append-only JSON-lines provenance log: one line per run, one per image.

    A write that fails (a full disk) does not stop the batch: ``error`` holds
    the reason, and later lines are not attempted.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        self.error: str | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = self.path.open("a", encoding="utf-8")
            st = os.fstat(self._fh.fileno())
            self._identity = (st.st_dev, st.st_ino)
            if st.st_size:  # a manifest cut mid-line (a killed run): this run's lines start anew
                with self.path.open("rb") as fh:
                    fh.seek(-1, os.SEEK_END)
                    if fh.read(1) != b"\n":
                        self._fh.write("\n")
        except OSError as exc:
            raise RetinaPrepError(f"cannot write the manifest ({exc.strerror or exc})",
                                  self.path) from None

    def _still_ours(self) -> bool:
        """Whether the manifest's path still names the file this run writes (the output
        folder may have been deleted, or the file replaced, during the run)."""
        try:
            st = os.stat(self.path)
        except OSError:
            return False
        return (st.st_dev, st.st_ino) == self._identity

    def write(self, obj: dict) -> bool:
        """Append one line; False (and ``error`` set) when it could not be written."""
        if self.error is not None:
            return False
        if not self._still_ours():
            self.error = ("the manifest was removed or replaced during the run (was the output"
                          " folder deleted?)")
            return False
        try:
            self._fh.write(json.dumps(_jsonable(obj)) + "\n")
            self._fh.flush()
        except OSError as exc:
            self.error = f"cannot write the manifest ({exc.strerror or exc})"
            return False
        return True

    def image(self, result: Result) -> bool:
        """The line of one image's result."""
        return self.write({
            "type": "image", "input": str(result.pair.image),
            "mask": str(result.pair.mask) if result.pair.mask else None,
            "mask_source": result.info.get("mask_source", result.pair.mask_source),
            "outputs": [str(o) for o in result.outputs], "status": result.status,
            "error": result.error, "error_code": result.error_code,
            "warnings": [str(w) for w in result.warnings],
            "warning_codes": [getattr(w, "code", None) for w in result.warnings],
            "seconds": round(result.seconds, 4),
            "params": {k: v for k, v in result.info.items() if k != "mask_source"},
        })

    def close(self) -> None:
        try:
            self._fh.close()
        except OSError:
            pass  # a failing final flush was already reported


class ManifestError(RetinaPrepError):
    """The manifest path names a folder or an input file."""


def check_manifest(path: PathLike, pairs: Iterable[Pair]) -> None:
    """The manifest may not be a folder or any input (image or mask): :class:`ManifestError`."""
    path = Path(path)
    if path.is_dir():
        raise ManifestError("the manifest is a folder", path)
    if not path.exists():
        return
    for p in pairs:
        for src in (p.image, p.mask):
            try:
                if src is not None and os.path.exists(src) and os.path.samefile(src, path):
                    raise ManifestError("the manifest would append to an input file", path)
            except OSError:
                pass


def prepare_output_folder(folder: PathLike) -> None:
    """Create the output folder and clear temporaries a killed run left there.

    Raises ``RetinaPrepError`` when it cannot be created or written to.
    """
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RetinaPrepError(f"cannot create output folder ({exc.strerror or exc})", folder) from None
    if not os.access(folder, os.W_OK | os.X_OK):
        raise RetinaPrepError("output folder is not writable", folder)
    remove_stale_temporaries(folder)


def process(
    pairs: list[Pair],
    step: Callable[[Pair], Result],
    *,
    outputs_of: Callable[[Pair], list[Path]],
    outdir: PathLike,
    jobs: int = 1,
    skip_existing: bool = False,
    manifest: PathLike | None = None,
    run_info: dict[str, Any] | None = None,
) -> Generator[Result, None, None]:
    """Run a batch with everything a command needs: collisions, resume, manifest, interrupts.

    The output folder is prepared; images whose outputs collide with another
    image's outputs (or the manifest) fail without running; with
    ``skip_existing`` an image whose outputs all exist is ``skipped`` (one
    whose outputs are partly there runs again: its step must keep the
    existing ones); the rest run through :func:`run_batch`. Every result is
    yielded -- first those decided without running (failed collisions,
    skipped), then the others in input order -- and, with
    ``manifest`` (a path), appended to it after a run line holding
    ``run_info``. When the iteration is interrupted (Ctrl-C), the images the
    workers had finished are still recorded. A manifest write error stops
    the manifest, not the batch (:class:`Batch` exposes it as
    ``manifest_error``).

    This is the engine of every ``retina-prep`` command; for a Python user::

        from functools import partial
        from retina_prep.batch import process
        from retina_prep.dataset import find_pairs
        from retina_prep.pipeline import (
            NormalizeSettings, OutputSettings, normalize_outputs, normalize_pair)

        settings, output = NormalizeSettings(window=21), OutputSettings(keep_existing=True)
        pairs = find_pairs(["photos"])
        for result in process(
            pairs, partial(normalize_pair, outdir="out", settings=settings, output=output),
            outputs_of=partial(normalize_outputs, outdir="out", output=output),
            outdir="out", jobs=2, skip_existing=True, manifest="out/manifest.jsonl",
        ):
            print(result.status, result.pair.image, result.error or "")
    """
    batch = Batch(pairs, step, outputs_of=outputs_of, outdir=outdir, jobs=jobs,
                  skip_existing=skip_existing, manifest=manifest, run_info=run_info)
    yield from batch


class Batch:
    """An iterable batch run (see :func:`process`); ``manifest_error`` reports a failed
    manifest write; ``decided`` holds the results known without running (collisions,
    skipped), ``todo`` the pairs that run."""

    def __init__(self, pairs: Iterable[Pair], step: Callable[[Pair], Result], *,
                 outputs_of: Callable[[Pair], list[Path]], outdir: PathLike, jobs: int = 1,
                 skip_existing: bool = False, manifest: PathLike | None = None,
                 run_info: dict[str, Any] | None = None) -> None:
        self.pairs, self.step, self.outputs_of = list(pairs), step, outputs_of
        self.outdir, self.jobs, self.skip_existing = Path(outdir), jobs, skip_existing
        self.manifest_path = None if manifest is None else Path(manifest)
        self.run_info = run_info or {}
        self.finished_on_stop: list[Result] = []
        self._manifest: Manifest | None = None
        prepare_output_folder(self.outdir)
        reserved = [self.manifest_path] if self.manifest_path is not None else []
        self.clashes = output_clashes(self.pairs, outputs_of, reserved=reserved)
        self.decided: list[Result] = []
        self.todo: list[Pair] = []
        for p in self.pairs:
            outs = outputs_of(p)
            if p in self.clashes:
                self.decided.append(Result(p, Status.FAILED, error=self.clashes[p],
                                           error_kind="OutputCollision",
                                           error_code="output-collision"))
            elif skip_existing and all(o.is_file() for o in outs):
                self.decided.append(Result(p, Status.SKIPPED, outputs=outs))
            else:
                self.todo.append(p)
        if self.manifest_path is not None:
            check_manifest(self.manifest_path, self.pairs)
            self._manifest = Manifest(self.manifest_path)

    @property
    def manifest_error(self) -> str | None:
        return None if self._manifest is None else self._manifest.error

    def _written_before_stop(self, lost: list[Pair], started: float) -> list[Result]:
        """Images stopped in flight whose every output was written in this run (a worker
        stopped after writing them, before its result came back): done, so that every output
        that exists is recorded. Writes are atomic, so a file in place is complete."""
        done = []
        for p in lost:
            outs = self.outputs_of(p)
            try:
                fresh = bool(outs) and all(o.is_file() and o.stat().st_mtime >= started - 0.01
                                           for o in outs)
            except OSError:
                fresh = False
            if fresh:
                done.append(Result(p, Status.DONE, outputs=outs,
                                   info={"recorded": "after the run was stopped, from its files"}))
        return done

    def _record(self, result: Result) -> None:
        if self._manifest is not None:
            self._manifest.image(result)

    def __iter__(self) -> Generator[Result, None, None]:
        try:
            if self._manifest is not None:
                self._manifest.write({"type": "run", **self.run_info})
            for r in self.decided:
                self._record(r)
                yield r
            started = time.time()
            lost: list[Pair] = []
            results = run_batch(self.todo, self.step, jobs=self.jobs,
                                finished_on_stop=self.finished_on_stop, lost_on_stop=lost)
            try:
                for r in results:
                    self._record(r)
                    yield r
            except BaseException:
                try:
                    results.close()  # stop the workers; what they had finished is recorded
                finally:
                    self.finished_on_stop += self._written_before_stop(lost, started)
                    for r in self.finished_on_stop:
                        self._record(r)
                raise
        finally:
            if self._manifest is not None:
                self._manifest.close()
