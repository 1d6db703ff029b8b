"""``python -m tools.experiments``: run or list the paper's experiments (``cells``)."""

from tools.experiments.cells import main

main()
