"""The paper's Tables 1 and 2 from the DVC experiments: ``metrics/report.md``, a bar chart of
Table 1 and the same tables in the terminal.

Every row of a table is read from the ``metrics/results.json`` of the experiment that ran it, or
of the baseline commit for the rows the default pipeline evaluates (``pipeline.experiments``
says which is which), as ``dvc exp show --json`` lists them. A Table 1 row run with several seeds
shows the mean over the seeds of the per-seed means over splits, ± their standard deviation over
the seeds; a row with one seed shows ± the standard deviation over the dataset's splits. A row
without usable results says "missing", never 0.

    python -m pipeline.report --params params.yaml --out metrics/report.md \
        --chart metrics/plots/table1.png [--seeds 0 1 2] [--show-json exp-show.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pipeline.experiments import (
    PAPER_TABLE1,
    PAPER_TABLE2,
    TABLE1,
    TABLE2_MODEL,
    Cell,
    dvc,
    table1_cells,
    table2_cells,
)
from pipeline.params import ParamsError, load_params
from pipeline.stages.common import format_table, write_text

RESULTS_FILE = "metrics/results.json"
PARAMS_FILE = "params.yaml"
PROTOCOL_ORDER = ("official", "torchreid")
PROTOCOL_NOTES = {
    "official": "Official protocol (MARS evaluation code): each query is ranked against all test "
                "tracklets, queries included, junk skipped; rank-1 and mAP are divided by all "
                "queries, so a query without a true match counts as a miss.",
    "torchreid": "Torchreid protocol: the gallery is the test tracklets without the queries and "
                 "without junk (pid -1); queries without a valid match are skipped, so rank-1 "
                 "and mAP are divided by the valid queries only.",
}
TABLE1_ORDER = {row.label: i for i, row in enumerate(TABLE1)}  # the paper's row order
PAPER_DATASETS = ("prid2011", "ilidsvid", "mars")  # the video sets of the paper's tables
MISSING = "missing"
NOT_APPLICABLE = "n/a"
NO_PAPER_NUMBER = "n/a (no paper number)"
BASELINE_COMMIT = "baseline commit"  # how a cell read from the baseline commit is named

# The chart: one panel per dataset, stacked; fixed inches per panel and dpi, so its pixel size
# is CHART_WIDTH * CHART_DPI by n_datasets * CHART_PANEL_HEIGHT * CHART_DPI.
CHART_WIDTH = 9.0
CHART_PANEL_HEIGHT = 4.0
CHART_DPI = 100


class ReportError(Exception):
    """Input the report cannot be made from (no baseline commit, unreadable JSON...)."""


# --- reading `dvc exp show --json` ---------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """The baseline commit (``name`` None) or one experiment, as ``dvc exp show`` lists it:
    its ``metrics/results.json`` and ``params.yaml`` when usable, else why not (``problem``)."""

    name: str | None
    results: dict | None
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


def run_exp_show() -> list[dict]:
    """``dvc exp show --json`` of the current commit, run with the ``dvc`` beside this Python."""
    try:
        return parse_show_json(dvc("exp", "show", "--json"))
    except RuntimeError as err:
        raise ReportError(str(err)) from None


def git_head() -> str | None:
    """The sha of the git HEAD, or None outside a git repository."""
    try:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                check=False)
    except OSError:
        return None
    return result.stdout.strip() if result.returncode == 0 else None


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
    baseline = _source(None, entry.get("data"))
    if baseline.problem:
        raise ReportError(f"baseline commit {entry['rev']}: {baseline.problem}; run `make repro` "
                          f"and commit {RESULTS_FILE}")
    experiments: dict[str, Source] = {}
    for exp in entry.get("experiments") or []:
        state = (exp.get("executor") or {}).get("state")
        for run in exp.get("revs") or []:
            name = run.get("name") or exp.get("name")
            if not name:
                continue
            if run.get("error"):
                found = Source(name, None, None, f"failed ({_describe_error(run['error'])})")
            elif state in ("queued", "running", "failed"):
                found = Source(name, None, None, f"{state}, not finished")
            else:
                found = _source(name, run.get("data"))
            # A name appears once per commit; if twice, keep a usable one.
            if name not in experiments or experiments[name].problem:
                experiments[name] = found
    return Sources(entry["rev"], entry.get("name"), baseline, experiments)


def _source(name: str | None, data: dict | None) -> Source:
    """A Source from one revision's ``data``: its results.json and params.yaml, if readable."""
    data = data or {}
    metrics = _file_data(data.get("metrics"), RESULTS_FILE)
    params = _file_data(data.get("params"), PARAMS_FILE)
    if not isinstance(metrics, dict) or not isinstance(metrics.get("results"), dict):
        return Source(name, None, params, f"no readable {RESULTS_FILE}")
    return Source(name, metrics, params)


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


