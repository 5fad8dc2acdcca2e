"""``python -m bench.sim``: see :mod:`bench.sim`."""

import sys

from bench.sim.run import main

sys.exit(main())
