"""``python -m tools.project.docs [--check]``: see the package's docstring."""

import sys

from tools.project.docs import main

sys.exit(main())
