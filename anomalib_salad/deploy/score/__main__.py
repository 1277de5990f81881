"""``python -m anomalib_salad.deploy.score``: the ``salad-score`` command."""

import sys

from .cli import main

sys.exit(main())
