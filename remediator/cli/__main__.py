"""``python -m remediator.cli``: the ``model-fleet`` command, as the console script runs it."""

import sys

from remediator.cli.main import main

sys.exit(main())
