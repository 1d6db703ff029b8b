"""Running the project's command-line tools (dvc, git, python) in a clean environment: the one
subprocess helper of the tools and the tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

BIN = Path(sys.executable).parent  # the project's virtualenv: its dvc, torchrun and python


def clean_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """A minimal environment: the virtualenv's bin first on PATH, ``home`` as HOME (no user
    config), a fixed git identity, no bytecode files, the caller's thread count."""
    return {"PATH": f"{BIN}{os.pathsep}/usr/bin{os.pathsep}/bin", "HOME": str(home),
            "GIT_AUTHOR_NAME": "pipeline", "GIT_AUTHOR_EMAIL": "pipeline@localhost",
            "GIT_COMMITTER_NAME": "pipeline", "GIT_COMMITTER_EMAIL": "pipeline@localhost",
            "PYTHONDONTWRITEBYTECODE": "1",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(os.cpu_count() or 1)),
            **(extra or {})}


def user_env() -> dict[str, str]:
    """The user's own environment (HOME, a DVC remote's credentials) with the virtualenv's bin
    first on PATH: the project's ``dvc``, and the ``python`` that stage commands run."""
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}


def run(cwd: Path, *cmd: str, env: dict[str, str] | None = None, check: bool = True,
        stdout_only: bool = False, capture: bool = True) -> str:
    """Run ``cmd`` in ``cwd`` (default environment: ``clean_env(cwd.parent)``); its stdout and
    stderr (or stdout only). ``capture`` false: the output goes to the terminal as it comes (a
    long run the user watches) and "" is returned. A failure raises RuntimeError (with the end
    of the captured output), unless ``check`` is false."""
    env = clean_env(Path(cwd).parent) if env is None else env
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=capture, text=True,
                            check=False)
    if check and result.returncode:
        tail = f":\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}" if capture else ""
        raise RuntimeError(f"`{' '.join(cmd)}` failed ({result.returncode}){tail}")
    if not capture:
        return ""
    return result.stdout if stdout_only else result.stdout + result.stderr


def timed(cwd: Path, *cmd: str, env: dict[str, str] | None = None) -> float:
    """``run``, returning its wall time in seconds."""
    start = time.perf_counter()
    run(cwd, *cmd, env=env)
    return time.perf_counter() - start