def resolve(cell: Cell, sources: Sources) -> tuple[dict | None, str | None]:
    """The results.json of ``cell``, or None and why it is missing. Results whose seed or params
    are not those the cell asks for (a stale or mislabelled experiment) count as missing."""
    source = sources.get(cell.experiment)
    if source is None:
        return None, "not run (no experiment of that name for this commit)"
    if source.problem:
        return None, source.problem
    results = source.results or {}
    if "seed" in results and results["seed"] != cell.seed:
        return None, f"its results are for seed {results['seed']}, not {cell.seed}"
    for key, wanted in cell.overrides:
        actual = _dotted(source.params, key)
        if actual is not None and actual != yaml.safe_load(wanted):
            return None, f"its params have {key}={actual}, expected {wanted}"
    return results, None


def _dotted(tree: Any, key: str) -> Any:
    """``tree["a"]["b"]`` for the key ``"a.b"``, or None where a level is absent."""
    for part in key.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


# --- combining seeds -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Stat:
    """A mean ± std: over the seeds found when ``seeds`` > 1, else over one seed's splits."""

    mean: float
    std: float
    seeds: int


Value = Stat | str  # a string is shown instead of a number: "missing" or "n/a"


@dataclass(frozen=True)
class RowResult:
    """One row of a table on one dataset under one protocol."""

    label: str
    model: str
    rank1: Value
    mean_ap: Value  # mAP
    overlap: Value
    entropy: Value
    valid_queries: float | None  # mean over the seeds found (each a mean over splits)
    seeds_found: int
    seeds_wanted: int
    experiments: tuple[str, ...]  # where each seed was read from; missing ones say so


def combine(values: Sequence[tuple[float, float]]) -> Stat | None:
    """(mean over splits, std over splits) of each seed found -> one Stat (None if none): the
    mean of the means ± their population std, or ± the split std for a single seed."""
    if not values:
        return None
    if len(values) == 1:
        return Stat(float(values[0][0]), float(values[0][1]), 1)
    means = np.array([mean for mean, _ in values], dtype=float)
    return Stat(float(means.mean()), float(means.std()), len(values))


def aggregate(cells: Sequence[Cell], resolved: dict[Cell, dict | None], dataset: str,
              protocol: str) -> list[RowResult]:
    """One RowResult per row label of ``cells`` (in the paper's order), on ``dataset`` under
    ``protocol``, from each cell's results (``resolved``; None: missing)."""
    labels = sorted(dict.fromkeys(cell.label for cell in cells),
                    key=lambda label: TABLE1_ORDER.get(label, len(TABLE1_ORDER)))  # stable
    return [aggregate_row([cell for cell in cells if cell.label == label], resolved, dataset,
                          protocol) for label in labels]


def aggregate_row(group: Sequence[Cell], resolved: dict[Cell, dict | None], dataset: str,
                  protocol: str) -> RowResult:
    """The cells of one row (one per seed) combined into a RowResult."""
    metrics: dict[str, list[tuple[float, float]]] = {"rank1": [], "mAP": []}
    attention: dict[str, list[tuple[float, float]]] = {"overlap": [], "entropy": []}
    not_applicable = {"overlap": False, "entropy": False}
    valid, experiments, found = [], [], 0
    for cell in group:
        results = resolved.get(cell)
        entry = _dotted(results, f"results.{dataset}.{cell.model}.{protocol}")
        name = cell.experiment or BASELINE_COMMIT
        experiments.append(name if isinstance(entry, dict) else f"{name} ({MISSING})")
        if not isinstance(entry, dict):
            continue
        found += 1
        if entry.get("num_valid_queries") is not None:
            valid.append(float(entry["num_valid_queries"]))
        for metric, values in metrics.items():
            if isinstance(entry.get(metric), dict):
                values.append((entry[metric]["mean"], entry[metric].get("std", 0.0)))
        maps = _dotted(results, f"attention.{dataset}.{cell.model}")
        for key, values in attention.items():
            if not isinstance(maps, dict) or not maps:
                continue  # results from before attention was measured
            value = maps.get(key)  # absent: `dvc exp show --json` drops the null of K = 1
            if value is None or (isinstance(value, dict) and value.get("mean") is None):
                not_applicable[key] = True  # e.g. overlap with K = 1: no pairs of maps
            elif isinstance(value, dict):
                values.append((value["mean"], value.get("std") or 0.0))
    model = group[0].model
    no_maps = NOT_APPLICABLE if model == "baseline" else MISSING  # the baseline has no maps
    return RowResult(
        label=group[0].label, model=model,
        rank1=combine(metrics["rank1"]) or MISSING, mean_ap=combine(metrics["mAP"]) or MISSING,
        overlap=combine(attention["overlap"])
        or (NOT_APPLICABLE if not_applicable["overlap"] else no_maps),
        entropy=combine(attention["entropy"])
        or (NOT_APPLICABLE if not_applicable["entropy"] else no_maps),
        valid_queries=float(np.mean(valid)) if valid else None,
        seeds_found=found, seeds_wanted=len(group), experiments=tuple(experiments))


