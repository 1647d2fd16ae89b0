"""``python -m ctrlab ...``: the ``ctrlab`` command (:mod:`ctrlab.cli`)."""
import sys

from .cli import main

sys.exit(main())
