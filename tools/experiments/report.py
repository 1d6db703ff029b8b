"""The paper's Tables 1 and 2 from the DVC experiments: ``metrics/report.json`` (the report as
data, ``tools.experiments.data``), rendered from that file into ``metrics/report.md``, a bar chart
of Table 1 and the same tables in the terminal.

Every row of a table is read from the experiment that ran it, or from the baseline commit for the
rows the default pipeline evaluates (``tools.experiments`` says which is which), as
``dvc exp show --json`` lists them: its params from that listing, its results from the per-split
files ``metrics/eval/<set>-<split>.json`` of its commit (every set of its ``data.video``, every
split of its ``data.splits``; ``git show``), combined over the splits as the summary stage
combines them. A Table 1 row run with several seeds shows the mean over the seeds of the per-seed
means over splits, ± their standard deviation over the seeds; a row with one seed shows ± the
standard deviation over the dataset's splits. A row without usable results says "missing", never
0. Modules: ``show`` (``dvc exp show``), ``sources`` (reading), ``data`` (the report as data,
report.json), ``tables`` (statistics, claims, markdown through the template
``report.md.j2``, terminal), ``chart`` (the chart).

    python -m tools.experiments.report --params params.yaml --json metrics/report.json \
        --out metrics/report.md --chart metrics/plots/table1.png [--seeds 0 1 2] \
        [--show-json exp-show.json] [--rev <commit>: its params.yaml, not --params]
        [--schedule-rev <commit>: whose experiments give Table 1 under both schedules]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path

from pipeline.errors import ParamsError
from pipeline.files import write_text
from pipeline.params import Params, dotted, load_params, parse_params, run_name
from pipeline.references import FILE_KEYS
from tools.experiments.cells import (
    SEED_KEY,
    Cell,
    checked_seeds,
    cnn_seed_cells,
    schedule_cells,
    seeds_named,
    table1_cells,
    table2_cells,
)
from tools.experiments.chart import draw_chart
from tools.experiments.data import Report, read_report, write_report
from tools.experiments.show import (
    PARAMS_FILE,
    ReportError,
    Source,
    Sources,
    collect_sources,
    load_show_json,
    run_exp_show,
)
from tools.experiments.sources import (
    EVAL_DIR,
    EVAL_FILE,
    REFERENCES_FILE,
    Reader,
    commit_of,
    git_head,
    git_show,
    read_results,
    resolve,
)
from tools.experiments.tables import (
    BASELINE_COMMIT,
    aggregate,
    claims,
    paired_rows,
    render_markdown,
    render_terminal,
    schedule_tables,
)

PROTOCOL_ORDER = ("official", "torchreid")


def default_seeds(sources: Sources, base_seed: int) -> list[int]:
    """The params' seed and every seed some Table 1 experiment (``t1-s<seed>...``) exists for."""
    return sorted(seeds_named(sources.experiments, "table1") | {base_seed})


def default_cnn_seeds(sources: Sources, base_seed: int) -> list[int]:
    """The params' seed and every seed a CNN-seed experiment (``cs-s<seed>``) exists for."""
    return sorted(seeds_named(sources.experiments, "cnn") | {base_seed})


def schedule_seeds(sources: Sources) -> list[int]:
    """The seeds of Table 1 under both schedules: every seed some experiment of it
    (``sc-<schedule>-s<seed>``) exists for (none: the report leaves the table out). Its own, not
    Table 1's ``--seeds``: `make schedule` and `make ablations` may run other seeds; a seed run
    under one schedule and not the other shows the missing one."""
    return sorted(seeds_named(sources.experiments, "schedule"))


def found_pairs(results: Sequence[dict | None]) -> list[tuple[str, str]]:
    """Every (dataset, protocol) some results have, datasets in the order found, protocols in
    PROTOCOL_ORDER."""
    datasets, protocols = {}, {}
    for result in results:
        for dataset, models in ((result or {}).get("results") or {}).items():
            datasets.setdefault(dataset, None)
            for per_protocol in (models or {}).values():
                for protocol in per_protocol or {}:
                    protocols.setdefault((dataset, protocol), None)
    return sorted(protocols, key=lambda dp: (list(datasets).index(dp[0]), _protocol_rank(dp[1])))


