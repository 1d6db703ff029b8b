"""The line `make exp` prints under the experiments table: per video set, the precision of the
headline (``ci.R1``, ``ci.mAP`` of ``metrics/results/<set>.json``: the largest 95 percent
half-width over the models), against which a difference between two rows is read.

    python -m tools.noise [metrics/results]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pipeline.metrics import HEADLINE_CI


def noise_lines(folder: Path) -> list[str]:
    lines = []
    for path in sorted(folder.glob("*.json")):
        ci = json.loads(path.read_text()).get(HEADLINE_CI)
        if isinstance(ci, dict) and {"R1", "mAP"} <= set(ci):
            lines.append(f"{path.stem}: differences below {ci['R1']} rank-1 points or "
                         f"{ci['mAP']} mAP points are test-set noise (the workspace's largest "
                         "95 percent half-width over the models)")
    return lines


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    for line in noise_lines(Path(argv[0] if argv else "metrics/results")):
        print(line)


if __name__ == "__main__":
    main()
