"""The ``retina-prep`` program: starts the worker fork server (when the command will likely use
workers) before importing the command line, so that both import side by side."""

from __future__ import annotations

import gc
import os
import sys

#: The environment the command line sets, before any worker process exists (they inherit it):
#: OpenCV's log lines and library warnings silenced, decoders' own lines captured (io.CAPTURE_ENV).
QUIET_ENV = {"OPENCV_LOG_LEVEL": "SILENT", "PYTHONWARNINGS": "ignore",
             "RETINA_PREP_CAPTURE_DECODER_MESSAGES": "1"}


def set_quiet_env() -> None:
    for name, value in QUIET_ENV.items():
        os.environ.setdefault(name, value)


def main() -> None:
    set_quiet_env()
    # Pairing and planning 100 000 images allocate millions of objects and no cycles: with
    # the default threshold (700) the cycle collector ran through them a few hundred times
    # (a third of a dry run's time). Images are arrays, which the collector does not count.
    gc.set_threshold(100_000, 50, 50)
    from .._workers import start_early

    start_early(sys.argv[1:])
    from .main import cli

    cli(prog_name="retina-prep")
