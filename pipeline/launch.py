"""Start a stage the way ``runtime.launcher`` says, without a shell.

dvc.yaml runs every stage that runs a model as

    python -m pipeline.launch pipeline.stages.<stage> --params params.yaml ...

This reads ``runtime.launcher`` from that params file (checked by ``pipeline.params``) and then
runs the stage in this process (``python``) or runs torchrun in this process (``torchrun
--nproc_per_node=$NPROC ...``: one process per GPU), as ``python -m torch.distributed.run`` would;
a failed rank has printed its own one-line error, so torchrun's traceback of itself is left out
(``run_torchrun``). The launcher's words become an
argument list, never a shell command, so the launcher cannot run anything else; ``$NAME`` in its
options is read from the environment (an unset variable is an error naming it). (DVC itself still
puts the matrix values, ``data.video`` names and ``data.splits`` ids, into its commands before
``pipeline.params`` checks them: keep params.yaml from trusted hands.)
"""

from __future__ import annotations

import argparse
import difflib
import os
import re
import runpy
import shlex
import sys
from pathlib import Path

from pipeline.params import ParamsError, load_params

STAGE = re.compile(r"pipeline\.stages\.[a-z_]+")
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
    ``--nproc_per_node`` x ``--nnodes``; None where torchrun decides at run time (``auto``,
    ``gpu``, an elastic ``--nnodes=1:4``) or the value is not a count."""
    if launcher == "python":
        return 1
    counts = {"nproc_per_node": 1, "nnodes": 1}  # torchrun's defaults
    for option in launcher_options(launcher, environ):
        name, _, value = option.removeprefix("--").replace("-", "_").partition("=")
        if name in counts:
            if not value.isdigit() or int(value) < 1:
                return None
            counts[name] = int(value)
    return counts["nproc_per_node"] * counts["nnodes"]


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
