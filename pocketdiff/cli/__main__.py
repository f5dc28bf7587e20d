"""``python -m pocketdiff.cli``: the ``pocketdiff`` command (used by launchers such as ``torchrun -m``)."""

import sys

from pocketdiff.cli import main

sys.exit(main())
