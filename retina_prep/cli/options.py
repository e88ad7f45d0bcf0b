"""Options shared by retina-prep commands, defined once and reused as decorators."""

from __future__ import annotations

import datetime as _dt
import logging
import math
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click
import numpy as np

try:  # Python 3.11+
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    import tomli as tomllib

from ..errors import RetinaPrepError
from ..figures import PANEL_WIDTH
from ..io import DEFAULT_MAX_PIXELS, OUTPUT_FORMATS, PNG_LEVELS, load_kernel
from ..kernels import KERNEL_NAMES, Kernel, as_kernel
from ..normalize import check_kernel_args, parse_value_range, resolve_window
from ..pipeline import AUTO_ERODE_FRACTION, RIM_CHOICES, GeometrySettings, MaskSettings, parse_erode

#: A command function, as the option decorators take and return it.
F = TypeVar("F", bound=Callable[..., Any])


class WindowType(click.ParamType):
    """An odd number of pixels, or ``auto``."""

    name = "N|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        try:
            return resolve_window(value)
        except (ValueError, TypeError, OverflowError):
            self.fail(f"{value!r} is not an odd number of pixels >= 1 or 'auto'", param, ctx)


class SigmaType(click.ParamType):
    """A Gaussian sigma: a number of pixels > 0, or ``auto``."""

    name = "PX|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, str) and value.strip().lower() == "auto":
            return "auto"
        try:
            v = float(value)
        except (TypeError, ValueError):
            v = math.nan
        if not (math.isfinite(v) and v > 0):
            self.fail(f"{value!r} is not a number of pixels > 0 or 'auto'", param, ctx)
        return v


class RangeType(click.ParamType):
    """``LO,HI``: two numbers with LO < HI."""

    name = "LO,HI"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return parse_value_range(value if isinstance(value, (tuple, list)) else str(value))
        except ValueError:
            self.fail(f"{value!r} is not two finite numbers LO,HI with LO below HI", param, ctx)


class FiniteRange(click.FloatRange):
    """A finite number within the range (``click.FloatRange`` lets NaN through)."""

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        rv = super().convert(value, param, ctx)
        if not math.isfinite(rv):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return rv


class ErodeType(click.ParamType):
    """A number of pixels >= 0, or ``auto``."""

    name = "PX|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            return parse_erode(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


class KernelSpec(click.ParamType):
    """A kernel name, a kernel file (.npy, .txt, .csv), or (in a config) an inline matrix."""

    name = "NAME|FILE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, (list, tuple, np.ndarray)):
            try:
                return as_kernel(np.asarray(value, dtype=np.float64))
            except ValueError as exc:
                self.fail(f"inline kernel: {exc}", param, ctx)
        if not isinstance(value, str) or value in KERNEL_NAMES:
            return value
        if not Path(value).exists():
            self.fail(
                f"{value!r} is neither a kernel name ({', '.join(KERNEL_NAMES)}) nor a file",
                param, ctx,
            )
        try:
            return load_kernel(value)
        except RetinaPrepError as exc:
            self.fail(str(exc), param, ctx)


def check_kernel(spec: str | Kernel, window: int | str | None, sigma: float | str | None) -> None:
    """A usage error now when --kernel, --window/--size and --sigma do not fit together
    (the kernel itself is made per image, sized by its FOV)."""
    try:
        check_kernel_args(spec, window, sigma)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--kernel") from None


#: The largest config file read.
MAX_CONFIG_BYTES = 1 << 20


