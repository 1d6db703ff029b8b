"""What every stage needs: logging, atomic writes, terminal tables."""

from __future__ import annotations

import json
import logging
import os
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline import distributed
from pipeline.download import DownloadError
from pipeline.params import InputError

# Errors that mean bad input, not a bug: reported as one line, exit status 1, no traceback.
# InputError covers ParamsError, DatasetError, UnsafeArchiveError, CacheError, CheckpointError.
INPUT_ERRORS = (InputError, DownloadError, FileNotFoundError)


def one_line(err: BaseException) -> str:
    """The message of an input error, without the traceback text that a DataLoader worker puts
    in front of it ("Caught DatasetError in DataLoader worker process 0. Original Traceback...":
    the last line is the original error, ``module.Class: message``)."""
    message = str(err)
    if "Original Traceback" in message:
        last = message.rstrip().splitlines()[-1]
        name = type(err).__name__
        message = last.split(f"{name}: ", 1)[1] if f"{name}: " in last else last
    return message


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")


def run(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> None:
    """Run a stage's ``main`` with logging set up; bad input ends it with the error's message on
    stderr and exit status 1, SIGINT/SIGTERM with a message and 128 + the signal's number
    (``distributed.Stopped``; training stages write a resume checkpoint first)."""
    setup_logging()
    distributed.install_signal_handlers()
    try:
        main(argv)
    except distributed.Stopped as err:
        distributed.shutdown(failed=True)
        print(f"stopped: {err}", file=sys.stderr)
        raise SystemExit(128 + err.signum) from None
    except INPUT_ERRORS as err:
        distributed.shutdown(failed=True)
        print(f"error: {one_line(err)}", file=sys.stderr)
        raise SystemExit(1) from None
    except BaseException:
        distributed.shutdown(failed=True)
        raise
    distributed.shutdown()


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically (a temporary file, then rename)."""
    write_text(path, json.dumps(obj, indent=2) + "\n")


def write_text(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_csv(path: str | Path, rows: list[dict]) -> None:
    """Rows of equal keys as CSV (DVC plots read it), atomically."""
    write_text(path, pd.DataFrame(rows).to_csv(index=False))


def format_table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """A plain-text table with aligned columns, for the terminal."""
    cells = [[str(h) for h in header]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    def line(row: list[str]) -> str:  # first column left-aligned, numbers right-aligned
        return "  ".join(c.rjust(w) if i else c.ljust(w)
                         for i, (c, w) in enumerate(zip(row, widths, strict=True)))

    lines = [line(r) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
