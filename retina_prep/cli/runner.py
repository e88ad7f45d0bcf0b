"""The batch machinery every command shares: inputs, pairing, sharding, workers,
progress, per-file errors, resume, manifest and the summary line."""

from __future__ import annotations

import datetime as _dt
import functools
import logging
import os
import signal
import sys
import typing
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any, NoReturn

import click

from .. import __version__
from .._types import PathLike
from ..batch import Batch, ManifestError, Report, Result, Status, default_jobs
from ..dataset import Pair, find_pairs, shard_from_environment, shard_pairs
from ..errors import DatasetError, Notice, RetinaPrepError, printable
from ..figures import contact_sheet
from ..io import write_image
from ..reports import BoundsFile
from ..steps import Step
from .options import (
    LOG,
    F,
    config_opt,
    max_pixels_opt,
    overwrite_opt,
    quiet_opt,
    stderr_is_terminal,
    verbose_opt,
)

if TYPE_CHECKING:
    from ..pipeline import OutputSettings


def log(msg: str, level: int = logging.INFO) -> None:
    """One line on stderr that does not break a progress bar (see :data:`options.LOG`)."""
    LOG.log(level, msg)


#: The command's advice, in its flags, by the stable code of a library error or warning (the
#: library's own advice names its parameters); formatted with the error's parameters.
_ADVICE = {
    "output-exists": "use --overwrite to replace it, or --skip-existing to keep it",
    "not-a-mask": "--no-mask-check uses it anyway",
    "too-large": "raise it with --max-pixels if the file is trusted",
    "float-range": "say what range they have, e.g. --value-range 0,255",
    "dtype-range": "add --value-range LO,HI, or convert the image to uint8, uint16 or float in"
                   " [0, 1]",
    "png-dtype": "write TIFF (--format tif)",
    "order1-untrimmed": "add --rim auto or --erode",
    "few-bits": "if the data is {bits}-bit, add --value-range 0,{high}",
}


def _advice(code: str | None, params: dict, library: str | None) -> str | None:
    """The command's advice for ``code`` (the library's when the command has none)."""
    template = _ADVICE.get(code or "")
    if template is None:
        return library
    try:
        return template.format(**params)
    except (KeyError, IndexError, ValueError):
        return library


#: A kind of warning met by at most this many images names them in its summary line.
_NAMED_WARNINGS = 3


def notice_wording(notice: Notice | str, *, with_path: bool = True) -> str:
    """A library warning with the command's advice (keyed on its code)."""
    if not isinstance(notice, Notice):
        return str(notice)
    advice = _advice(notice.code, notice.params, notice.advice)
    text = notice.text if advice is None else f"{notice.text}; {advice}"
    return f"{printable(notice.path)}: {text}" if with_path and notice.path is not None else text


def _warning_kind(warning: Notice | str) -> str:
    """What alike warnings share (a batch counts them as one kind): the code and the text."""
    if isinstance(warning, Notice):
        return notice_wording(warning, with_path=False)
    return str(warning)


def cli_wording(result: Result) -> str:
    """The error line of a failed result, with advice in terms of the command's flags."""
    advice = _advice(result.error_code, result.error_params, None)
    if advice is None:
        return result.error or ""
    return f"{result.error_message or result.error} ({advice})"


# ------------------------------------------------------------------ options


class ShardType(click.ParamType):
    """``K/N``: the K-th of N shards, 1 <= K <= N; ``auto`` or ``auto/N``: K (and N) from the
    array job's environment (SLURM, Kubernetes indexed Job, AWS Batch)."""

    name = "K/N|auto"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if isinstance(value, tuple):
            return value
        text = str(value).strip().lower()
        if text == "auto" or text.startswith("auto/"):
            try:
                n = int(text[5:]) if text.startswith("auto/") else None
                if n is not None and n < 1:
                    raise ValueError(f"N must be >= 1, got {n}")
                return shard_from_environment(n)
            except ValueError as exc:
                self.fail(f"{value!r}: {exc}", param, ctx)
        try:
            k, n = (int(x) for x in str(value).split("/"))
        except ValueError:
            self.fail(f"{value!r} is not K/N (for example 3/8)", param, ctx)
        if not 1 <= k <= n:
            self.fail(f"{value!r}: K must be between 1 and N", param, ctx)
        return (k, n)


