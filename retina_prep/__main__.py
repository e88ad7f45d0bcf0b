"""``python -m retina_prep`` runs the command line."""

from .cli.entry import main

if __name__ == "__main__":  # pragma: no cover
    main()
