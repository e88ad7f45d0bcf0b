"""Starting worker processes: light on imports (no NumPy, no OpenCV), so the command line can
start the worker fork server before its own heavy imports, and both import side by side."""

from __future__ import annotations

import ctypes
import multiprocessing
import os
import signal
import sys
from multiprocessing.context import BaseContext
from types import TracebackType

__all__ = ["default_jobs", "mp_context", "start_helpers", "start_early"]

#: Modules the fork server imports once, so that every worker it forks has them. The first
#: makes the server die with the main process: first, so that a main process killed while the
#: server imports the heavy ones (a second or more on a loaded machine) is noticed at once.
PRELOAD = ["retina_prep._forkserver", "numpy", "cv2", "PIL.Image", "retina_prep.pipeline"]

#: The main process's pid, for the fork server to check its parent against (set when the
#: server is started): a process orphaned under a subreaper gets a parent other than 1.
PARENT_ENV = "RETINA_PREP_PARENT_PID"

_parent_pid: int | None = None  # in the fork server: its own pid, for the workers it forks


def default_jobs() -> int:
    """The number of cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not on Linux
        return max(1, os.cpu_count() or 1)


def _die_with_parent(expected: int | None = None) -> None:
    """Linux: get SIGTERM when the parent process dies (a kill -9 of the main process), and
    exit at once if it died already, before the request took effect: the parent is then init
    (pid 1) or, under a subreaper (a container's init, a service manager), another process
    than ``expected``."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # pragma: no cover - no prctl
        return
    parent = os.getppid()
    if parent == 1 or (expected is not None and parent != expected):
        os._exit(1)


def _remember_parent() -> None:  # pragma: no cover - runs in the fork server, before a fork
    global _parent_pid
    _parent_pid = os.getpid()


def _child_dies_with_parent() -> None:  # pragma: no cover - runs in a forked worker
    _die_with_parent(_parent_pid)


def _forkserver_init() -> None:  # pragma: no cover - runs in the fork server
    try:
        expected = int(os.environ.get(PARENT_ENV, ""))
    except ValueError:
        expected = None
    if hasattr(signal, "pthread_sigmask"):  # SIGTERM (the parent's death) must reach the server
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
    _die_with_parent(expected)  # (exits if the main process died while the server started)
    # every process the server forks dies with the server, from its first instruction on
    # (a worker still starting up when the main process is killed would otherwise be orphaned)
    os.register_at_fork(before=_remember_parent, after_in_child=_child_dies_with_parent)
    # a worker that cannot start because the run is being stopped (its queues are gone) would
    # print a traceback; the main process reports any real failure to start (a broken pool)
    sys.excepthook = _quiet_excepthook


def _quiet_excepthook(exc_type: type[BaseException], exc: BaseException,
                      tb: TracebackType | None) -> None:  # pragma: no cover - runs in forked workers
    pass


def mp_context() -> BaseContext:
    """forkserver on Linux: never fork a process whose OpenCV thread pool is running (that can
    deadlock); the server preloads the heavy modules, so workers still start quickly."""
    if sys.platform.startswith("linux"):
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(PRELOAD)
        return ctx
    return multiprocessing.get_context("spawn")


def start_helpers(ctx: BaseContext) -> None:
    """Start the fork server (and resource tracker) with SIGINT ignored: they inherit that
    while they import, so a Ctrl-C to the process group then prints no traceback from them."""
    if ctx.get_start_method() != "forkserver":
        return
    from multiprocessing import forkserver

    try:
        old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    except ValueError:  # not the main thread: leave the signals alone
        old = None
    os.environ[PARENT_ENV] = str(os.getpid())  # (the server checks its parent against it)
    try:
        forkserver.ensure_running()
    finally:
        if old is not None:
            signal.signal(signal.SIGINT, old)




#: Commands that may run images in worker processes.
BATCH_COMMANDS = ("normalize", "filter", "mask", "compare", "evaluate", "restore")


def _jobs_in(argv: list[str]) -> int | None:
    """The -j/--jobs value given on a command line, None when not given or unreadable."""
    for i, a in enumerate(argv):
        value = None
        if a in ("-j", "--jobs") and i + 1 < len(argv):
            value = argv[i + 1]
        elif a.startswith("--jobs="):
            value = a.split("=", 1)[1]
        elif a.startswith("-j") and len(a) > 2 and not a.startswith("--"):
            value = a[2:]
        if value is not None:
            try:
                return int(value)
            except ValueError:
                return None
    return None


def start_early(argv: list[str]) -> bool:
    """Start the worker fork server now when the command line ``argv`` (without the program
    name) will likely run images in worker processes: a batch command, not --help or
    --dry-run, and more than one job (given, or the default: the cores). Its imports then
    overlap with the main process's own. A guess that is wrong costs a process that exits
    with the main one. Returns whether it started one."""
    if not argv or argv[0] not in BATCH_COMMANDS or not sys.platform.startswith("linux"):
        return False
    if any(a in ("-h", "--help", "--dry-run") for a in argv):
        return False
    jobs = _jobs_in(argv)
    if (jobs if jobs is not None else default_jobs()) <= 1:
        return False
    start_helpers(mp_context())
    return True
