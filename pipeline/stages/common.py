"""What every stage entry needs: logging, and one line instead of a traceback for bad input."""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

from pipeline import signals
from pipeline.errors import DatasetError, InputError
from pipeline.files import DISK_ERRORS, check_writable, disk_error_text, write_json
from pipeline.params import Params, load_params

# Errors that mean bad input, not a bug: reported as one line, exit status 1, no traceback.
# InputError covers every class of pipeline.errors; an OSError counts when its errno is one of
# files.DISK_ERRORS (a full disk, a read-only or forbidden place).
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


def error_line(err: BaseException) -> str | None:
    """The one line that reports ``err``, or None when it is not bad input (a bug: its traceback
    is shown)."""
    if isinstance(err, INPUT_ERRORS):
        return f"error: {one_line(err)}"
    if isinstance(err, OSError) and err.errno in DISK_ERRORS:
        where = f"{err.filename}: " if err.filename is not None else ""
        return f"error: {where}{disk_error_text(err)}"
    return None


def reports(err: BaseException | None) -> bool:
    """Whether this process prints ``err``. Under torchrun every rank meets an error of the
    params, the environment, a model or a folder alike, and rank 0 alone reports it (the others
    exit with status 1 silently); a DatasetError can come from a frame only this rank read, so
    every rank reports its own. Without a readable torchrun environment, the process reports.
    (``err`` None: whether this process is the one that reports, rank 0.)"""
    try:
        rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except (KeyError, ValueError):
        return True
    return not 0 < rank < size or isinstance(err, DatasetError)


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")


def leave_process_group(failed: bool = False) -> None:
    """``distributed.shutdown`` where this process could have joined a process group: only a
    stage that imported ``pipeline.distributed`` can (one that trains nothing, such as the union
    stages under per_set, never imports torch, and starts in a fraction of a second)."""
    module = sys.modules.get("pipeline.distributed")
    if module is not None:
        module.shutdown(failed=failed)


def training_args(parser: argparse.ArgumentParser,
                  argv: list[str] | None) -> tuple[argparse.Namespace, Params]:
    """A training stage's arguments: its own (on ``parser``, ``--params`` among them), then those
    every training stage takes, ``--out`` (its model), ``--live`` (the DVCLive folder of its
    curves) and ``--scratch`` (its resume checkpoints); their folders checked writable before any
    work, and its params read."""
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--live", type=Path, required=True, help="DVCLive folder of the curves")
    parser.add_argument("--scratch", type=Path, required=True, help="resume checkpoints")
    args = parser.parse_args(argv)
    check_writable(args.out.parent, args.live, args.scratch)
    return args, load_params(args.params)


def run(main: Callable[[list[str] | None], None], argv: list[str] | None = None) -> None:
    """Run a stage's ``main`` with logging set up; bad input ends it with one line ``error: ...``
    on stderr (``error_line``; rank 0 alone under torchrun, ``reports``) and exit status 1,
    SIGINT/SIGTERM with a message and 128 + the signal's number (``signals.Stopped``;
    training stages write a resume checkpoint first). Run by DVC, a stage that ends well records
    its time (``record_time``); a record it cannot write is one line ``warning: ...``, never a
    failure of the stage."""
    setup_logging()
    signals.install_signal_handlers()
    try:
        main(argv)
    except signals.Stopped as err:
        leave_process_group(failed=True)
        print(f"stopped: {err}", file=sys.stderr)
        raise SystemExit(128 + err.signum) from None
    except BaseException as err:
        leave_process_group(failed=True)
        line = error_line(err)
        if line is None:
            raise
        if reports(err):
            print(line, file=sys.stderr)
        raise SystemExit(1) from None
    leave_process_group()
    if os.environ.get(DVC_STAGE) and reports(None):
        path = timing_path(os.environ[DVC_STAGE])
        try:
            record_time(path, os.environ[DVC_STAGE], process_age())
        except OSError as err:  # a record of the run: its outputs are complete, the stage ends well
            print(f"warning: {path}: {os.environ[DVC_STAGE]}'s time not recorded "
                  f"({DISK_ERRORS.get(err.errno) or err.strerror or err}); the stage's outputs "
                  "are complete", file=sys.stderr)


# --- how long each stage took ---------------------------------------------------------------------
# DVC runs each stage's command with DVC_STAGE set to the stage's name (attention@synthetic-0), in
# the stage's working directory: the project, or a queued experiment's own copy of it (DVC_ROOT
# names the user's project even then, so it is not used: an experiment's timings stay in its own
# commit). Every stage that ends well records its wall time (from the start of its process,
# imports included) in its own file under metrics/timings/ (``timing_path``), which dvc.yaml
# declares as an output of that stage (not cached: git keeps it), so the README's time table
# (`make docs`) shows the time of the run that made the outputs dvc.lock records. (DVC saves no
# stage with an uncached output to its run-cache: a stage is run again, never restored.)

DVC_STAGE = "DVC_STAGE"
TIMINGS = Path("metrics") / "timings"


def timing_path(stage: str, root: Path = TIMINGS) -> Path:
    """Where DVC stage ``stage`` records its time: ``<root>/<stage>.json``, or for a matrix
    stage (``attention@synthetic-0``) ``<root>/attention/synthetic-0.json``."""
    name, _, item = stage.partition("@")
    return root / name / f"{item}.json" if item else root / f"{name}.json"


def process_age() -> float:
    """Seconds since this process started (Linux: /proc), else since the interpreter started
    timing (``time.perf_counter``'s origin is arbitrary: then 0 would be wrong, so fall back to
    the run's own start, recorded at import)."""
    try:
        ticks = os.sysconf("SC_CLK_TCK")
        start = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19]) / ticks
        boot = next(float(line.split()[1]) for line in Path("/proc/stat").read_text().splitlines()
                    if line.startswith("btime"))
        return max(0.0, time.time() - boot - start)
    except (OSError, ValueError, IndexError, StopIteration):
        return time.monotonic() - _IMPORTED


def record_time(path: Path, stage: str, seconds: float) -> None:
    """Write ``stage``'s time record at ``path`` (``timing_path``): its wall time, when it
    finished and the machine's CPU."""
    write_json(path, {"stage": stage, "seconds": round(seconds, 1),
                      "finished": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime()),
                      "machine": machine()})


def machine() -> dict:
    """The CPU model and the cores this process may use (what the timings depend on)."""
    model = None
    with contextlib.suppress(OSError):
        model = next((line.split(":", 1)[1].strip()
                      for line in Path("/proc/cpuinfo").read_text().splitlines()
                      if line.startswith("model name")), None)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": model or platform.processor() or "unknown", "cores": cores}


_IMPORTED = time.monotonic()
