"""Start a stage the way ``runtime.launcher`` says, without a shell.

dvc.yaml runs every stage that runs a model as

    python -m pipeline.launch pipeline.stages.<stage> --params params.yaml ...

This reads ``runtime.launcher`` from that params file (checked by ``pipeline.params``) and then
runs the stage in this process (``python``) or runs torchrun in this process (``torchrun
--nproc_per_node=$NPROC ...``: one process per GPU), as ``python -m torch.distributed.run`` would;
a failed rank has printed its own one-line error, so torchrun's traceback of itself is left out
(``run_torchrun``). torchrun's options are read by torchrun's own parser and refused in one line
naming ``runtime.launcher`` where torchrun would refuse them or fail on them (``torchrun_args``;
the check stage asks first, before DVC deletes any output). The launcher's words become an
argument list, never a shell command, so the launcher cannot run anything else; ``$NAME`` in its
options is read from the environment (an unset variable is an error naming it). (DVC itself still
puts the matrix values, ``data.video`` names and ``data.splits`` ids, into its commands before
``pipeline.params`` checks them: keep params.yaml from trusted hands.)
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import io
import logging
import math
import os
import re
import runpy
import shlex
import sys
from pathlib import Path
from typing import NoReturn

from pipeline.params import ParamsError, load_params

STAGE = re.compile(r"pipeline\.stages\.[a-z_]+")
ANY_STAGE = "pipeline.stages.<stage>"  # what torchrun_args parses in place of the stage
VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")


def launcher_options(launcher: str, environ: dict[str, str] | None = None) -> list[str]:
    """torchrun's options in ``runtime.launcher``, ``$VARIABLES`` replaced from ``environ`` (an
    unset one is a ParamsError naming it); [] for ``python``."""
    environ = os.environ if environ is None else environ

    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in environ:
            raise ParamsError(f"runtime.launcher: {launcher!r} reads ${name}, which is not set in "
                              f"the environment (e.g. {name}=4 dvc repro)")
        return environ[name]

    return [VARIABLE.sub(value, word) for word in shlex.split(launcher)[1:]]


def stage_names() -> list[str]:
    """The stages that exist: the modules of pipeline/stages/ (less ``common``)."""
    folder = Path(__file__).parent / "stages"
    return sorted(p.stem for p in folder.glob("*.py") if p.stem not in ("__init__", "common"))


def torchrun_argv(launcher: str, module: str, args: list[str],
                  environ: dict[str, str] | None = None) -> list[str]:
    """The argument list that starts ``module`` under torchrun with the launcher's options,
    ``$VARIABLES`` replaced from ``environ``."""
    options = launcher_options(launcher, environ)
    return [sys.executable, "-m", "torch.distributed.run", *options, "-m", module, *args]


def processes(launcher: str, environ: dict[str, str] | None = None) -> int | None:
    """How many processes ``runtime.launcher`` starts in all: 1 for ``python``, else torchrun's
    ``--nproc_per_node`` x ``--nnodes`` (checked: ``torchrun_args``); None where torchrun decides
    at run time (``auto``, ``gpu``, an elastic ``--nnodes=1:4``)."""
    if launcher == "python":
        return 1
    args = torchrun_args(launcher, environ)
    low, _, high = args.nnodes.partition(":")
    if not args.nproc_per_node.isdecimal() or high not in ("", low):
        return None
    return int(args.nproc_per_node) * int(low)


# torchrun's words for one process per device of a kind (its determine_local_world_size)
NPROC_WORDS = ("auto", "cpu", "gpu", "xpu")
EXPECTED_OPTIONS = ("expected torchrun's options, as `torchrun --help` lists them (e.g. 'torchrun "
                    "--nproc_per_node=$NPROC')")


def torchrun_args(launcher: str, environ: dict[str, str] | None = None) -> argparse.Namespace:
    """torchrun's options in ``runtime.launcher`` as torchrun's own parser reads them, refused
    (a ParamsError naming runtime.launcher and the option) wherever torchrun would refuse them or
    fail on them: torchrun says so with its usage text or a traceback that names no params key,
    and only after DVC has deleted the stage's outputs, so the check stage asks here first."""
    from torch.distributed.run import get_args_parser

    def refuse(message: str) -> NoReturn:
        raise ParamsError(f"runtime.launcher: {launcher!r}: {message}")

    parser = get_args_parser()
    parser.error = lambda message: refuse(f"{message}; {EXPECTED_OPTIONS}")  # not SystemExit(2)
    parser.exit = lambda *_: refuse("--help and --print-completion print text and exit instead "
                                    "of starting the stage")
    with contextlib.redirect_stdout(io.StringIO()):  # what --help prints before it exits
        args = parser.parse_args([*launcher_options(launcher, environ), "-m", ANY_STAGE])
    if problem := count_problem(args) or configuration_problem(args):
        refuse(problem)
    return args


