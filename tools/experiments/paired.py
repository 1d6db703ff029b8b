"""Paired differences between two models, or one model in two runs: B - A in rank-1 and mAP with
a 95 percent interval from a paired bootstrap over the query identities
(``pipeline.metrics.paired_bootstrap_splits``), read from the per-query scores the evaluate
stage stores (``per_query`` of ``metrics/eval/<set>-<split>.json``, official protocol), and the
verdict that interval gives.

The verdict rule, for a claim "B beats A" (by more than ``margin``, 0 unless a claim names one):
the interval of B - A lies above the margin: "holds"; below it: "does not hold"; it contains the
margin: "not resolved" (the test set cannot tell). With margin 0: an interval that excludes 0
resolves the difference, its sign says which model is ahead.

    python -m tools.experiments.paired metrics/eval/synthetic-0.json:baseline \
        metrics/eval/synthetic-0.json:joint
    python -m tools.experiments.paired --experiments   # `make exp`: each experiment vs its commit

Each argument is ``<evaluation file>:<model>``; the two files may be two commits' or two
workspaces' results of the same split (the same test queries), or one file with two models. Bad
input (a missing file or model, results without per-query scores, other queries) is one line
``error: ...`` and exit status 1.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import InputError
from pipeline.formatting import text_table
from pipeline.metrics import BOOTSTRAP_RESAMPLES, paired_bootstrap_splits
from pipeline.names import MODELS
from pipeline.params import load_params, run_name
from tools.experiments.show import ReportError, Sources, collect_sources, run_exp_show
from tools.experiments.sources import EVAL_FILE, Reader, git_show

PROTOCOL = "official"  # the protocol the evaluate stage stores per query (the headline's)
# the metrics compared: name in the results files -> (per-query key, label)
METRICS = {"rank1": ("hit", "rank-1"), "mAP": ("ap", "mAP")}
HOLDS, FAILS, UNRESOLVED = "holds", "does not hold", "not resolved"
RESCORE = "`make repro` scores them again"


@dataclass(frozen=True)
class Queries:
    """One model's scores on one split's test queries: the query pids (Q,) and per query the
    rank-1 hit (0/1) and AP (Q,), as the evaluate stage stores them."""

    pid: np.ndarray
    hit: np.ndarray
    ap: np.ndarray


def queries_of(evaluation: Mapping[str, Any], model: str, where: str = "the results",
               protocol: str = PROTOCOL) -> Queries:
    """``model``'s per-query scores in one evaluate output (``where`` names it in errors)."""
    per_query = evaluation.get("per_query") if isinstance(evaluation, Mapping) else None
    if not isinstance(per_query, Mapping) or not isinstance(per_query.get(protocol), Mapping):
        raise InputError(f"{where}: no per-query scores under the {protocol} protocol (results "
                         f"scored before they were stored); {RESCORE}")
    record = per_query[protocol]
    if model not in record.get("hit", {}) or model not in record.get("ap", {}):
        raise InputError(f"{where}: no model {model!r}; it has "
                         f"{', '.join(map(repr, record.get('hit', {}))) or 'none'}")
    pid, hit, ap = (np.asarray(v) for v in (record["pid"], record["hit"][model],
                                            record["ap"][model]))
    if not len(pid) == len(hit) == len(ap):
        raise InputError(f"{where}: {model!r} has {len(hit)} hits and {len(ap)} APs for "
                         f"{len(pid)} queries; {RESCORE}")
    return Queries(pid, hit.astype(np.float64), ap.astype(np.float64))


def compare(a: Sequence[Mapping[Any, Queries]], b: Sequence[Mapping[Any, Queries]],
            num_resamples: int = BOOTSTRAP_RESAMPLES) -> dict[str, dict[str, float]]:
    """B - A per metric: ``{"rank1": {"a", "b", "diff", "lo", "hi"}, "mAP": {...}}`` (fractions;
    ``paired_bootstrap_splits``).

    Args:
        a, b: each model's runs, one per seed of its heads (one for a model without seeds):
            split -> its ``Queries`` on that split. Every run of both models covers the same
            splits with the same queries (a paired comparison is on one test set).
    """
    runs = [*a, *b]
    if not a or not b:
        raise InputError("a paired comparison needs at least one run of each model")
    splits = list(runs[0])
    for run in runs:
        if set(run) != set(splits):
            raise InputError(f"the runs cover different splits: {list(run)} and {splits}; "
                             "compare the splits all of them have")
    for split in splits:
        for run in runs:
            if not np.array_equal(run[split].pid, runs[0][split].pid):
                raise InputError(f"split {split}: the runs ranked other queries (other test "
                                 "sets); a paired comparison needs the same queries")
    return {name: paired_bootstrap_splits(
        [(np.stack([getattr(run[split], key) for run in a]),
          np.stack([getattr(run[split], key) for run in b]), runs[0][split].pid)
         for split in splits], num_resamples)
        for name, (key, _) in METRICS.items()}


def compare_files(a: Mapping[str, Any], model_a: str, b: Mapping[str, Any], model_b: str,
                  where: tuple[str, str] = ("A", "B")) -> dict[str, dict[str, float]]:
    """``compare`` of ``model_b`` in evaluate output ``b`` against ``model_a`` in ``a`` (one
    split, one run each; ``where`` names the two in errors)."""
    return compare([{0: queries_of(a, model_a, where[0])}], [{0: queries_of(b, model_b, where[1])}])


