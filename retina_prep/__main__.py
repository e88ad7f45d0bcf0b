"""``python -m retina_prep`` runs the command line."""

from .cli.main import cli

if __name__ == "__main__":  # pragma: no cover
    cli(prog_name="retina-prep")