# --- the report ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Report:
    """Both tables on every dataset and protocol found, and what was missing."""

    commit: str
    commit_name: str | None
    seeds: tuple[int, ...]  # Table 1
    base_seed: int  # Table 2
    base_k: int
    datasets: tuple[str, ...]
    table1: dict[tuple[str, str], list[RowResult]]  # (dataset, protocol) -> rows
    table2: dict[tuple[str, str], list[RowResult]]
    problems: dict[str, str]  # experiment (or "baseline commit") -> why it is missing


def default_seeds(sources: Sources, base_seed: int) -> list[int]:
    """The params' seed and every seed some Table 1 experiment (``t1-s<seed>...``) exists for."""
    pattern = re.compile(r"t1-s(\d+)(?:-|$)")
    found = {int(m.group(1)) for name in sources.experiments if (m := pattern.match(name))}
    return sorted(found | {base_seed})


def build_report(show: list[dict], *, base_seed: int, base_k: int,
                 seeds: Sequence[int] | None = None, head: str | None = None) -> Report:
    """Collect Table 1 (``seeds``, default: ``default_seeds``) and Table 2 (``base_seed``, K
    around ``base_k``) from a ``dvc exp show --json`` output."""
    sources = collect_sources(show, head)
    seeds = list(seeds) if seeds else default_seeds(sources, base_seed)
    cells1 = table1_cells(seeds, base_seed)
    cells2 = table2_cells(base_k, base_seed)
    resolved: dict[Cell, dict | None] = {}
    problems: dict[str, str] = {}
    for cell in cells1 + cells2:
        resolved[cell], problem = resolve(cell, sources)
        if problem:
            problems.setdefault(cell.experiment or BASELINE_COMMIT, problem)
    datasets, protocols = {}, {}
    for results in resolved.values():
        for dataset, models in ((results or {}).get("results") or {}).items():
            datasets.setdefault(dataset, None)
            for per_protocol in (models or {}).values():
                for protocol in per_protocol or {}:
                    protocols.setdefault((dataset, protocol), None)
    pairs = sorted(protocols, key=lambda dp: (list(datasets).index(dp[0]), _protocol_rank(dp[1])))
    return Report(
        commit=sources.commit, commit_name=sources.commit_name, seeds=tuple(seeds),
        base_seed=base_seed, base_k=base_k, datasets=tuple(datasets),
        table1={pair: aggregate(cells1, resolved, *pair) for pair in pairs},
        table2={pair: aggregate(cells2, resolved, *pair) for pair in pairs},
        problems=problems)


def _protocol_rank(protocol: str) -> tuple[int, str]:
    order = PROTOCOL_ORDER.index(protocol) if protocol in PROTOCOL_ORDER else len(PROTOCOL_ORDER)
    return order, protocol


# --- formatting ----------------------------------------------------------------------------------


def percent(value: Value) -> str:
    """A fraction as percent with one decimal, ± its std; strings ("missing") as they are."""
    if isinstance(value, str):
        return value
    return f"{100 * value.mean:.1f} ± {100 * value.std:.1f}"


def plain(value: Value) -> str:
    """An overlap or entropy with three decimals, ± its std."""
    if isinstance(value, str):
        return value
    return f"{value.mean:.3f} ± {value.std:.3f}"


def _maps(value: Value, row: RowResult) -> str:
    """An attention value of a row, saying so when fewer seeds measured it than the row found
    (results from before attention was measured)."""
    if isinstance(value, Stat) and value.seeds < row.seeds_found:
        return f"{plain(value)} ({value.seeds}/{row.seeds_found} seeds)"
    return plain(value)