def verdict(lo: float, hi: float, margin: float = 0.0) -> str:
    """The claim "B - A > margin" from the 95 percent interval [lo, hi] of B - A: HOLDS when
    the interval lies above the margin, FAILS when it lies below, UNRESOLVED when it holds the
    margin (identical models, [0, 0]: unresolved)."""
    return HOLDS if lo > margin else FAILS if hi < margin else UNRESOLVED


def table(result: Mapping[str, Mapping[str, float]]) -> str:
    """``compare``'s result as a text table, in percent: A, B, B - A, its interval, verdict."""
    rows = [[label, f"{100 * r['a']:.1f}", f"{100 * r['b']:.1f}", f"{100 * r['diff']:+.2f}",
             f"[{100 * r['lo']:+.2f}, {100 * r['hi']:+.2f}]", verdict(r["lo"], r["hi"])]
            for r, label in ((result[name], label) for name, (_, label) in METRICS.items())]
    return text_table(["metric", "A", "B", "B - A", "95% interval", "B > A"], rows)


def read_argument(text: str) -> tuple[dict, str, str]:
    """``<file>:<model>`` -> (the evaluate output, the model, the argument as written)."""
    path, sep, model = text.rpartition(":")
    if not sep or not path or not model:
        raise InputError(f"expected <evaluation file>:<model>, got {text!r}")
    try:
        evaluation = json.loads(Path(path).read_text())
    except OSError as err:
        raise InputError(f"{path}: cannot read it ({err.strerror or err})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(f"{path}: not a JSON results file of the evaluate stage ({err})") \
            from None
    if not isinstance(evaluation, dict):
        raise InputError(f"{path}: expected the evaluate stage's JSON object")
    return evaluation, model, text


def experiment_rows(sources: Sources, runs: Sequence[str], read: Reader) -> list[list[str]]:
    """Each finished experiment of ``sources`` against its baseline commit, model by model on
    every run (``<set>-<split>``) of the baseline's params: the paired differences in percent
    (rank-1 and mAP), their intervals and verdicts; a run whose files lack per-query scores (or
    ranked other queries) says so instead."""
    rows = []
    for name, source in sorted(sources.experiments.items()):
        if source.problem or source.rev is None:
            rows.append([name, "", "", source.problem or "no commit", "", "", ""])
            continue
        for run_ in runs:
            path = EVAL_FILE.format(run=run_)
            try:
                base, exp = (json.loads(read(rev, path)) for rev in (sources.commit, source.rev))
            except (FileNotFoundError, json.JSONDecodeError) as err:
                rows.append([name, run_, "", f"not compared ({err})", "", "", ""])
                continue
            for model in (m.key for m in MODELS):
                try:
                    result = compare_files(base, model, exp, model,
                                           (f"{sources.commit[:7]}:{path}", f"{name}:{path}"))
                except InputError as err:
                    rows.append([name, run_, model, f"not compared ({err})", "", "", ""])
                    continue
                rows.append([name, run_, model, *(
                    f"{100 * r['diff']:+.2f} [{100 * r['lo']:+.2f}, {100 * r['hi']:+.2f}] "
                    f"{verdict(r['lo'], r['hi'])}" for r in (result["rank1"], result["mAP"])),
                    f"{100 * result['rank1']['a']:.1f} -> {100 * result['rank1']['b']:.1f}",
                    f"{100 * result['mAP']['a']:.1f} -> {100 * result['mAP']['b']:.1f}"])
    return rows


def experiments_table(params_path: str) -> str:
    """``experiment_rows`` of this commit's experiments (``dvc exp show``), as a text table."""
    p = load_params(params_path)
    runs = [run_name(name, split) for name in p.data.video for split in p.data.splits]
    sources = collect_sources(run_exp_show())
    if not sources.experiments:
        return "no experiments of this commit to compare with it"
    rows = experiment_rows(sources, runs, git_show)
    return (f"each experiment against its baseline commit {sources.commit[:7]}, the same model on "
            f"the same {PROTOCOL} queries (percent; 95 percent interval from a paired bootstrap "
            f"over the query identities; verdict of \"experiment > baseline\")\n\n"
            + text_table(["experiment", "run", "model", "rank-1 difference",
                          "mAP difference", "rank-1", "mAP"], rows))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("a", metavar="A", nargs="?", help="<evaluation file>:<model>, the "
                                                           "reference")
    parser.add_argument("b", metavar="B", nargs="?", help="<evaluation file>:<model>, compared "
                                                           "with A")
    parser.add_argument("--experiments", action="store_true",
                        help="instead: every experiment of this commit against the commit "
                             "(`make exp`)")
    parser.add_argument("--params", default="params.yaml")
    args = parser.parse_args(argv)
    if args.experiments:
        try:
            print(experiments_table(args.params))
        except (InputError, ReportError) as err:
            raise SystemExit(f"error: {err}") from None
        return
    if args.a is None or args.b is None:
        parser.error("expected A and B, or --experiments")
    try:
        (eval_a, model_a, name_a), (eval_b, model_b, name_b) = map(read_argument,
                                                                   (args.a, args.b))
        result = compare_files(eval_a, model_a, eval_b, model_b, (name_a, name_b))
    except InputError as err:
        raise SystemExit(f"error: {err}") from None
    queries = len(np.unique(queries_of(eval_a, model_a, name_a).pid))
    print(f"A: {name_a}\nB: {name_b}\n{PROTOCOL} protocol, percent; 95 percent interval of "
          f"B - A from a paired bootstrap over the {queries} query identities "
          f"({BOOTSTRAP_RESAMPLES} resamples); verdict of \"B > A\": {HOLDS} / {FAILS} "
          f"(interval above / below 0), {UNRESOLVED} (it holds 0)\n\n" + table(result))


if __name__ == "__main__":
    main()
