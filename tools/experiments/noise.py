"""The line `make exp` prints under the experiments table: per video set, the precision of the
headline (``ci.R1``, ``ci.mAP`` of ``metrics/results/<set>.json``: the largest 95 percent
half-width over the models), against which a difference between two rows is read. A half-width
of 0 (every query scored alike) or none (results scored before the intervals) reads no
difference: the line says the noise is undefined. A file that is not a headline is one line
``error: <file>: ...`` and exit status 1.

    python -m tools.experiments.noise [metrics/results]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from pipeline.errors import InputError
from pipeline.metrics import HEADLINE_CI
from pipeline.stage_inputs import output

METRICS = {"R1": "rank-1", "mAP": "mAP"}  # the headline's keys, as the line names them
# what restores a headline file: the summary stage writes it, git keeps it (cache: false)
RESTORE = "`git checkout -- {path}` restores the committed file, `make repro` writes it again"


def noise_lines(folder: Path) -> list[str]:
    return [noise_line(path, read_headline(path)) for path in sorted(folder.glob("*.json"))]


def read_headline(path: Path) -> dict:
    """The JSON object of a headline file; InputError naming it where it is none."""
    try:
        headline = json.loads(path.read_text())
    except OSError as err:
        raise InputError(f"{path}: cannot read it ({err.strerror or err})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not JSON ({err}); {RESTORE.format(path=path)}") from None
    if not isinstance(headline, dict):
        raise InputError(f"{path}: expected the summary stage's JSON object (R1, mAP, "
                         f"{HEADLINE_CI}), got a {type(headline).__name__}; "
                         f"{RESTORE.format(path=path)}")
    return headline


def noise_line(path: Path, headline: dict) -> str:
    ci = headline.get(HEADLINE_CI)
    if not isinstance(ci, dict):
        return (f"{path.stem}: the test-set noise is undefined: {path} has no 95 percent interval "
                "(results scored before the intervals; `make repro` scores them again)")
    undefined = [f"of {label} is {ci.get(name, 'missing')}" for name, label in METRICS.items()
                 if not _is_width(ci.get(name))]
    if undefined:
        # "differences below 0.0 points" would call every difference real
        return (f"{path.stem}: the test-set noise is undefined: in {path} the 95 percent "
                f"half-width {' and '.join(undefined)} (a width of 0: every query scored alike, "
                "or one test identity), so no difference between two rows can be read against it")
    return (f"{path.stem}: differences below {ci['R1']} rank-1 points or "
            f"{ci['mAP']} mAP points are test-set noise (the workspace's largest "
            "95 percent half-width over the models)")


def _is_width(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value > 0


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    try:
        lines = noise_lines(Path(argv[0] if argv else output("summary", "metrics/results")))
    except InputError as err:
        raise SystemExit(f"error: {err}") from None
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
