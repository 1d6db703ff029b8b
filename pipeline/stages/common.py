"""What every stage entry needs: logging, and one line instead of a traceback for bad input."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from pipeline import distributed
from pipeline.errors import InputError

# Errors that mean bad input, not a bug: reported as one line, exit status 1, no traceback.
# InputError covers every class of pipeline.errors.
INPUT_ERRORS = (InputError, FileNotFoundError)


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
