"""The retina-prep command group."""

from __future__ import annotations

import os
import warnings

import click
import cv2

from .. import __version__
from .bench import bench
from .compare import compare
from .evaluate import evaluate
from .filter import filter_cmd
from .mask import mask
from .normalize import normalize
from .options import setup_logging
from .pairs import pairs


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="retina-prep")
def cli():
    """Prepare retinal fundus photographs: masked illumination normalization
    that stays correct at the edge of the field of view.

    \b
    Examples:
      retina-prep normalize sample_data -o out
      retina-prep mask photos/ -o masks --sheet masks/sheet.png
    """
    _silence_libraries()
    setup_logging()


def _silence_libraries() -> None:
    """One line per file: OpenCV's [WARN]/[ERROR] log lines and library warnings are not shown
    (the error they lead to is). Worker processes inherit it through the environment."""
    os.environ.setdefault("OPENCV_LOG_LEVEL", "SILENT")
    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    warnings.simplefilter("ignore")


cli.add_command(normalize)
cli.add_command(mask)
cli.add_command(filter_cmd)
cli.add_command(compare)
cli.add_command(pairs)
cli.add_command(bench)
cli.add_command(evaluate)
