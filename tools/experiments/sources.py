"""Where the report's numbers come from: the baseline commit and its experiments as
``dvc exp show --json`` lists them (name, commit, params), and each one's per-split evaluation
results, read from its commit with ``git show`` and combined over the splits as the summary
stage combines them (``pipeline.metrics.summarize``)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from pipeline.attention_stats import COVER_MIN_PERSON, head_count, summarize_attention
from pipeline.metrics import summarize
from pipeline.params import AttentionParams, DataParams, Params, dotted, run_name
from pipeline.stage_inputs import output
from tools.experiments.cells import SEED_KEY, Cell
from tools.experiments.show import ReportError, Source, Sources
from tools.shell import run, user_env

# One (set, split)'s results, as dvc.yaml's evaluate stage writes them; run:
# pipeline.params.run_name(dataset, split)
EVAL_FILE = output("evaluate", "metrics/eval/")
EVAL_DIR = str(Path(EVAL_FILE).parent)
# ... and the floor, the ceilings and the cell probe of its test set (the references stage)
REFERENCES_FILE = output("references", "metrics/references/")
# a head with less of its attention mass on the person looks elsewhere: the threshold under which
# the evaluate stage counts no part for it (parts_covered)
PERSON_FLOOR = COVER_MIN_PERSON

# Reads a file of a commit: (rev, path) -> its text; raises FileNotFoundError, whose message
# names the file and says why, where the commit has no such file.
Reader = Callable[[str, str], str]


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
