"""Start a stage the way ``runtime.launcher`` says, without a shell.

dvc.yaml runs every stage that runs a model as

    python -m pipeline.launch pipeline.stages.<stage> --params params.yaml ...

This reads ``runtime.launcher`` from that params file (checked by ``pipeline.params``) and then
runs the stage in this process (``python``) or replaces this process by torchrun
(``torchrun --nproc_per_node=$NPROC ...``: one process per GPU). The launcher's words become an
argument list, never a shell command, so the launcher cannot run anything else; ``$NAME`` in its
options is read from the environment (an unset variable is an error naming it). (DVC itself still
puts the matrix values, ``data.video`` names and ``data.splits`` ids, into its commands before
``pipeline.params`` checks them: keep params.yaml from trusted hands.)
"""

from __future__ import annotations

import argparse
import os
import re
import runpy
import shlex
import sys

from pipeline.params import ParamsError, load_params

STAGE = re.compile(r"pipeline\.stages\.[a-z_]+")
VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")


def torchrun_argv(launcher: str, module: str, args: list[str],
                  environ: dict[str, str] | None = None) -> list[str]:
    """The argument list that starts ``module`` under torchrun with the launcher's options,
    ``$VARIABLES`` replaced from ``environ``."""
    environ = os.environ if environ is None else environ
    def value(match: re.Match) -> str:
        name = match.group(1) or match.group(2)
        if name not in environ:
            raise ParamsError(f"runtime.launcher: {launcher!r} reads ${name}, which is not set in "
                              f"the environment (e.g. {name}=4 dvc repro)")
        return environ[name]

    options = [VARIABLE.sub(value, word) for word in shlex.split(launcher)[1:]]
    return [sys.executable, "-m", "torch.distributed.run", *options, "-m", module, *args]


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or not STAGE.fullmatch(argv[0]):
        raise SystemExit("usage: python -m pipeline.launch pipeline.stages.<stage> "
                         "--params params.yaml [the stage's arguments]")
    module, args = argv[0], argv[1:]
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
    sys.stdout.flush()
    os.execv(command[0], command)


if __name__ == "__main__":
    main()