@dataclass(frozen=True)
class BatchOptions:  # noqa: D101 - fields as the options below
    jobs: int = 1
    skip_existing: bool = False
    manifest: Path | None = None
    files_from: str | None = None
    null: bool = False
    print_outputs: bool = False
    dry_run: bool = False
    shard: tuple[int, int] | None = None
    print0: bool = False
    base: str | None = None

    def output_settings(self, fmt: str, png_level: int | None, overwrite: bool) -> OutputSettings:
        """A command's :class:`~retina_prep.pipeline.OutputSettings`: ``--skip-existing`` keeps
        existing outputs unless ``--overwrite``."""
        from ..pipeline import OutputSettings

        return OutputSettings(format=fmt, overwrite=overwrite, png_level=png_level,
                              keep_existing=self.skip_existing and not overwrite)


_OPTION_NAMES = ("jobs", "skip_existing", "manifest", "files_from", "null", "print_outputs",
                 "dry_run", "shard", "print0", "base")


def input_options(f: F) -> F:
    """--files-from, -0, --shard only (for commands that read inputs but write nothing)."""
    return batch_options(f, inputs_only=True)


def batch_options(f: F, *, inputs_only: bool = False, without: tuple[str, ...] = ()) -> F:
    """--jobs, --skip-existing, --manifest, --files-from, -0, --print-outputs, --dry-run, --shard.

    The command receives them as one ``batch`` argument (a :class:`BatchOptions`).
    """
    input_names = ("files_from", "null", "shard", "base")
    decorators = [
        click.option("-j", "--jobs", type=click.IntRange(min=1), default=None,
                     help="Worker processes [default: the number of cores]."),
        click.option("--skip-existing", is_flag=True, default=False,
                     help="Resume: keep outputs that exist (they are complete: writes are atomic)"
                     " and do the rest."),
        click.option("--manifest", type=click.Path(dir_okay=False, path_type=Path), default=None,
                     help="Provenance log, one JSON line per image [default: OUTDIR/manifest.jsonl];"
                     " runs append."),
        click.option("--files-from", type=click.Path(dir_okay=False, allow_dash=True), default=None,
                     help="Read more INPUTs from FILE, one per line ('-': standard input)."),
        click.option("-0", "--null", is_flag=True, default=False,
                     help="--files-from entries are NUL-separated (as find -print0 writes)."),
        click.option("--print-outputs", is_flag=True, default=False,
                     help="Print each output path on stdout, one per line (and nothing else)."),
        click.option("--dry-run", is_flag=True, default=False,
                     help="Print the pairing table (image, mask, output) and stop."),
        click.option("--shard", type=ShardType(), default=None,
                     help="Process only the K-th of N deterministic shards (sizes differ by at most"
                     " one); 'auto' reads K and N from a SLURM array job, 'auto/N' the index from"
                     " a Kubernetes indexed Job or an AWS Batch array job."),
        click.option("--print0", is_flag=True, default=False,
                     help="As --print-outputs, each path ended by a NUL byte (for xargs -0)."),
        click.option("--base", type=click.Path(file_okay=False), default=None,
                     help="Name outputs of image files given one by one (or by --files-from) by"
                     " their path under this folder, mirroring sub-folders [default: the file"
                     " name alone]."),
    ]

    if inputs_only:
        decorators = [d for d, n in zip(decorators, _OPTION_NAMES) if n in input_names]
    names = [n for n in _OPTION_NAMES if not inputs_only or n in input_names]
    if without:  # options a command uses for something else (restore's --manifest)
        decorators = [d for d, n in zip(decorators, names) if n not in without]
        names = [n for n in names if n not in without]

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        values = {n: kwargs.pop(n) for n in names}
        if values.get("jobs", 1) is None:
            values["jobs"] = default_jobs()
        kwargs["batch"] = BatchOptions(**values)
        return f(*args, **kwargs)

    wrapped: Any = functools.update_wrapper(wrapper, f)
    for d in reversed(decorators):
        wrapped = d(wrapped)
    return typing.cast(F, wrapped)


