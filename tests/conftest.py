"""Shared fixtures: the tiny reproduced DVC repository of the end-to-end tests (built once per test
session, even across pytest-xdist workers; each test works on its own copy), and the thread count
of each xdist worker."""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from filelock import FileLock

from tools.project.tinyrepo import tiny_repo
from tools.shell import run


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``make test``), each worker and the stages it starts get an equal
    share of the cores: one torch thread per core in all, not one per core per worker (the
    workers' threads would compete for the same cores and spin)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers:
        threads = max(1, (os.cpu_count() or 1) // workers)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # the stages' (tools.shell.clean_env)
        import torch

        torch.set_num_threads(threads)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under pytest-xdist, the slow tests first (the end-to-end ones before the others, each
    module's in its own order): `--dist worksteal` gives the first half of the list to one worker,
    which starts building the tiny repository at once while the other runs unit tests, and an
    idle worker takes tests from the end of the other's list, so the long ones are shared out
    early and the short ones fill the gaps at the end."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    items.sort(key=lambda item: (item.get_closest_marker("slow") is None,
                                 "reproduced" not in getattr(item, "fixturenames", ())))


# --- something built once per test session --------------------------------------------------------


@pytest.fixture(scope="session")
def build_once(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str, Callable], Path]:
    """``build_once(name, build)``: the folder ``build(path)`` made, made once per test session.
    Under pytest-xdist the first worker that asks builds it (holding a file lock in the session's
    temporary folder, which the workers share), the others wait and reuse it; a build that failed
    fails every later request with its error instead of running again. Treat the folder as
    read-only: copy it (``copy_repo``) to change anything."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent  # .../pytest-N/popen-gwK -> the session's own .../pytest-N

    def build_once(name: str, build: Callable[[Path], None]) -> Path:
        path, failed = root / name, root / f"{name}.failed"
        with FileLock(root / f"{name}.lock"):
            if failed.exists():
                pytest.fail(f"building {name} failed earlier in this session:\n"
                            f"{failed.read_text()}", pytrace=False)
            if not (root / f"{name}.done").exists():
                shutil.rmtree(path, ignore_errors=True)  # no half-built leftovers
                try:
                    build(path)
                except BaseException as err:
                    failed.write_text(f"{type(err).__name__}: {err}")
                    raise
                (root / f"{name}.done").touch()
        return path

    return build_once


def copy_repo(source: Path, dest: Path) -> Path:
    """A copy of the repository ``source`` at ``dest`` (git history, DVC cache and outputs, not
    ``.dvc/tmp``) that shares no file with it, so a test may change anything in its copy. Files
    hard-linked together in ``source`` (DVC's cache and the outputs it checked out, `cache.type
    hardlink`) are linked together in the copy, not to ``source``; a symbolic link into ``source``
    (`cache.type symlink`) points to the same place in the copy. Returns ``dest``."""
    copied: dict[tuple[int, int], str] = {}

    def copy(src: str, dst: str) -> str:
        stat = os.lstat(src)
        key = (stat.st_dev, stat.st_ino)
        if stat.st_nlink > 1 and key in copied:
            os.link(copied[key], dst)
        else:
            shutil.copy2(src, dst)
            copied[key] = dst
        return dst

    def ignore(folder: str, names: list[str]) -> list[str]:
        return ["tmp"] if Path(folder) == source / ".dvc" else []

    shutil.copytree(source, dest, symlinks=True, copy_function=copy, ignore=ignore)
    for link in [p for p in dest.rglob("*") if p.is_symlink()]:
        target = Path(os.readlink(link))
        if target.is_absolute() and target.is_relative_to(source):
            link.unlink()
            link.symlink_to(dest / target.relative_to(source))
    return dest


# --- the tiny repository, reproduced -------------------------------------------------------------


@dataclass(frozen=True)
class Reproduced:
    """The tiny pipeline (``tools.project.tinyrepo``) after `dvc repro`, committed. Shared by the
    tests of a session: read it, never change it (the ``repo`` fixture gives a test its own
    copy)."""

    path: Path
    output: str  # what `dvc repro` printed


def reproduce(path: Path) -> None:
    """The tiny pipeline at ``path``, reproduced and committed; `dvc repro`'s output beside it."""
    tiny_repo(path)
    output = run(path, "dvc", "repro")
    run(path, "git", "add", "-A")
    run(path, "git", "commit", "-q", "-m", "dvc repro")
    path.with_suffix(".log").write_text(output)


@pytest.fixture(scope="session")
def reproduced(build_once) -> Reproduced:
    path = build_once("tiny-reproduced", reproduce)
    return Reproduced(path, path.with_suffix(".log").read_text())


@pytest.fixture
def repo(reproduced: Reproduced, tmp_path: Path) -> Path:
    """This test's own copy of the reproduced tiny repository (clean: `dvc status` and
    `git status` have nothing to say)."""
    return copy_repo(reproduced.path, tmp_path / "repo")


# --- the same with a 3-epoch joint stage (the interruption tests) -------------------------------


def lengthen_joint(path: Path, reproduced: Path) -> None:
    """A copy of the reproduced repository at ``path`` whose joint stage is 3 epochs long (so
    that it can be killed after its first), reproduced uninterrupted and committed."""
    copy_repo(reproduced, path)
    params = yaml.safe_load((path / "params.yaml").read_text())
    params["joint"].update({"epochs": 3, "lr_step_epoch": 2})
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    output = run(path, "dvc", "repro", "joint@synthetic-0")  # (evaluate is left out of date)
    # (check: the stage every repro runs first)
    assert re.findall(r"Running stage '([^']+)'", output) == ["check", "joint@synthetic-0"], output
    run(path, "git", "commit", "-q", "-am", "joint: 3 epochs")


@pytest.fixture(scope="session")
def longer_joint(build_once, reproduced: Reproduced) -> Path:
    """The 3-epoch joint repository (``lengthen_joint``), built once per session; read-only."""
    return build_once("tiny-joint-3-epochs", lambda path: lengthen_joint(path, reproduced.path))


@pytest.fixture
def joint_3_epochs(longer_joint: Path, tmp_path: Path) -> Path:
    """This test's own copy of the 3-epoch joint repository."""
    return copy_repo(longer_joint, tmp_path / "repo")