def _load_config(ctx: click.Context, param: click.Parameter, value: str | None) -> Path | None:
    """Read a TOML config into Click's default_map; unknown keys are usage errors."""
    if value is None:
        return None
    path = Path(value)
    if not path.exists() and "/" not in value and "\\" not in value:
        from ..presets import preset_names, preset_path

        try:
            path = preset_path(value)  # a preset by name: --config drive
        except KeyError:
            raise click.BadParameter(f"{value}: no such file, and no preset of that name"
                                     f" (presets: {', '.join(preset_names())})", ctx, param) from None
    try:
        with path.open("rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)  # /dev/zero never ends
        if len(raw) > MAX_CONFIG_BYTES:
            raise click.BadParameter(f"{path}: more than {MAX_CONFIG_BYTES >> 20} MB; not a config"
                                     " file", ctx, param)
        text = raw.decode("utf-8")
        data = tomllib.loads(text[1:] if text.startswith("\ufeff") else text)  # a BOM is no key
    except FileNotFoundError:
        raise click.BadParameter(f"{path}: no such file", ctx, param) from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise click.BadParameter(f"{path}: not a valid TOML file ({reason})", ctx, param) from None
    cmd = ctx.command.name
    commands = _known_commands(ctx)
    settings = {k: v for k, v in data.items() if not isinstance(v, dict)}
    for table, values in data.items():
        if isinstance(values, dict):
            if table.replace("-", "_") != cmd:
                # a table for another command is checked against that command's options
                other = commands.get(table) or commands.get(table.replace("_", "-"))
                if other is None:
                    raise click.BadParameter(f"{path}: unknown table [{table}]", ctx, param)
                other_names = _option_names(other)
                for key in values:
                    if key.replace("-", "_") not in other_names:
                        raise click.BadParameter(
                            f"{path}: unknown key {key!r} in [{table}]", ctx, param)
                continue
            settings.update(values)
    # keys are the options' long names (with dashes or underscores)
    names = _option_names(ctx.command)
    params = {p.name: p for p in ctx.command.params}
    default_map = {}
    for key, v in settings.items():
        name = key.replace("-", "_")
        if name not in names:
            valid = ", ".join(sorted(n.replace("_", "-") for n in names))
            raise click.BadParameter(
                f"{path}: unknown key {key!r} for '{cmd}'; valid keys: {valid}", ctx, param
            )
        _check_value(params[names[name]], key, v, path, ctx, param)
        default_map[names[name]] = v
    ctx.default_map = {**(ctx.default_map or {}), **default_map}
    return path


def _option_names(command: click.Command) -> dict:
    """Config key (long option name, underscores) -> parameter name."""
    names = {}
    for p in command.params:
        if isinstance(p, click.Option) and p.name not in ("config", "help"):
            for opt in p.opts + p.secondary_opts:
                if opt.startswith("--"):
                    names[opt[2:].replace("-", "_")] = p.name
    return names


def _check_value(option: click.Parameter, key: str, value: object, path: Path, ctx: click.Context,
                 param: click.Parameter) -> None:
    """A config value must have the option's type: a usage error naming the key otherwise."""
    if isinstance(value, dict):
        raise click.BadParameter(f"{path}: {key} = {value!r} must be a single value", ctx, param)
    if isinstance(value, (_dt.date, _dt.time)):
        raise click.BadParameter(f"{path}: {key} = {value!r} is a date, not an option value",
                                 ctx, param)
    if getattr(option, "is_flag", False) and not isinstance(value, bool):
        raise click.BadParameter(f"{path}: {key} must be true or false, got {value!r}", ctx, param)
    try:
        option.type_cast_value(ctx, value)
    except click.BadParameter:
        pass  # Click reports it (naming the option) if the value is used: a flag may override it
    except (TypeError, ValueError, OverflowError):
        what = "must be a single value" if isinstance(value, list) else \
            f"is not a valid {option.type.name}"
        raise click.BadParameter(f"{path}: {key} = {value!r} {what}", ctx, param) from None


def _known_commands(ctx: click.Context) -> dict:
    root_ctx = ctx.find_root()
    root = root_ctx.command
    if not isinstance(root, click.Group):
        return {}
    return {name: root.get_command(root_ctx, name) for name in root.list_commands(root_ctx)}


config_opt = click.option(
    "--config",
    type=click.Path(dir_okay=False),
    is_eager=True,
    expose_value=False,
    callback=_load_config,
    help="TOML file of option values (keys as option names), or a preset's name (`retina-prep"
    " presets` lists them). Flags given on the command line win.",
)

output_opt = click.option(
    "-o",
    "--output",
    "outdir",
    required=True,
    type=click.Path(file_okay=False, allow_dash=True, path_type=Path),
    help="Output folder (created if missing).",
)

def clahe_options(f: F) -> F:
    """--clip-limit and --tiles (masked CLAHE), as normalize and compare take them."""
    from ..clahe import DEFAULT_CLIP_LIMIT, DEFAULT_TILES

    return _apply(f, [
        click.option("--clip-limit", type=FiniteRange(0, 1000), default=DEFAULT_CLIP_LIMIT,
                     show_default=True, help="--method clahe: OpenCV's clip limit (0: none)."),
        click.option("--tiles", type=click.IntRange(1, 256), default=DEFAULT_TILES,
                     show_default=True, help="--method clahe: an N x N grid of tiles."),
    ])


#: normalize's -o: a folder, or for one input an image file, or - for stdout.
output_or_file_opt = click.option(
    "-o",
    "--output",
    "outdir",
    required=True,
    type=click.Path(allow_dash=True, path_type=Path),
    help="Output folder (created if missing); with one input, an image file to write (.png,"
    " .tif: the format follows the ending), or - for stdout.",
)

overwrite_opt = click.option(
    "--overwrite", is_flag=True, default=False, help="Replace existing output files."
)

#: The command line's messages: one line each on stderr, through Python's logging.
#: Levels: ERROR (bad files), WARNING (summaries of per-image warnings), INFO (progress and
#: summary lines; the default shows them), DEBUG (one warning line per image: -v).
LOG = logging.getLogger("retina_prep.cli")


class _StderrLines(logging.Handler):
    """Each record as one line on stderr, above a running progress bar (newlines escaped)."""

    def emit(self, record: logging.LogRecord) -> None:
        msg = record.getMessage().replace("\n", "\\n").replace("\r", "\\r")
        bars = sys.modules.get("tqdm")  # imported only when a progress bar runs
        if bars is not None:
            bars.tqdm.write(msg, file=sys.stderr)
        else:
            sys.stderr.write(msg + "\n")
            sys.stderr.flush()


def setup_logging() -> None:
    """Route LOG to stderr at the default level (INFO); -q and -v change the level."""
    if not any(isinstance(h, _StderrLines) for h in LOG.handlers):
        LOG.addHandler(_StderrLines())
    LOG.propagate = False
    LOG.setLevel(logging.INFO)


def _set_verbosity(ctx: click.Context, param: click.Parameter, value: bool) -> bool:
    if value:
        LOG.setLevel(logging.ERROR if param.name == "quiet" else logging.DEBUG)
    return value


quiet_opt = click.option(
    "-q", "--quiet", is_flag=True, default=False, callback=_set_verbosity,
    help="Errors only: no progress bar, warnings or summary line.",
)

verbose_opt = click.option(
    "-v", "--verbose", is_flag=True, default=False, expose_value=False, callback=_set_verbosity,
    help="Also one warning line per image (e.g. each estimated mask), not just their count.",
)

panel_width_opt = click.option(
    "--panel-width", type=click.IntRange(min=200), default=PANEL_WIDTH, show_default=True,
    help="Largest figure width in pixels: wider figures show the images downscaled (said in a"
    " caption); insets and profiles keep full-resolution pixels.",
)

_format_opt = click.option(
    "--format",
    "fmt",
    type=click.Choice(list(OUTPUT_FORMATS)),
    default="png",
    show_default=True,
    help="Output file format (both lossless).",
)

_png_level_opt = click.option(
    "--png-level",
    type=click.IntRange(min(PNG_LEVELS), max(PNG_LEVELS)),
    default=None,
    help="PNG compression level, 0 (store) to 9 (smallest) [default: OpenCV's own setting,"
    " which is faster and smaller than any level on fundus images; see docs/performance.md].",
)


def format_opt(f: F) -> F:
    """--format and --png-level."""
    return _format_opt(_png_level_opt(f))

_ignore_orientation_opt = click.option(
    "--ignore-orientation", is_flag=True, default=False,
    help="Use pixels as stored, ignoring the EXIF orientation of JPEG/TIFF/PNG files [default:"
    " images (and mask files) are turned as the orientation says, as viewers show them].",
)


def max_pixels_opt(f: F) -> F:
    """--max-pixels and --ignore-orientation: how image files are read."""
    return _max_pixels_opt(_ignore_orientation_opt(f))


_max_pixels_opt = click.option(
    "--max-pixels",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_PIXELS,
    show_default=True,
    help="Refuse images with more pixels than this (protects against decompression bombs).",
)


def _apply(f: F, decorators: Sequence[Callable[[F], F]]) -> F:
    for d in reversed(decorators):
        f = d(f)
    return f


def mask_source_options(f: F) -> F:
    """--mask, --mask-dir, --mask-pattern, --auto-mask."""
    return _apply(f, [
        click.option(
            "--mask",
            type=click.Path(dir_okay=False, path_type=Path),
            help="FOV mask file for every input image (one camera, one field of view).",
        ),
        click.option(
            "--mask-dir",
            type=click.Path(file_okay=False, path_type=Path),
            help="Folder of FOV masks, named by --mask-pattern.",
        ),
        click.option(
            "--mask-pattern",
            default=None,
            help="Mask file name in --mask-dir; {stem} is the image name without ending"
            " [default: {stem}_mask or {stem}_fov with any image ending].",
        ),
        click.option(
            "--auto-mask",
            is_flag=True,
            default=False,
            help="Estimate the FOV from each image, even when a mask file exists.",
        ),
        click.option(
            "--no-mask-check",
            "mask_check",
            flag_value=False,
            default=True,
            help="Use mask files that do not look like a FOV mask of their image (a gray image,"
            " an inverted mask, an inside that is mostly dark background) instead of refusing them.",
        ),
    ])


def mask_trim_options(rim_default: str, rim_help: str) -> Callable[[F], F]:
    """--erode and --rim, with the command's own rim default."""

    def decorate(f: F) -> F:
        return _apply(f, [
            click.option(
                "--erode",
                type=ErodeType(),
                default=0,
                show_default=True,
                help="Shrink the FOV mask by PX pixels (drops the dark rim at the margin);"
                f" 'auto' = {AUTO_ERODE_FRACTION:.1%} of the FOV diameter.",
            ),
            click.option(
                "--rim",
                type=click.Choice(RIM_CHOICES),
                default=rim_default,
                show_default=True,
                help=rim_help,
            ),
        ])

    return decorate


def mask_options(f: F) -> F:
    """Mask source options plus --erode/--rim/--feather as normalize-like commands use them."""
    f = click.option(
        "--feather",
        type=FiniteRange(0, 10_000),
        default=0.0,
        show_default=True,
        help="Soft FOV margin: mask weights ramp from 0 to 1 over PX pixels inside the margin.",
    )(f)
    f = mask_trim_options(
        "default",
        "Transition rim at the FOV margin: 'auto' trims it where the image shows one,"
        " 'none' keeps it (the mask as given, the paper's method); 'default' is auto for every"
        " mask except one that `retina-prep mask` already trimmed.",
    )(f)
    return mask_source_options(f)


def stderr_is_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):
        return False


