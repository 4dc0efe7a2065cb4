"""``python -m pynodeta.cli``: the ``pynodeta`` command."""

import sys

from . import main

sys.exit(main())