def build_report(show: list[dict], *, base_seed: int, base_k: int,
                 seeds: Sequence[int] | None = None, head: str | None = None,
                 read: Reader = git_show, cnn_seed: int | None = None,
                 schedule_show: list[dict] | None = None,
                 schedule_head: str | None = None) -> Report:
    """Collect Table 1 (``seeds``, default: ``default_seeds``) and Table 2 (``base_seed``, K
    around ``base_k``) from a ``dvc exp show --json`` output, each source's results read with
    ``read`` (default: ``git show`` in the repository here); with ``cnn_seed`` (the params'
    ``seed``), also the default pipeline over the CNN seeds that have an experiment; and Table 1
    under both schedules where its experiments exist (``schedule_seeds``): those of the same
    commit, or with ``schedule_show`` those of commit ``schedule_head`` in that output (a later
    commit whose default run has the same outputs: the schedules came after Table 1 was run)."""
    sources = collect_sources(show, head)
    theirs = sources if schedule_show is None else collect_sources(schedule_show, schedule_head)
    read_once: dict[tuple[str | None, str | None], tuple[dict | None, str | None]] = {}

    def results_of(source: Source) -> tuple[dict | None, str | None]:
        if (source.name, source.rev) not in read_once:
            read_once[source.name, source.rev] = read_results(source, read)
        return read_once[source.name, source.rev]

    if results_of(sources.baseline)[0] is None:
        raise ReportError(f"baseline commit {sources.commit}: {results_of(sources.baseline)[1]}; "
                          f"run `make repro` and commit {EVAL_DIR}")
    cells4 = schedule_cells(schedule_seeds(theirs))
    seeds = list(seeds) if seeds else default_seeds(sources, base_seed)
    cells1 = table1_cells(seeds, base_seed)
    cells2 = table2_cells(base_k, base_seed)
    cnn_seeds = [] if cnn_seed is None else default_cnn_seeds(sources, cnn_seed)
    cells3 = cnn_seed_cells(cnn_seeds, cnn_seed, base_seed) if len(cnn_seeds) > 1 else []
    resolved: dict[Cell, dict | None] = {}
    problems: dict[str, str] = {}
    for cell in cells1 + cells2 + cells3 + cells4:
        resolved[cell], problem = resolve(cell, theirs if cell in cells4 else sources, results_of)
        if problem:
            problems.setdefault(cell.experiment or BASELINE_COMMIT, problem)
    pairs = found_pairs([resolved[cell] for cell in cells1 + cells2 + cells3])
    table1 = {pair: aggregate(cells1, resolved, *pair) for pair in pairs}
    return Report(
        commit=sources.commit, commit_name=sources.commit_name, seeds=tuple(seeds),
        base_seed=base_seed, base_k=base_k,
        datasets=tuple(dict.fromkeys(dataset for dataset, _ in pairs)),
        table1=table1, claims={pair: claims(rows, paired_rows(cells1, resolved, *pair))
                              for pair, rows in table1.items()},
        table2={pair: aggregate(cells2, resolved, *pair) for pair in pairs},
        problems=problems, cnn_seeds=tuple(cnn_seeds) if cells3 else (),
        cnn={pair: aggregate(cells3, resolved, *pair) for pair in pairs} if cells3 else {},
        # a commit from before the key trained every set on its own
        schedule=dotted(sources.baseline.params, "schedule") or "per_set",
        schedule_seeds=tuple(sorted({cell.seed for cell in cells4})),
        schedule_commit=None if theirs is sources else theirs.commit,
        schedules=schedule_tables(cells4, resolved,
                                  found_pairs([resolved[cell] for cell in cells4])))


def _protocol_rank(protocol: str) -> tuple[int, str]:
    order = PROTOCOL_ORDER.index(protocol) if protocol in PROTOCOL_ORDER else len(PROTOCOL_ORDER)
    return order, protocol