def run_options(f: F | None = None, *, without: tuple[str, ...] = ()) -> Any:
    """The options every writing command ends with: --overwrite, --max-pixels, the batch
    options (less those named in ``without``), -q and --config (eager, so it is read before
    the others). Use as ``@run_options`` or ``@run_options(without=("manifest",))``."""
    def apply(f: F) -> F:
        batch = functools.partial(batch_options, without=without)
        for d in (config_opt, verbose_opt, quiet_opt, batch, max_pixels_opt, overwrite_opt):
            f = d(f)
        return f
    return apply if f is None else apply(f)


# ------------------------------------------------------------------ inputs


def read_capped(fh: typing.BinaryIO, limit: int) -> bytes:
    """All of ``fh``, refusing more than ``limit`` bytes (``/dev/zero`` never ends)."""
    data = fh.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"more than {limit >> 20} MB; not a list of files")
    return data


#: The largest --files-from list read (a million paths of 250 bytes).
MAX_LIST_BYTES = 256 << 20


def _read_files_from(source: str, null: bool) -> list[str]:
    try:
        if source == "-":
            stream = getattr(sys.stdin, "buffer", None)
            if stream is None or getattr(sys.stdin, "closed", False):
                raise click.BadParameter("-: standard input is closed", param_hint="--files-from")
            data = read_capped(stream, MAX_LIST_BYTES)
        else:
            with open(source, "rb") as fh:
                data = read_capped(fh, MAX_LIST_BYTES)
    except ValueError as exc:  # read from a closed stream, or more than the cap
        raise click.BadParameter(f"{source}: {exc}", param_hint="--files-from") from None
    except OSError as exc:
        raise click.BadParameter(f"{source}: {exc.strerror or exc}", param_hint="--files-from") from None
    text = data.decode("utf-8", errors="surrogateescape")
    items = text.split("\0") if null else text.splitlines()
    return [i for i in (x.strip("\r") if not null else x for x in items) if i]


def collect_pairs(inputs: Sequence[PathLike], *, mask: PathLike | None,
                  mask_dir: PathLike | None, mask_pattern: str | None,
                  outdir: PathLike | list[PathLike | None] | None,
                  batch: BatchOptions | None = None, auto_mask: bool = False) -> list[Pair]:
    """Find and pair inputs; problems with the inputs themselves are usage errors (exit 2).

    ``outdir`` (a folder or a list of folders) is never searched for inputs. With
    ``auto_mask`` the pairs carry no mask file (every FOV is estimated), so the plan, `pairs`,
    the run and the manifest all say so alike.
    """
    inputs = list(inputs)
    if batch is not None and batch.files_from:
        inputs += _read_files_from(batch.files_from, batch.null)
    outdirs = [d for d in (outdir if isinstance(outdir, (list, tuple)) else [outdir]) if d]
    if not inputs:
        raise click.UsageError("no INPUT given: name image files or dataset folders")
    if mask is not None and mask_dir is not None:
        raise click.UsageError("--mask and --mask-dir exclude each other")
    # problems of the run, not of an image: said once, before anything is written
    if mask is not None and not os.path.isfile(mask):
        what = "is a folder (use --mask-dir)" if os.path.isdir(mask) else "no such file"
        raise click.BadParameter(f"{printable(mask)}: {what}", param_hint="--mask")
    if mask_dir is not None and not os.path.isdir(mask_dir):
        what = "is a file (use --mask)" if os.path.isfile(mask_dir) else "no such folder"
        raise click.BadParameter(f"{printable(mask_dir)}: {what}", param_hint="--mask-dir")
    try:
        pairs = find_pairs(
            inputs, mask=mask, mask_dir=mask_dir, mask_pattern=mask_pattern, exclude=outdirs,
            missing_ok=bool(batch is not None and batch.files_from),
            base=batch.base if batch is not None else None,
        )
    except DatasetError as exc:
        raise click.UsageError(str(exc)) from None
    if auto_mask:
        pairs = [replace(p, mask=None, mask_source="none") for p in pairs]
    if batch is not None and batch.shard is not None:
        pairs = shard_pairs(pairs, *batch.shard)
    return pairs