def count_problem(args: argparse.Namespace) -> str | None:
    """The numbers torchrun takes as any string or int but fails on once started, with an
    AssertionError or ValueError traceback (None: all fit)."""
    nproc, nnodes = args.nproc_per_node, args.nnodes
    if not (nproc in NPROC_WORDS or (nproc.isdecimal() and int(nproc) >= 1)):
        return (f"--nproc_per_node={nproc}: expected a number of processes per node >= 1, or "
                f"one of {', '.join(NPROC_WORDS)}")
    low, _, high = nnodes.partition(":")
    if not (low.isdecimal() and (high or low).isdecimal() and 1 <= int(low) <= int(high or low)):
        return (f"--nnodes={nnodes}: expected a number of nodes >= 1, or MIN:MAX (elastic) with "
                "1 <= MIN <= MAX")
    nodes = int(high or low)
    if args.node_rank < 0 or (args.rdzv_backend == "static" and args.node_rank >= nodes):
        return f"--node_rank={args.node_rank}: expected a rank from 0 to {nodes - 1} (--nnodes - 1)"
    if args.max_restarts < 0:
        return f"--max_restarts={args.max_restarts}: expected a number >= 0"
    if args.master_port is not None and not 0 <= args.master_port <= 65535:
        return f"--master_port={args.master_port}: expected a port from 0 to 65535"
    if not 0 < args.monitor_interval < math.inf:
        return f"--monitor_interval={args.monitor_interval}: expected a number of seconds > 0"
    if args.no_python or args.run_path:
        return (f"--{'no_python' if args.no_python else 'run_path'}: expected neither --no_python "
                "nor --run_path, since pipeline.launch starts the stage as a module (-m)")
    return None


def configuration_problem(args: argparse.Namespace) -> str | None:
    """What torchrun's own configuration step refuses (``--nproc_per_node=gpu`` without CUDA,
    ``--redirects``, ``--rdzv_conf``, ``--local_ranks_filter``, ``--logs_specs``), without its
    side effects: it sets OMP_NUM_THREADS for the workers and logs warnings meant for a start."""
    from torch.distributed.run import config_from_args, logger

    omp, level = os.environ.get("OMP_NUM_THREADS"), logger.level
    logger.setLevel(logging.ERROR)
    try:
        config_from_args(args)
    except Exception as err:  # whatever torchrun would stop on, in its words
        return f"torchrun would stop on it as it starts ({type(err).__name__}: {err})"
    finally:
        logger.setLevel(level)
        if omp is None:
            os.environ.pop("OMP_NUM_THREADS", None)
    return None


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or not STAGE.fullmatch(argv[0]):
        raise SystemExit("usage: python -m pipeline.launch pipeline.stages.<stage> "
                         "--params params.yaml [the stage's arguments]")
    module, args = argv[0], argv[1:]
    stage, stages = module.rpartition(".")[2], stage_names()
    if stage not in stages:
        close = difflib.get_close_matches(stage, stages, n=1)
        hint = f" (did you mean pipeline.stages.{close[0]}?)" if close else ""
        print(f"error: {module}: no such stage{hint}; expected pipeline.stages.<stage> with "
              f"<stage> one of: {', '.join(stages)}", file=sys.stderr)
        raise SystemExit(1)
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument("--params", default="params.yaml")
    known, _ = parser.parse_known_args(args)
    try:
        launcher = load_params(known.params).runtime.launcher
    except (ParamsError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    if launcher == "python":
        sys.argv = [module, *args]
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        return
    try:
        torchrun_args(launcher)  # checked by the check stage too, which runs first
        command = torchrun_argv(launcher, module, args)
    except ParamsError as err:
        print(f"error: {err}", file=sys.stderr)
        raise SystemExit(1) from None
    run_torchrun(command[3:])  # what follows `python -m torch.distributed.run`


def run_torchrun(args: list[str]) -> None:
    """torchrun with ``args``, in this process. When a rank fails, torchrun stops the others and
    raises ChildFailedError, which Python would print with a traceback of torchrun itself; the
    rank has printed its own line (``stages.common.run``), so this process only ends with the
    rank's exit status, or names the signal that killed it (e.g. SIGKILL: out of memory)."""
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import main as torchrun

    try:
        torchrun(args)
    except ChildFailedError as err:
        rank, failure = err.get_first_failure()
        if failure.exitcode >= 0:
            raise SystemExit(failure.exitcode or 1) from None
        print(f"error: {err.name}: rank {rank} was killed by signal {-failure.exitcode}",
              file=sys.stderr)
        raise SystemExit(128 - failure.exitcode) from None


if __name__ == "__main__":
    main()