def paper_rank1(key: str | int, dataset: str, table: dict) -> str:
    """The paper's rank-1 of a row (a Table 1 label or a Table 2 K) on ``dataset``, if any."""
    number = table.get(key, {}).get(dataset) if dataset in PAPER_DATASETS else None
    return NO_PAPER_NUMBER if number is None else f"{number:.1f}"


def table1_rows(dataset: str, rows: list[RowResult]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of Table 1 on ``dataset``."""
    header = ["row", "rank-1 (%)", "mAP (%)", "map overlap", "map entropy (nats)",
              f"paper rank-1 ({dataset})"]
    if dataset == "mars":
        header.append("paper mAP (mars)")
    header += ["experiments", "seeds found", "valid queries"]
    cells = []
    for row in rows:
        line = [row.label, percent(row.rank1), percent(row.mean_ap), _maps(row.overlap, row),
                _maps(row.entropy, row), paper_rank1(row.label, dataset, PAPER_TABLE1)]
        if dataset == "mars":
            line.append(f"{PAPER_TABLE1[row.label]['mars_mAP']:.1f}"
                        if row.label in PAPER_TABLE1 else NO_PAPER_NUMBER)
        line += [", ".join(row.experiments), f"{row.seeds_found}/{row.seeds_wanted}",
                 MISSING if row.valid_queries is None else f"{row.valid_queries:.1f}"]
        cells.append(line)
    return header, cells


def table2_rows(dataset: str, rows: list[RowResult]) -> tuple[list[str], list[list[str]]]:
    """Header and cells of Table 2 on ``dataset``."""
    header = ["K", "rank-1 (%)", "mAP (%)", "map overlap", "map entropy (nats)",
              f"paper rank-1 ({dataset})", "experiment"]
    cells = []
    for row in rows:
        k = int(row.label.removeprefix("K = "))
        cells.append([str(k), percent(row.rank1), percent(row.mean_ap), _maps(row.overlap, row),
                      _maps(row.entropy, row), paper_rank1(k, dataset, PAPER_TABLE2),
                      ", ".join(row.experiments)])
    return header, cells


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A markdown pipe table (pipes inside cells escaped)."""
    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return "\n".join([line(header), line(["---"] * len(header)), *(line(r) for r in rows)])


def render_markdown(report: Report, command: str) -> str:
    """``metrics/report.md``: how it was made, then both tables per dataset and protocol."""
    commit = f"`{report.commit}`" + (f" ({report.commit_name})" if report.commit_name else "")
    seeds = ", ".join(map(str, report.seeds))
    parts = [
        "# DRSA reproduction: Tables 1 and 2",
        f"Produced by `{command}` from the DVC experiments of baseline commit {commit}. "
        f"Table 1: seed(s) {seeds}. Table 2: seed {report.base_seed}, the `{TABLE2_MODEL}` model "
        f"(SpaAtn+Q+TemAtn) with K varied; its K = {report.base_k} row is the baseline commit.",
        "Rank-1 and mAP are in percent. With several seeds a value is the mean over the seeds of "
        "each seed's mean over the dataset's splits, ± the standard deviation over the seeds; "
        "with one seed, ± the standard deviation over the splits (0.0 for a set of one split). "
        f'"{MISSING}": no usable results (see the list at the end), never a zero. Map overlap: '
        "mean pairwise Bhattacharyya coefficient between the K spatial attention maps "
        "(0 disjoint, 1 identical); map entropy in nats. The paper's numbers are its rank-1 (and "
        "MARS mAP) on PRID2011, iLIDS-VID and MARS.",
    ]
    for dataset, protocol in report.table1:
        parts += [f"## {dataset}, {protocol} protocol",
                  PROTOCOL_NOTES.get(protocol, f"Protocol {protocol}."),
                  "### Table 1",
                  markdown_table(*table1_rows(dataset, report.table1[dataset, protocol])),
                  "### Table 2",
                  markdown_table(*table2_rows(dataset, report.table2[dataset, protocol]))]
    parts.append("## Missing results")
    if report.problems:
        parts.append("\n".join(f"- `{name}`: {why}" for name, why in report.problems.items()))
        parts.append("Run the missing experiments with `make ablations` (Table 1, `SEEDS=...`) "
                     "or `make ksweep` (Table 2); each ends by writing this report again.")
    else:
        parts.append("None: every row was found.")
    return "\n\n".join(parts) + "\n"


def render_terminal(report: Report) -> str:
    """Both tables per dataset and protocol, as plain-text tables."""
    parts = []
    for dataset, protocol in report.table1:
        parts.append(f"Table 1, {dataset}, {protocol} protocol (percent)\n"
                     + format_table(*table1_rows(dataset, report.table1[dataset, protocol])))
        parts.append(f"Table 2, {dataset}, {protocol} protocol (percent)\n"
                     + format_table(*table2_rows(dataset, report.table2[dataset, protocol])))
    if report.problems:
        parts.append("missing:\n" + "\n".join(f"  {name}: {why}"
                                             for name, why in report.problems.items()))
    return "\n\n".join(parts)


# --- the chart -----------------------------------------------------------------------------------


def draw_chart(report: Report, path: str | Path) -> None:
    """Table 1 as grouped bars (rank-1, mAP; official protocol, or a dataset's first protocol
    when it has no official one), one panel per dataset; written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    panels = []
    for dataset in report.datasets:
        protocols = [p for d, p in report.table1 if d == dataset]
        if protocols:
            protocol = "official" if "official" in protocols else protocols[0]
            panels.append((dataset, protocol, report.table1[dataset, protocol]))
    fig = Figure(figsize=(CHART_WIDTH, CHART_PANEL_HEIGHT * max(len(panels), 1)), dpi=CHART_DPI)
    FigureCanvasAgg(fig)
    axes = fig.subplots(max(len(panels), 1), 1, squeeze=False)[:, 0]
    width = 0.38
    for ax, (dataset, protocol, rows) in zip(axes, panels, strict=False):
        x = np.arange(len(rows))
        for offset, metric, color in ((-width / 2, "rank1", "tab:blue"),
                                      (width / 2, "mean_ap", "tab:orange")):
            found = [(i, getattr(row, metric)) for i, row in enumerate(rows)
                     if isinstance(getattr(row, metric), Stat)]
            ax.bar([x[i] + offset for i, _ in found], [100 * s.mean for _, s in found], width,
                   yerr=[100 * s.std for _, s in found], capsize=3, color=color,
                   label="rank-1" if metric == "rank1" else "mAP")
            for i, row in enumerate(rows):
                if not isinstance(getattr(row, metric), Stat):
                    ax.text(x[i] + offset, 2, MISSING, rotation=90, ha="center", va="bottom",
                            fontsize=8, color="red")
        paper = [(i, PAPER_TABLE1[row.label][dataset]) for i, row in enumerate(rows)
                 if dataset in PAPER_DATASETS and row.label in PAPER_TABLE1]
        if paper:
            ax.scatter([x[i] - width / 2 for i, _ in paper], [v for _, v in paper], marker="_",
                       s=300, color="black", zorder=3, label="paper rank-1")
        ax.set_xticks(x, [row.label for row in rows], rotation=20, ha="right", fontsize=8)
        ax.set_ylim(0, 100)
        ax.set_ylabel("%")
        ax.set_title(f"Table 1, {dataset} ({protocol} protocol)", fontsize=10)
        ax.legend(fontsize=8, loc="upper left")
    if not panels:
        axes[0].text(0.5, 0.5, "no results", ha="center", va="center")
    fig.tight_layout()
    _save_atomically(fig, Path(path))


def _save_atomically(fig: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            fig.savefig(f, format="png", dpi=CHART_DPI)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- command line --------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", type=Path, default=Path("metrics/report.md"))
    parser.add_argument("--chart", type=Path, default=Path("metrics/plots/table1.png"))
    parser.add_argument("--show-json", type=Path,
                        help="a saved `dvc exp show --json` output (default: run it)")
    parser.add_argument("--seeds", type=int, nargs="+",
                        help="Table 1 seeds (default: the params' seed and every seed a "
                             "t1-s<seed> experiment exists for)")
    parser.add_argument("--rev", help="baseline commit sha to report (default: the git HEAD "
                                      "when running dvc, the first commit of --show-json)")
    args = parser.parse_args(argv)
    argv = sys.argv[1:] if argv is None else argv
    try:
        p = load_params(args.params)
        if args.show_json is not None:
            show, head = load_show_json(args.show_json), args.rev
        else:
            show, head = run_exp_show(), args.rev or git_head()
        report = build_report(show, base_seed=p.seed, base_k=p.model.K, seeds=args.seeds,
                              head=head)
    except (ReportError, ParamsError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    command = shlex.join(["python", "-m", "pipeline.report", *argv])
    write_text(args.out, render_markdown(report, command))
    draw_chart(report, args.chart)
    print(render_terminal(report))
    print(f"\nwrote {args.out} and {args.chart}")


if __name__ == "__main__":
    main()