class ContactSheet:
    """Collects the thumbnails steps put in ``result.products["thumb"]`` and writes one contact
    sheet.

    Pass the instance as ``on_result`` to :func:`execute`, then call :meth:`write`.
    An existing sheet is refused up front unless ``overwrite``.
    """

    def __init__(self, path: Path | None, *, overwrite: bool, columns: int | None = None) -> None:
        if path is not None and path.exists() and not overwrite:
            raise click.UsageError(f"{path}: sheet exists (use --overwrite to replace it)")
        self.path, self.overwrite, self.columns = path, overwrite, columns
        self.tiles: list = []

    def __call__(self, result: Result) -> None:
        thumb = result.products.get("thumb")
        if thumb is not None:
            self.tiles.append((str(result.pair.rel), thumb))

    def write(self, command: str, quiet: bool) -> None:
        if self.path is None or not self.tiles:
            return
        try:
            write_image(self.path, contact_sheet(self.tiles, columns=self.columns),
                        overwrite=self.overwrite)
        except OSError as exc:
            raise click.ClickException(
                f"{self.path}: cannot write the sheet ({exc.strerror or exc})") from None
        if not quiet:
            log(f"{command}: contact sheet of {len(self.tiles)} images in {self.path}")


# ------------------------------------------------------------------ running


@contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """A kill (SIGTERM) unwinds like Ctrl-C, so workers stop and temporaries are removed."""
    def handler(signum: int, frame: FrameType | None) -> NoReturn:
        raise KeyboardInterrupt

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


