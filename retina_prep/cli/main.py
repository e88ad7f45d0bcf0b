"""The retina-prep command group."""

from __future__ import annotations

import importlib
import warnings

import click

from .. import __version__
from .entry import set_quiet_env

#: Command name -> (module, attribute). A command's module is imported only when it runs, so
#: `retina-prep normalize` does not pay for `bench`; `--help` reads the commands' first lines
#: from their source, so listing them imports none.
COMMANDS: dict[str, tuple[str, str]] = {
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


def _first_line(module: str, attr: str, limit: int) -> str:
    """The first sentence of the docstring of the function ``attr`` in the command's module,
    read from its source (shortened as click shortens help)."""
    import ast
    from pathlib import Path

    source = (Path(__file__).parent / f"{module}.py").read_text(encoding="utf-8")
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name == attr:
            doc = ast.get_docstring(node) or ""
            return click.Command(attr, help=doc).get_short_help_str(limit)
    return ""


class LazyGroup(click.Group):
    """A group whose commands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list of --help from each command's first docstring line, read without
        importing it (the commands import NumPy and OpenCV: half a second)."""
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)  # (as click's)
        rows = [(name, _first_line(COMMANDS[name][0], COMMANDS[name][1], limit))
                for name in COMMANDS]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        module, attr = COMMANDS[cmd_name]
        return getattr(importlib.import_module(f"{__package__}.{module}"), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="retina-prep")
def cli() -> None:
    """Prepare retinal fundus photographs: masked illumination normalization
    that stays correct at the edge of the field of view.

    \b
    Examples:
      retina-prep normalize sample_data -o out
      retina-prep mask photos/ -o masks --sheet masks/sheet.png
    """
    from .options import setup_logging

    _silence_libraries()
    setup_logging()


def _silence_libraries() -> None:
    """One line per file: OpenCV's [WARN]/[ERROR] log lines and library warnings are not shown
    (the error they lead to is). Worker processes inherit it through the environment."""
    import cv2

    set_quiet_env()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    warnings.simplefilter("ignore")

