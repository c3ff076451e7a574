"""``python -m mapflow_tl.cli``: the same as the ``mapflow-tl`` command."""

import sys

from . import main

sys.exit(main())