class _NoBar:
    """What the batch calls on a progress bar, doing nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


@contextmanager
def _progress_bar(total: int, show: bool, command: str) -> Iterator[Any]:
    """A tqdm bar on stderr when ``show``; else a stand-in, and tqdm is not even imported (it
    costs start-up time)."""
    if not show:
        yield _NoBar()
        return
    from tqdm import tqdm

    with tqdm(total=total, file=sys.stderr, unit="img", desc=command, dynamic_ncols=True) as bar:
        yield bar


def _manifest_path(outdir: Path, batch: BatchOptions) -> Path:
    if batch.manifest is not None:
        return batch.manifest
    if batch.shard is not None:
        k, n = batch.shard
        return outdir / f"manifest.shard-{k}-of-{n}.jsonl"
    return outdir / "manifest.jsonl"


def execute(
    step: Step,
    pairs: list[Pair],
    *,
    outdir: Path,
    batch: BatchOptions,
    quiet: bool,
    params: dict,
    on_result: Callable[[Result], None] | None = None,
    default_manifest: bool = True,
) -> Report:
    """Run ``step`` (a :class:`~retina_prep.steps.Step`) over ``pairs``: the one batch loop of
    every command; the outputs it lists for a pair are what the dry run, resume and output
    checks see.

    Dry run, resume (--skip-existing), worker processes, progress bar,
    per-file error lines, the manifest and --print-outputs all live here.
    """
    command = step.name
    expected_outputs = step.output_list
    if batch.dry_run:
        # the columns of `retina-prep pairs`, with the full output paths instead of the names
        lines = ["image\tmask\tmask_source\toutputs"]
        for p in pairs:
            outs = ",".join(str(o) for o in expected_outputs(p))
            src = p.mask_source if p.mask else "estimated"
            lines.append(f"{p.image}\t{p.mask or '-'}\t{src}\t{outs}")
        click.echo("\n".join(lines))  # one write: 100 000 echo calls cost seconds
        return Report()

    report = Report()
    manifest: Path | None = _manifest_path(outdir, batch)
    if batch.manifest is None and not default_manifest:
        manifest = None  # a single figure: no manifest unless asked for
    run_info = {"tool": "retina-prep", "version": __version__, "command": command,
                "argv": sys.argv[1:], "started": _dt.datetime.now(_dt.timezone.utc).isoformat(),
                "shard": list(batch.shard) if batch.shard else None, "config": params}
    try:
        run = Batch(pairs, step, outputs_of=expected_outputs, outdir=outdir, jobs=batch.jobs,
                    skip_existing=batch.skip_existing, manifest=manifest, run_info=run_info)
    except ManifestError as exc:  # a folder, or an input: a usage error
        raise click.UsageError(str(exc)) from None
    except RetinaPrepError as exc:
        raise click.ClickException(str(exc)) from None
    warned: dict[str, list[str]] = {}
    exists: list[Result] = []
    manifest_reported = False

    def handle(result: Result) -> None:
        nonlocal manifest_reported
        if on_result is not None:
            on_result(result)
        for w in result.warnings:
            log(f"warning: {notice_wording(w)}", logging.DEBUG)
            warned.setdefault(_warning_kind(w), []).append(printable(result.pair.image))
        if result.status == Status.FAILED and result.error_code == "output-exists":
            exists.append(result)  # a rerun without --overwrite: said once, with the count
            log(f"error: {cli_wording(result)}", logging.DEBUG)
        elif result.status == Status.FAILED:
            log(f"error: {cli_wording(result)}", logging.ERROR)
        elif result.status == Status.DONE and batch.print0:
            stdout = sys.stdout.buffer
            for o in result.outputs:
                stdout.write(os.fsencode(o) + b"\0")
            stdout.flush()
        elif result.status == Status.DONE and batch.print_outputs:
            for o in result.outputs:
                click.echo(str(o))
        report.add(result)
        if run.manifest_error and run.manifest_path is not None and not manifest_reported:
            manifest_reported = True
            report.failed += 1
            log(f"error: {printable(run.manifest_path)}: {run.manifest_error}; outputs are still"
                " written", logging.ERROR)

    results = iter(run)
    show_bar = not quiet and len(run.todo) > 1 and stderr_is_terminal()
    with _sigterm_as_interrupt(), _progress_bar(len(run.todo), show_bar, command) as bar:
        try:
            for i, result in enumerate(results):
                handle(result)
                if i >= len(run.decided):  # an image that ran
                    bar.update(1)
        except KeyboardInterrupt:
            results.close()  # stops the workers; the images they had finished are recorded
            bar.close()
            for result in run.finished_on_stop:
                handle(result)
            log(f"{command}: interrupted after {report.done} done; outputs written so far are"
                " complete; rerun with --skip-existing to finish", logging.ERROR)
            raise click.exceptions.Exit(130) from None
    verbose = LOG.getEffectiveLevel() <= logging.DEBUG
    if exists:
        first = printable(exists[0].error_path or exists[0].pair.image)
        more = f" ({first} and {len(exists) - 1} more)" if len(exists) > 1 else f" ({first})"
        hint = f" ({_ADVICE['output-exists']})" if len(exists) == 1 else \
            " (use --overwrite to replace them, or --skip-existing to keep them)"
        log(f"error: {len(exists)} of {len(run.todo)} images: output exists{more}{hint}",
            logging.ERROR)
    for kind, names in warned.items():
        n = len(names)
        if verbose:
            hint = ""
        elif n <= _NAMED_WARNINGS:  # a few: name them here
            hint = f": {', '.join(names)}"
        else:
            hint = " (listed in the manifest; -v shows each)"
        log(f"warning: {n} of {len(run.todo)} images: {kind}{hint}", logging.WARNING)
    if not quiet:
        extra = f", {report.skipped} skipped (exist)" if batch.skip_existing else ""
        log(f"{command}: {report.done} done, {report.failed} failed{extra}; outputs in {outdir}")
    return report


def bounds_file(path: Path | None) -> BoundsFile:
    """The run's :class:`~retina_prep.reports.BoundsFile`; one that cannot be written is a usage
    error of ``--bounds``."""
    try:
        return BoundsFile(path)
    except RetinaPrepError as exc:
        raise click.BadParameter(str(exc), param_hint="--bounds") from None
