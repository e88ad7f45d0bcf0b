"""retina-prep presets: list the shipped presets, or print one."""

from __future__ import annotations

import click

from ..presets import preset_names, preset_path, preset_summary


@click.command(
    "presets",
    epilog="""\b
Examples:
  retina-prep presets
  retina-prep presets drive > my_drive.toml
  retina-prep normalize DRIVE -o out --config drive
""",
)
@click.argument("name", required=False)
def presets(name: str | None) -> None:
    """List the presets that ship with retina-prep (name and what it is for), or print
    preset NAME as TOML on stdout, to read or to copy and edit. Use one with --config NAME."""
    if name is None:
        for n in preset_names():
            click.echo(f"{n}\t{preset_summary(n)}")
        return
    try:
        path = preset_path(name)
    except KeyError:
        raise click.BadParameter(f"no preset {name!r} (presets: {', '.join(preset_names())})",
                                 param_hint="NAME") from None
    click.echo(path.read_text(encoding="utf-8"), nl=False)
