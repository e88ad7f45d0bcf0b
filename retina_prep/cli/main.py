"""The retina-prep command group."""

from __future__ import annotations

import importlib
import warnings

import click
import cv2

from .. import __version__
from .entry import set_quiet_env
from .options import setup_logging

#: Command name -> (module, attribute). A command's module is imported only when it runs (or
#: when --help lists the commands), so `retina-prep normalize` does not pay for `bench`.
COMMANDS = {
    "normalize": ("normalize", "normalize"),
    "mask": ("mask", "mask"),
    "filter": ("filter", "filter_cmd"),
    "compare": ("compare", "compare"),
    "pairs": ("pairs", "pairs"),
    "bench": ("bench", "bench"),
    "evaluate": ("evaluate", "evaluate"),
    "restore": ("restore", "restore"),
    "presets": ("presets", "presets"),
}


class LazyGroup(click.Group):
    """A group whose commands are imported on first use."""

    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, cmd_name):
        if cmd_name not in COMMANDS:
            return None
        module, attr = COMMANDS[cmd_name]
        return getattr(importlib.import_module(f"{__package__}.{module}"), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
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
    set_quiet_env()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    warnings.simplefilter("ignore")

