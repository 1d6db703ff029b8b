"""``python -m tools.docs [--check]``: see the package's docstring."""

import sys

from tools.docs import main

sys.exit(main())
