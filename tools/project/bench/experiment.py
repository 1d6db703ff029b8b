"""Row 6: what a DVC experiment costs after a full run: ``dvc exp run -S model.K=8`` over the
``dvc repro`` before it, on the tiny configuration (``tools.project.tinyrepo``) in a throw-away git
repository."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from tools.project.bench.common import Setup, log, row, skipped
from tools.project.tinyrepo import tiny_repo
from tools.shell import BIN, clean_env, run, timed


def bench_experiment(setup: Setup, workdir: Path) -> dict[str, dict]:
    """Row 6: ``dvc repro`` of the tiny configuration, commit, then ``dvc exp run -S model.K=8``
    (which re-runs only the stages K affects)."""
    if not setup.sizes.experiment:
        return {"experiment_overhead": skipped("--quick")}
    if shutil.which("git") is None or not (BIN / "dvc").exists():
        return {"experiment_overhead": skipped("needs git and dvc in the interpreter's bin")}
    log.info("6. experiment overhead: dvc repro, then dvc exp run -S model.K=8 (tiny config)")
    repo = workdir / "exp" / "repo"
    shutil.rmtree(repo.parent, ignore_errors=True)  # a kept --workdir starts afresh
    tiny_repo(repo)
    # the stages use as many threads as this process (--threads), not every core
    env = clean_env(repo.parent, {"OMP_NUM_THREADS": str(torch.get_num_threads())})
    repro_s = timed(repo, "dvc", "repro", env=env)
    run(repo, "git", "add", "-A", env=env)
    run(repo, "git", "commit", "-q", "-m", "repro", env=env)
    exp_s = timed(repo, "dvc", "exp", "run", "-S", "model.K=8", env=env)
    return {"experiment_overhead": row(
        ("exp_run_s", exp_s), ("repro_s", repro_s), None,
        config="tiny (tools.project.tinyrepo.TINY), model.K 3 -> 8")}