def commit_params(path: str, rev: str | None, read: Reader) -> Params:
    """The params the reported rows were run with: those of commit ``rev`` when the report is
    about one (the workspace's file may have another K or seed since), else the file ``path``."""
    if rev is None:
        return load_params(path)
    try:
        text = read(rev, PARAMS_FILE)
    except FileNotFoundError as err:
        raise ReportError(f"--rev {rev}: {err}") from None
    return parse_params(text, f"{rev}:{PARAMS_FILE}")


def _optional_json(path: Path, tool: str) -> dict | None:
    """An optional input of the report: its JSON, or None when the file does not exist."""
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise SystemExit(f"error: {path}: not JSON ({err}); write it again with "
                         f"`python -m {tool}`") from None


def main(argv: list[str] | None = None, read: Reader = git_show) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--json", type=Path, default=Path("metrics/report.json"),
                        help="the report as data, from which the others are rendered")
    parser.add_argument("--out", type=Path, default=Path("metrics/report.md"))
    parser.add_argument("--chart", type=Path, default=Path("metrics/plots/table1.png"))
    parser.add_argument("--show-json", type=Path,
                        help="a saved `dvc exp show --json` output (default: run it)")
    parser.add_argument("--sweep", type=Path, default=Path("metrics/sweep.json"),
                        help="the attention sweep (tools.experiments.sweep), printed when the file "
                             "exists")
    parser.add_argument("--seeds", nargs="+",
                        help="Table 1 seeds (default: the params' seed and every seed a "
                             "t1-s<seed> experiment exists for)")
    parser.add_argument("--schedule-rev",
                        help="the commit whose experiments give Table 1 under both schedules "
                             "(make schedule), when not --rev's")
    parser.add_argument("--rev", help="the baseline commit to report: experiments belong to the "
                                      "commit they were run from, and so do the params read "
                                      "(its params.yaml, not --params; default: the git HEAD "
                                      "when running dvc, the first commit of --show-json)")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    try:
        head = (args.rev if args.show_json is not None else
                commit_of(args.rev, "--rev") if args.rev else git_head("HEAD"))
        p = commit_params(args.params, head if args.rev else None, read)
        seeds = checked_seeds(args.seeds, SEED_KEY, p)  # before dvc runs
        show = (load_show_json(args.show_json) if args.show_json is not None
                else run_exp_show(head if args.rev else None))
        schedule_head = args.schedule_rev and commit_of(args.schedule_rev, "--schedule-rev")
        report = build_report(
            show, base_seed=p.attention.seed, base_k=p.model.K, seeds=seeds, head=head,
            read=read, cnn_seed=p.seed, schedule_head=schedule_head,
            schedule_show=run_exp_show(schedule_head) if schedule_head else None)
    except (ReportError, ParamsError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    command = shlex.join(["python", "-m", "tools.experiments.report", *argv])
    run = run_name(p.data.video[0], p.data.splits[0])  # the default run: its first split
    extras = {name: _optional_json(path, tool) for name, path, tool in (
        ("evaluation", Path(EVAL_FILE.format(run=run)), "pipeline.stages.evaluate (make repro)"),
        ("references", Path(REFERENCES_FILE.format(run=run)),
         "pipeline.stages.references (make repro)"),
        ("sweep", args.sweep, "tools.experiments.sweep"))}
    # the references stage's file holds the floor and ceilings and the cell probe
    measured = extras["references"] or dict.fromkeys(FILE_KEYS)
    if set(measured) != set(FILE_KEYS):
        raise SystemExit(f"error: {REFERENCES_FILE.format(run=run)}: expected the references "
                         f"stage's keys {' and '.join(FILE_KEYS)}, got {', '.join(measured)}; "
                         "`make repro` writes it again")
    extras["references"], extras["probe"] = (measured[key] for key in FILE_KEYS)
    write_report(args.json, dataclasses.replace(report, command=command, extras=extras))
    report = read_report(args.json)  # everything below renders the file, as the docs do
    write_text(args.out, render_markdown(report))
    draw_chart(report, args.chart)
    print(render_terminal(report))
    print(f"\nwrote {args.json}, {args.out} and {args.chart}")


if __name__ == "__main__":
    main()