def geometry_options(f: F) -> F:
    """--crop, --resize, --write-mask, --with-labels, --bounds (outputs for learning pipelines)."""
    return _apply(f, [
        click.option(
            "--crop", type=click.Choice(["none", "fov"]), default="none", show_default=True,
            help="fov: cut the output to the FOV's bounding square (padded with --fill where the"
            " disc is cut by the frame), after processing at native resolution.",
        ),
        click.option(
            "--resize", type=click.IntRange(min=1), default=None, metavar="N",
            help="Resize the output to N x N pixels (area averaging when shrinking; masks and"
            " labels nearest neighbour), after --crop.",
        ),
        click.option(
            "--write-mask", is_flag=True, default=False,
            help="Also write the mask used, cut like the image: OUTDIR/<stem>_mask.png (0/255).",
        ),
        click.option(
            "--with-labels", "labels", default=None, metavar="DIR|auto",
            help="Also write each image's label image (e.g. DRIVE 1st_manual), cut like the image"
            " (nearest neighbour): OUTDIR/<stem>_label.png. DIR holds files named by the image's"
            " stem; 'auto' finds them by dataset conventions.",
        ),
        click.option(
            "--bounds", type=click.Path(dir_okay=False, path_type=Path), default=None,
            help="Append one CSV row per image: original size, FOV centre, radius and bounds,"
            " the crop and the 2x3 affine original -> output (needs --crop fov or --resize).",
        ),
    ])


def build_mask_settings(auto_mask: bool, mask_check: bool, erode: float | str, rim: str,
                        feather: float, max_pixels: int, ignore_orientation: bool) -> MaskSettings:
    """The mask options (:func:`mask_options` and :func:`max_pixels_opt`) as one
    :class:`~retina_prep.pipeline.MaskSettings`, alike in every command that reads masks."""
    return MaskSettings(auto_mask=auto_mask, check=mask_check, erode=erode, rim=rim,
                        feather=feather, max_pixels=max_pixels,
                        ignore_orientation=ignore_orientation)


def geometry_settings(crop: str | None, resize: int | None, write_mask: bool, labels: str | None,
                      bounds: Path | None) -> GeometrySettings:
    """The geometry options checked together (ValueError: a usage error)."""
    if labels is not None and labels != "auto" and not Path(labels).is_dir():
        raise ValueError(f"--with-labels: {labels} is not a folder (or 'auto')")
    geometry = GeometrySettings(crop=crop == "fov", resize=resize, write_mask=write_mask,
                                labels=labels)
    if bounds is not None and not geometry.transforms:
        raise ValueError("--bounds records the crop and resize: give --crop fov or --resize N")
    return geometry
