"""``python -m ftsam``: the ``ftsam`` command (:mod:`ftsam.cli`)."""
import sys

from ftsam.cli import main

sys.exit(main())
