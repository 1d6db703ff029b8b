"""Where the report's numbers come from: the baseline commit and its experiments as
``dvc exp show --json`` lists them (name, commit, params), and each one's per-split evaluation
results, read from its commit with ``git show`` and combined over the splits as the summary
stage combines them (``pipeline.metrics.summarize``)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from pipeline.attention_stats import COVER_MIN_PERSON, head_count, summarize_attention
from pipeline.metrics import summarize
from pipeline.params import AttentionParams, DataParams, Params, dotted, run_name
from pipeline.stage_inputs import output
from tools.experiments import SEED_KEY, Cell, dvc
from tools.shell import run, user_env

# One (set, split)'s results, as dvc.yaml's evaluate stage writes them; run:
# pipeline.params.run_name(dataset, split)
EVAL_FILE = output("evaluate", "metrics/eval/")
EVAL_DIR = str(Path(EVAL_FILE).parent)
PARAMS_FILE = "params.yaml"
# a head with less of its attention mass on the person looks elsewhere: the threshold under which
# the evaluate stage counts no part for it (parts_covered)
PERSON_FLOOR = COVER_MIN_PERSON

# Reads a file of a commit: (rev, path) -> its text; raises FileNotFoundError, whose message
# names the file and says why, where the commit has no such file.
Reader = Callable[[str, str], str]


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


def git_head(rev: str = "HEAD") -> str | None:
    """The full sha of ``rev`` (default: the git HEAD), or None outside a git repository or for
    a revision git does not know."""
    try:
        return run(Path.cwd(), "git", "rev-parse", "--verify", f"{rev}^{{commit}}",
                   env=user_env(), stdout_only=True).strip()
    except (RuntimeError, OSError):
        return None


def commit_of(rev: str, option: str) -> str:
    """The full sha of the commit a command-line option (``option``, e.g. ``--rev``) names; one
    line naming the option when git does not know it."""
    head = git_head(rev)
    if head is None:
        raise ReportError(f"{option} {rev}: not a commit of this repository")
    return head


def git_show(rev: str, path: str) -> str:
    """The text of ``path`` in commit ``rev`` of the git repository here (a ``Reader``)."""
    try:
        return run(Path.cwd(), "git", "show", f"{rev}:{path}", env=user_env(),
                   stdout_only=True)
    except RuntimeError as err:  # the last line is git's: "fatal: path '...' does not exist..."
        raise FileNotFoundError(str(err).strip().splitlines()[-1].removeprefix("fatal: ")) \
            from None


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
                found = Source(name, None, None, f"{state}, not finished")
            else:
                found = _source(name, revision.get("rev"), revision.get("data"))
            # A name appears once per commit; if twice, keep a usable one.
            if name not in experiments or experiments[name].problem:
                experiments[name] = found
    return Sources(entry["rev"], entry.get("name"), baseline, experiments)


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


# --- the results of one source -------------------------------------------------------------------


def read_results(source: Source, read: Reader) -> tuple[dict | None, str | None]:
    """The results of ``source``: every split file of every video set its params list
    (``data.video`` x ``data.splits``), read from its commit and combined over the splits into
    ``{"seed": its params' Table 1 seed (SEED_KEY), "results": summarize(...), "attention":
    summarize_attention(...)}``; and what was missing. A set with a missing, unreadable or stale
    split file (results for another set, split or seed) is left out, and said; None when no set
    is left."""
    params = source.params or {}
    seed = _param(params, "seed", Params().seed)
    splits = _param(params, "data.splits", DataParams().splits)
    evals, missing = [], []
    for dataset in _param(params, "data.video", DataParams().video):
        runs = [_read_eval(source.rev, dataset, split, seed, read) for split in splits]
        problems = [problem for _, problem in runs if problem]
        if problems:
            missing.append(problems[0])
        else:
            evals += [evaluation for evaluation, _ in runs]
    problem = "; ".join(missing) or None
    if not evals:
        return None, problem or "its params list no video set"
    per_query: dict = {}  # dataset -> split -> the evaluate output's per-query scores
    for evaluation in evals:
        if isinstance(evaluation.get("per_query"), dict):
            per_query.setdefault(evaluation["dataset"], {})[evaluation["split"]] = \
                evaluation["per_query"]
    return {"seed": _param(params, SEED_KEY, AttentionParams().seed), "results": summarize(evals),
            "attention": summarize_attention(evals), "heads": head_summary(evals),
            "per_query": per_query}, problem


def head_summary(evals: list[dict]) -> dict:
    """{dataset: {model: {"visibility_lo", "visibility_hi" (the 95 percent interval of the
    weight-visibility correlation, mean of the splits' bounds), "heads_below" (heads with less
    than PERSON_FLOOR of their mass on the person, mean over the splits), "person_uniform" (a
    uniform map's person mass, mean over the splits)}}} for the models whose
    every split has ground-truth measures."""
    out: dict = {}
    for dataset in dict.fromkeys(e["dataset"] for e in evals):
        runs = [e.get("attention") or {} for e in evals if e["dataset"] == dataset]
        for model in runs[0]:
            stats = [run.get(model) or {} for run in runs]
            if not all(head_count(s) for s in stats):
                continue
            entry = {"heads_below": sum(
                sum(1 for k in range(1, head_count(s) + 1)
                    if (s.get(f"head{k}_person") or 0.0) < PERSON_FLOOR)
                for s in stats) / len(stats)}
            if all(s.get("person_uniform") is not None for s in stats):
                entry["person_uniform"] = sum(s["person_uniform"] for s in stats) / len(stats)
            if all(s.get("visibility_corr_lo") is not None for s in stats):
                entry["visibility_lo"] = sum(s["visibility_corr_lo"] for s in stats) / len(stats)
                entry["visibility_hi"] = sum(s["visibility_corr_hi"] for s in stats) / len(stats)
            out.setdefault(dataset, {})[model] = entry
    return out


def _read_eval(rev: str | None, dataset: str, split: int, seed: int,
               read: Reader) -> tuple[dict | None, str | None]:
    """One evaluate output of commit ``rev``, or None and why it cannot be used."""
    path = EVAL_FILE.format(run=run_name(dataset, split))
    try:
        evaluation = json.loads(read(str(rev), path))
    except FileNotFoundError as err:
        return None, str(err)
    except json.JSONDecodeError as err:
        return None, f"{path}: not JSON ({err})"
    if not isinstance(evaluation, dict) or not isinstance(evaluation.get("models"), dict):
        return None, f"{path}: not an evaluate output (no models)"
    if (evaluation.get("dataset"), evaluation.get("split")) != (dataset, split):
        return None, (f"{path}: results for {evaluation.get('dataset')} split "
                      f"{evaluation.get('split')}")
    if evaluation.get("seed", seed) != seed:
        return None, f"{path}: results for seed {evaluation['seed']}, not {seed}"
    return evaluation, None


def _param(params: dict, key: str, default: Any) -> Any:
    value = dotted(params, key)
    return default if value is None else value


def resolve(cell: Cell, sources: Sources,
            results_of: Callable[[Source], tuple[dict | None, str | None]],
            ) -> tuple[dict | None, str | None]:
    """The results of ``cell`` (``results_of`` its source) and what is missing of them, or None
    and why they are missing. A source whose params or seed are not those the cell asks for (a
    stale or mislabelled experiment) counts as missing."""
    source = sources.get(cell.experiment)
    if source is None:
        return None, "not run (no experiment of that name for this commit)"
    if source.problem:
        return None, source.problem
    for key, wanted in cell.overrides:
        actual = dotted(source.params, key)
        if actual is not None and actual != yaml.safe_load(wanted):
            return None, f"its params have {key}={actual}, expected {wanted}"
    results, problem = results_of(source)
    if results is not None and results["seed"] != cell.seed:
        return None, f"its results are for seed {results['seed']}, not {cell.seed}"
    return results, problem
