"""Running one per-image step over many pairs, recording every outcome.

The runner never prints: it yields one :class:`Result` per pair, in input
order, and a :class:`Report` collects them and sets the exit status. A
failure of one image is recorded and the batch goes on.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

from .dataset import Pair
from .errors import RetinaPrepError

__all__ = ["Result", "Report", "run_batch", "check_outputs_unique"]

#: Statuses of a :class:`Result`.
STATUSES = ("done", "failed")


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
        where = f"{exc.filename}: " if exc.filename else ""
        return f"{where}{exc.strerror or exc}"
    if isinstance(exc, (ValueError, MemoryError)):
        return f"{exc}"
    return f"internal error ({type(exc).__name__}: {exc})"


def run_batch(pairs: Iterable[Pair], step: Callable[[Pair], Result]) -> Iterator[Result]:
    """Run ``step`` on every pair, yielding a :class:`Result` for each.

    ``step`` returns a Result with status ``done``; any exception it raises
    (other than KeyboardInterrupt/SystemExit) becomes a ``failed`` Result
    whose error line names the file and the problem.
    """
    for pair in pairs:
        t0 = time.perf_counter()
        try:
            result = step(pair)
        except Exception as exc:  # recorded, the batch goes on
            msg = _describe(exc)
            path = str(pair.image)
            if isinstance(exc, RetinaPrepError) and exc.path is not None:
                line = msg
            else:
                line = f"{path}: {msg}"
            result = Result(pair, "failed", error=line)
        result.seconds = time.perf_counter() - t0
        yield result


def check_outputs_unique(pairs: list[Pair]) -> dict[Pair, str]:
    """Pairs whose output path collides with an earlier pair's, with the reason."""
    seen: dict = {}
    clashes = {}
    for p in pairs:
        key = str(p.rel).lower()
        if key in seen:
            clashes[p] = f"{p.image}: output name collides with {seen[key].image}; rename one of them"
        else:
            seen[key] = p
    return clashes

