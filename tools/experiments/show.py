"""The baseline commit and its experiments as ``dvc exp show --json`` lists them, read once for
the experiments' runner (which exist already) and the report (their commits and params)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.shell import BIN, run, user_env

PARAMS_FILE = "params.yaml"


def dvc(*args: str, echo: bool = False) -> str:
    """Run the project's ``dvc`` (the one beside this Python) in the current directory, in the
    user's environment; its stdout. ``echo``: its output goes to the terminal as it comes (the
    queue's run: the experiments' logs) and "" is returned. A failure raises RuntimeError."""
    exe = BIN / "dvc"
    cmd = (str(exe) if exe.exists() else "dvc", *args)
    return run(Path.cwd(), *cmd, env=user_env(), stdout_only=True, capture=not echo)


class ReportError(Exception):
    """Input the report cannot be made from (no baseline commit, unreadable JSON...)."""


# --- reading `dvc exp show --json` ---------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """The baseline commit (``name`` None) or one experiment, as ``dvc exp show`` lists it: its
    commit (``rev``) and ``params.yaml``, or why it cannot be read (``problem``)."""

    name: str | None
    rev: str | None
    params: dict | None
    problem: str | None = None
    state: str | None = None  # DVC's executor state where not finished: queued, running, failed


@dataclass(frozen=True)
class Sources:
    """The baseline commit the report is about and every experiment derived from it."""

    commit: str
    commit_name: str | None
    baseline: Source
    experiments: dict[str, Source]

    def get(self, experiment: str | None) -> Source | None:
        return self.baseline if experiment is None else self.experiments.get(experiment)


def load_show_json(path: str | Path) -> list[dict]:
    """A saved ``dvc exp show --json`` output."""
    try:
        text = Path(path).read_text()
    except OSError as err:
        raise ReportError(f"cannot read {path}: {err.strerror or err}") from None
    return parse_show_json(text, str(path))


def parse_show_json(text: str, origin: str = "`dvc exp show --json`") -> list[dict]:
    """The list of revisions of a ``dvc exp show --json`` output, checked to be one."""
    try:
        show = json.loads(text)
    except json.JSONDecodeError as err:
        raise ReportError(f"{origin}: expected the JSON output of `dvc exp show --json`, got "
                          f"text that is not JSON ({err})") from None
    if not isinstance(show, list) or not all(isinstance(rev, dict) for rev in show):
        raise ReportError(f"{origin}: expected a JSON list of revisions (the output of "
                          f"`dvc exp show --json`), got {type(show).__name__}")
    return show


def run_exp_show(rev: str | None = None) -> list[dict]:
    """``dvc exp show --json`` of the current commit, or of the commit ``rev`` (a full sha), run
    with the ``dvc`` beside this Python."""
    try:
        return parse_show_json(dvc("exp", "show", "--json", *(("--rev", rev) if rev else ())))
    except RuntimeError as err:
        raise ReportError(str(err)) from None


def collect_sources(show: list[dict], head: str | None = None) -> Sources:
    """The baseline commit's entry of ``show`` (the one whose rev is ``head`` if given, else the
    first that is not the workspace) and its experiments, by name."""
    commits = [rev for rev in show if rev.get("rev") != "workspace"]
    if head is not None:
        commits = [rev for rev in commits if rev.get("rev") == head]
    if not commits:
        listed = ", ".join(str(rev.get("rev")) for rev in show) or "nothing"
        wanted = (f"no entry for the baseline commit {head}" if head else
                  "no baseline commit entry (one besides 'workspace')")
        raise ReportError(f"`dvc exp show --json` has {wanted}; it lists: {listed}")
    entry = commits[0]
    if entry.get("error") or not entry.get("data"):
        raise ReportError(f"baseline commit {entry['rev']}: `dvc exp show` could not read it "
                          f"({_describe_error(entry.get('error'))})")
    baseline = _source(None, entry["rev"], entry.get("data"))
    return Sources(entry["rev"], entry.get("name"), baseline, experiments_of(entry))


def experiments_of(entry: dict) -> dict[str, Source]:
    """The experiments of one commit's entry of ``dvc exp show --json``, by name: each one's
    commit and params, or why it cannot be read (failed, queued, running)."""
    experiments: dict[str, Source] = {}
    for exp in entry.get("experiments") or []:
        state = (exp.get("executor") or {}).get("state")
        for revision in exp.get("revs") or []:
            name = revision.get("name") or exp.get("name")
            if not name:
                continue
            if revision.get("error"):
                found = Source(name, None, None,
                               f"failed ({_describe_error(revision['error'])})")
            elif state in ("queued", "running", "failed"):
                found = Source(name, None, None, f"{state}, not finished", state)
            else:
                found = _source(name, revision.get("rev"), revision.get("data"))
            # A name appears once per commit; if twice, keep a usable one.
            if name not in experiments or experiments[name].problem:
                experiments[name] = found
    return experiments


def _source(name: str | None, rev: str | None, data: dict | None) -> Source:
    """A Source from one revision of ``dvc exp show``: its commit and params.yaml."""
    params = _file_data((data or {}).get("params"), PARAMS_FILE)
    if not rev:
        return Source(name, None, params, "no commit listed for it")
    return Source(name, rev, params if isinstance(params, dict) else None)


def _file_data(files: dict | None, path: str) -> Any:
    """The ``data`` of ``path`` in a revision's metrics or params (None if absent or unread)."""
    for key, value in (files or {}).items():
        if key.replace(os.sep, "/") == path and isinstance(value, dict):
            return value.get("data")
    return None


def _describe_error(error: Any) -> str:
    if isinstance(error, dict):
        return ": ".join(str(error[k]) for k in ("type", "msg") if error.get(k)) or "error"
    return str(error) if error else "no data"


def existing_experiments(show: list[dict]) -> set[str]:
    """Names of the baseline commit's experiments in ``show`` that DVC lists without an error,
    finished or still queued (not to be queued again)."""
    entries = [rev for rev in show if rev.get("rev") != "workspace"]
    return {name for entry in entries for name, source in experiments_of(entry).items()
            if source.problem is None or source.state in ("queued", "running")}
