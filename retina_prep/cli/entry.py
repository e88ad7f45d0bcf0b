"""The ``retina-prep`` program: starts the worker fork server (when the command will likely use
workers) before importing the command line, so that both import side by side."""

from __future__ import annotations

import os
import sys


def main() -> None:
    # what the command line silences, set before any worker process exists (they inherit it)
    os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    os.environ.setdefault("RETINA_PREP_CAPTURE_DECODER_MESSAGES", "1")  # io.CAPTURE_ENV
    from .._workers import start_early

    start_early(sys.argv[1:])
    from .main import cli

    cli(prog_name="retina-prep")
