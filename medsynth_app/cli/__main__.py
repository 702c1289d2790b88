"""``python -m medsynth_app.cli``: the ``medsynth`` command."""
import sys

from . import main

if __name__ == "__main__":
    sys.exit(main())
