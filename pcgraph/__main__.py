"""``python -m pcgraph``: the ``pcgraph`` command (what ``torchrun ... -m pcgraph run SPEC`` runs)."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
