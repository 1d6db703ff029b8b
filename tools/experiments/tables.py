"""The report's tables: each row's mean ± std over the seeds found (or over one seed's splits),
and both tables as markdown (``metrics/report.md``) and as plain text for the terminal."""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import jinja2
import numpy as np

from pipeline.cell_probe import grid_rows, pooled_rows
from pipeline.errors import InputError
from pipeline.formatting import corr, markdown_table, num_stat, pct_stat, text_table
from pipeline.names import ROW
from pipeline.params import SCHEDULES, dotted
from pipeline.references import STANDING_HEADER, standing_rows
from tools.experiments.cells import (
    PAPER_TABLE1,
    PAPER_TABLE2,
    SCHEDULE_SETS,
    TABLE1,
    TABLE2_MODEL,
    Cell,
    schedule_of,
)
from tools.experiments.data import (
    MISSING,
    NOT_APPLICABLE,
    PAPER,
    TARGET,
    Claim,
    Interval,
    Report,
    RowResult,
    ScheduleTable,
    Stat,
    Value,
)
from tools.experiments.paired import PROTOCOL as PAIRED_PROTOCOL
from tools.experiments.paired import Queries, compare, queries_of
from tools.experiments.paired import verdict as paired_verdict
from tools.experiments.sources import PERSON_FLOOR
from tools.experiments.sweep import SWEEP_HEADER, choice_line, matched_lines, sweep_rows

TABLE1_ORDER = {row.label: i for i, row in enumerate(TABLE1)}  # the paper's row order
PAPER_DATASETS = ("prid2011", "ilidsvid", "mars")  # the video sets of the paper's tables
PAPER_COLUMNS = {"prid2011": "PRID2011 rank-1", "ilidsvid": "iLIDS-VID rank-1",
                 "mars": "MARS rank-1", "mars_mAP": "MARS mAP"}
NO_PAPER_NUMBER = "n/a (no paper number)"
BASELINE_COMMIT = "baseline commit"  # how a cell read from the baseline commit is named
# Where each figure of a row is in one seed's results (sources.read_results): RowResult field ->
# (section, key) at ``<section>.<dataset>.<model>.<key>``, ``results`` under the protocol
FIGURES = {"rank1": ("results", "rank1"), "mean_ap": ("results", "mAP"),
           "overlap": ("attention", "overlap"), "entropy": ("attention", "entropy"),
           "person": ("attention", "person"), "parts": ("attention", "parts_covered"),
           "heads_below": ("heads", "heads_below"),  # sources.head_summary
           "person_uniform": ("heads", "person_uniform"),
           "visibility": ("attention", "visibility_corr")}
MAPS = ("overlap", "entropy")  # the attention maps' own figures
# The 95 percent interval of a figure: RowResult field -> (its figure, where its bounds are:
# section, the key holding them or None for the section itself, the keys of lo and hi)
INTERVALS = {"rank1_ci": ("rank1", ("results", "rank1", "lo", "hi")),
             "mean_ap_ci": ("mean_ap", ("results", "mAP", "lo", "hi")),
             "visibility_ci": ("visibility", ("heads", None, "visibility_lo", "visibility_hi"))}


# --- combining seeds -----------------------------------------------------------------------------


def combine_intervals(bounds: Sequence[Interval]) -> Interval | None:
    """The 95 percent intervals of a row's seeds (each over its splits, ``summarize``) -> one: the
    mean of their bounds. The seeds are scored on the same test set, whose sampling noise does
    not average out over them, so the interval does not shrink with more seeds."""
    if not bounds:
        return None
    return float(np.mean([lo for lo, _ in bounds])), float(np.mean([hi for _, hi in bounds]))


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


def seed_figures(results: dict | None, dataset: str, model: str, protocol: str) -> dict | None:
    """One seed's figures of a row: ``{field: (mean, std) or None (not measured)}`` for FIGURES,
    ``{field: (lo, hi) or None}`` for INTERVALS, ``"queries"``: its valid queries (or None) and
    ``"maps"``: whether it measured attention at all; None where the seed has no results."""
    entry = dotted(results, f"results.{dataset}.{model}.{protocol}")
    if not isinstance(entry, dict):
        return None
    where = {"results": entry, **{
        section: found if isinstance(found := dotted(results, f"{section}.{dataset}.{model}"),
                                     dict) else {}
        for section in ("attention", "heads")}}
    out: dict = {field: _mean_std(where[section].get(key))
                 for field, (section, key) in FIGURES.items()}
    for field, (_, (section, key, lo, hi)) in INTERVALS.items():
        holder = where[section] if key is None else where[section].get(key)
        out[field] = ((holder[lo], holder[hi]) if isinstance(holder, dict) and lo in holder
                      and hi in holder else None)
    out["queries"] = where["results"].get("num_valid_queries")
    out["maps"] = bool(where["attention"])
    return out


def _mean_std(value: object) -> tuple[float, float] | None:
    """A summary's ``{"mean", "std"}`` (std 0 where absent) or a bare number, as (mean, std)."""
    if isinstance(value, dict) and value.get("mean") is not None:
        return value["mean"], value.get("std") or 0.0
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value), 0.0
    return None


def _interval(found: list[dict], field: str) -> Interval | None:
    """The interval of INTERVALS' ``field`` over the seeds ``found``: only where exactly the seeds
    that measured its figure have one (results from before intervals: none)."""
    figure = INTERVALS[field][0]
    if any((f[field] is None) != (f[figure] is None) for f in found):
        return None
    return combine_intervals([f[field] for f in found if f[field] is not None])


def aggregate_row(group: Sequence[Cell], resolved: dict[Cell, dict | None], dataset: str,
                  protocol: str) -> RowResult:
    """The cells of one row (one per seed) combined into a RowResult: each figure the mean over
    the seeds that measured it (``combine``), each interval as ``_interval`` says. Where no seed
    has a figure: rank-1 and mAP "missing"; the map figures "n/a" where attention was measured
    without them (overlap with K = 1) or for the Baseline (no maps), else "missing"; the
    ground-truth figures "n/a"."""
    seeds = [(cell, seed_figures(resolved.get(cell), dataset, cell.model, protocol))
             for cell in group]
    found = [figures for _, figures in seeds if figures is not None]
    model = group[0].model

    def unmeasured(field: str) -> str:
        if field in ("rank1", "mean_ap"):
            return MISSING
        if field in MAPS and model != "baseline" and not any(
                f["maps"] and f[field] is None for f in found):
            return MISSING
        return NOT_APPLICABLE

    stats = {field: combine([f[field] for f in found if f[field] is not None]) or unmeasured(field)
             for field in FIGURES}
    valid = [float(f["queries"]) for f in found if f["queries"] is not None]
    names = [cell.experiment or BASELINE_COMMIT for cell, _ in seeds]
    return RowResult(
        label=group[0].label, model=model, **stats,
        valid_queries=float(np.mean(valid)) if valid else None,
        seeds_found=len(found), seeds_wanted=len(group),
        experiments=tuple(name if figures is not None else f"{name} ({MISSING})"
                          for name, (_, figures) in zip(names, seeds, strict=True)),
        **{field: _interval(found, field) for field in INTERVALS})


# --- formatting ----------------------------------------------------------------------------------


def percent(value: Value, interval: Interval | None = None) -> str:
    """A fraction as percent with one decimal, ± its std, then its 95 percent interval in
    brackets where known; strings ("missing") as they are."""
    if isinstance(value, str):
        return value
    return pct_stat(value.mean, value.std, *(interval or (None, None)))


def plain(value: Value) -> str:
    """An overlap or entropy with three decimals, ± its std."""
    return value if isinstance(value, str) else num_stat(value.mean, value.std)


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
        line = [row.label, percent(row.rank1, row.rank1_ci), percent(row.mean_ap, row.mean_ap_ci),
                _maps(row.overlap, row),
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
        cells.append([str(k), percent(row.rank1, row.rank1_ci),
                      percent(row.mean_ap, row.mean_ap_ci), _maps(row.overlap, row),
                      _maps(row.entropy, row), paper_rank1(k, dataset, PAPER_TABLE2),
                      ", ".join(row.experiments)])
    return header, cells


def _mean(value: Value) -> float | None:
    return value.mean if isinstance(value, Stat) else None


def _gain(value: Value, base: Value) -> str:
    """Percent points over the Baseline row, or n/a."""
    a, b = _mean(value), _mean(base)
    return NOT_APPLICABLE if a is None or b is None else f"{100 * (a - b):+.1f}"


def _paper_gain(label: str, column: str) -> str:
    number, base = PAPER_TABLE1.get(label, {}).get(column), PAPER_TABLE1["Baseline"][column]
    return NO_PAPER_NUMBER if number is None else f"{number:.1f} ({number - base:+.1f})"


def paper_rows(dataset: str, rows: list[RowResult]) -> tuple[list[str], list[list[str]]]:
    """Table 1 beside the paper's: each measured row's rank-1 and mAP gain over the measured
    Baseline, then the paper's four numbers of that row with its gain over the paper's
    Baseline, whatever set was run (the trends compare; the numbers only on the same set)."""
    base = next((r for r in rows if r.label == "Baseline"), None)
    header = ["row", "rank-1 (%)", "gain over Baseline", "mAP (%)", "gain over Baseline",
              *(f"paper {PAPER_COLUMNS[c]} (gain)" for c in PAPER_COLUMNS)]
    cells = []
    for row in rows:
        cells.append([row.label, percent(row.rank1, row.rank1_ci),
                      _gain(row.rank1, base.rank1) if base else NOT_APPLICABLE,
                      percent(row.mean_ap, row.mean_ap_ci),
                      _gain(row.mean_ap, base.mean_ap) if base else NOT_APPLICABLE,
                      *(_paper_gain(row.label, c) for c in PAPER_COLUMNS)])
    return header, cells


def _corr(row: RowResult) -> str:
    if not isinstance(row.visibility, Stat):
        return row.visibility
    return corr(row.visibility.mean, *(row.visibility_ci or (None, None)),
                std=row.visibility.std)


def mechanism_rows(rows: list[RowResult]) -> tuple[list[str], list[list[str]]]:
    """Where the heads look (the synthetic set's label maps): rows with attention maps."""
    header = ["row", "person mass", "uniform map's person mass",
              f"heads below {PERSON_FLOOR} person", "parts covered", "map overlap",
              "map entropy (nats)", "r(temporal weight, visibility) [95%]"]
    cells = [[row.label, plain(row.person), plain(row.person_uniform), plain(row.heads_below),
              plain(row.parts),
              _maps(row.overlap, row), _maps(row.entropy, row), _corr(row)]
             for row in rows if row.model != "baseline"]
    return header, cells


# The paper's orderings of Table 1 (higher, lower) and the attention figures it argues for.
ORDERINGS = (("SpaAtn+Q", "SpaAtn+Q'"), ("SpaAtn+Q'", "SpaAtn"), ("SpaAtn+Q", "SpaAtn"),
             ("SpaAtn+Q+TemAtn", "SpaAtn+Q"), ("SpaAtn+Q+TemAtn+Ind", "SpaAtn+Q+TemAtn"))
FULL_MODEL_GAIN = 0.03  # the full model over Baseline, rank-1 and mAP (fractions)
# Table 1's controls of SpaAtn+Q: its rows that change the heads' maps (tools.experiments)
CONTROLS = tuple(row.label for row in TABLE1 if "model.maps" in row.overrides)
CONTROL_GAIN = 0.04  # SpaAtn+Q over each control, rank-1 and mAP (fractions)
MAP_TARGETS = {"entropy": 1.0, "overlap": 0.15, "person": 0.6, "heads_below": 1, "parts": 4}


def _metric(row: RowResult, metric: str) -> tuple[Value, Interval | None]:
    """A row's ``rank1`` or ``mAP`` and its 95 percent interval."""
    return (row.rank1, row.rank1_ci) if metric == "rank1" else (row.mean_ap, row.mean_ap_ci)


def _half_width(row: RowResult, metric: str) -> float | None:
    value, ci = _metric(row, metric)
    if ci is None or not isinstance(value, Stat):
        return None
    return max(value.mean - ci[0], ci[1] - value.mean)


# (high row, low row) -> the paired difference high - low per metric
# (tools.experiments.paired.compare), or None where the rows' per-query scores are not there
# (another protocol, older results)
Paired = Callable[[str, str], "dict[str, dict[str, float]] | None"]


def no_pairs(high: str, low: str) -> None:
    return None


def paired_rows(cells: Sequence[Cell], resolved: dict[Cell, dict | None], dataset: str,
                protocol: str) -> Paired:
    """The paired comparison of two Table 1 rows on ``dataset``: every seed of each row found
    (``resolved``), the same test queries of every split, by a paired bootstrap over the query
    identities (tools.experiments.paired.compare). Only under the protocol whose per-query scores
    the evaluate stage stores (tools.experiments.paired.PROTOCOL)."""
    if protocol != PAIRED_PROTOCOL:
        return no_pairs

    @functools.cache
    def runs(label: str) -> list[dict[int, Queries]]:
        """Every found seed of the row; a seed found without per-query scores (results from
        before they were stored) makes the whole row unpaired (InputError), so that the paired
        interval never covers fewer seeds than the row's mean."""
        out = []
        for cell in cells:
            results = resolved.get(cell)
            if cell.label != label or results is None:
                continue
            per_split = dotted(results, f"per_query.{dataset}")
            if not per_split:
                raise InputError(f"{cell.experiment or BASELINE_COMMIT}: no per-query scores")
            out.append({split: queries_of({"per_query": record}, cell.model,
                                          f"{cell.experiment or BASELINE_COMMIT} split {split}")
                        for split, record in per_split.items()})
        return out

    def compare_rows(high: str, low: str) -> dict[str, dict[str, float]] | None:
        try:
            a, b = runs(low), runs(high)
            return compare(a, b) if a and b else None
        except InputError:  # a model or split without per-query scores, other queries
            return None

    return compare_rows


def _paired_figures(result: dict[str, float]) -> str:
    lo, hi = 100 * result["lo"], 100 * result["hi"]
    return (f"{100 * result['b']:.1f} vs {100 * result['a']:.1f}, {100 * result['diff']:+.1f} "
            f"[{lo:+.1f}, {hi:+.1f}], half-width {(hi - lo) / 2:.1f}")


def ordering(high: RowResult, low: RowResult, metric: str = "rank1",
             paired: dict[str, float] | None = None) -> tuple[str, str]:
    """(verdict, figures). With ``paired`` (the paired difference high - low of this metric):
    "holds" when its 95 percent interval lies above 0, "does not hold" below, else "not
    resolved". Without (no per-query scores): "holds" when ``high`` beats ``low`` by more than
    the larger half-width of their unpaired 95 percent intervals, "does not hold" when it trails
    by more, else "within the noise"."""
    if paired is not None:
        return paired_verdict(paired["lo"], paired["hi"]), _paired_figures(paired)
    a, b = _mean(_metric(high, metric)[0]), _mean(_metric(low, metric)[0])
    if a is None or b is None:
        return f"not measured ({MISSING})", ""
    widths = [w for w in (_half_width(high, metric), _half_width(low, metric)) if w is not None]
    noise = max(widths) if widths else 0.0
    verdict = ("holds" if a - b > noise else "does not hold" if b - a > noise
               else "within the noise")
    return verdict, (f"{100 * a:.1f} vs {100 * b:.1f}, {100 * (a - b):+.1f}; noise "
                     f"±{100 * noise:.1f}")


def gain_claims(high: RowResult, low: RowResult, gain: float, paired: Paired) -> list[Claim]:
    """``high`` at least ``low`` + ``gain`` (a fraction) in rank-1 and in mAP: holds when the
    difference reaches the gain and, where per-query scores give a paired interval, that
    interval lies above 0."""
    out = []
    result = paired(high.label, low.label)
    for metric, name in (("rank1", "rank-1"), ("mAP", "mAP")):
        a, b = _mean(_metric(high, metric)[0]), _mean(_metric(low, metric)[0])
        if a is None or b is None:
            continue
        pair = None if result is None else result[metric]
        ok = a - b >= gain and (pair is None or pair["lo"] > 0)
        figures = _paired_figures(pair) if pair else f"{100 * (a - b):+.2f}, unpaired"
        out.append(Claim(f"{high.label} >= {low.label} + {100 * gain:.0f} {name}", TARGET,
                         _holds(ok), figures))
    return out


def claims(rows: list[RowResult], paired: Paired = no_pairs, maps: bool = True) -> list[Claim]:
    """The claims as measured on one Table 1: the paper's orderings (rank-1; verdicts from the
    paired intervals of ``paired`` where it has them), then this project's targets: SpaAtn+Q
    against its two controls (the width control, uniform maps), the full model's gain over
    Baseline and, with ``maps``, the attention figures of SpaAtn+Q and the temporal weights'
    correlation with visibility (where the ground truth was measured)."""
    by = {r.label: r for r in rows}
    out = []
    for high, low in ORDERINGS:
        if high in by and low in by:
            result = paired(high, low)
            out.append(Claim(f"{high} > {low}", PAPER, *ordering(
                by[high], by[low], paired=None if result is None else result["rank1"])))
    q = by.get(ROW["spatial"])
    for control in CONTROLS:
        if q is not None and control in by:
            out += gain_claims(q, by[control], CONTROL_GAIN, paired)
    full, base = by.get(ROW["joint"]), by.get(ROW["baseline"])
    if full and base:
        out += gain_claims(full, base, FULL_MODEL_GAIN, paired)
    if not maps:
        return out
    q = by.get(ROW["spatial"])
    if q is not None and isinstance(q.person, Stat):
        checks = (("map entropy", q.entropy, ">=", MAP_TARGETS["entropy"], "{:.3f} nats"),
                  ("map overlap", q.overlap, "<=", MAP_TARGETS["overlap"], "{:.4f}"),
                  ("person mass", q.person, ">=", MAP_TARGETS["person"], "{:.3f}"),
                  (f"heads below {PERSON_FLOOR} person", q.heads_below, "<=",
                   MAP_TARGETS["heads_below"], "{:.1f}"),
                  ("parts covered", q.parts, ">=", MAP_TARGETS["parts"], "{:.1f}"))
        for name, value, op, target, fmt in checks:
            v = _mean(value)
            if v is None:
                continue
            ok = v >= target if op == ">=" else v <= target
            chance = _mean(q.person_uniform) if name == "person mass" else None
            out.append(Claim(f"{q.label} {name} {op} {target}", TARGET, _holds(ok),
                             fmt.format(v) + ("" if chance is None
                                              else f"; a uniform map: {chance:.3f}")))
    tem = by.get(ROW["temporal"])
    if tem is not None and isinstance(tem.visibility, Stat):
        lo = tem.visibility_ci[0] if tem.visibility_ci else None
        ok = tem.visibility.mean > 0 and lo is not None and lo > 0
        out.append(Claim("temporal weights follow the visibility of the heads' parts (r > 0 "
                         "beyond its interval)", TARGET, _holds(ok), _corr(tem)))
    return out


def schedule_tables(cells: Sequence[Cell], resolved: dict[Cell, dict | None],
                    pairs: Sequence[tuple[str, str]]) -> dict[tuple[str, str], ScheduleTable]:
    """Table 1 under both schedules (``cells``: tools.experiments.cells.schedule_cells) on each
    (dataset, protocol) of ``pairs``: each schedule's rows and claims (the paper's orderings and
    the full model's gain, paired within the schedule), and each row across sets against per
    set, paired over the same queries and every seed found of both."""
    out = {}
    def tag(label: str, schedule: str | None) -> str:  # one row under one schedule
        return f"{label} ({schedule})"

    tagged = {dataclasses.replace(cell, label=tag(cell.label, schedule_of(cell))):
              resolved.get(cell) for cell in cells}
    groups = {schedule: [c for c in cells if schedule_of(c) == schedule] for schedule in SCHEDULES}
    for dataset, protocol in pairs:
        rows = {schedule: aggregate(group, resolved, dataset, protocol)
                for schedule, group in groups.items()}
        found = {schedule: claims(rows[schedule], paired_rows(group, resolved, dataset, protocol),
                                  maps=False) for schedule, group in groups.items()}
        paired = paired_rows(list(tagged), tagged, dataset, protocol)
        between = []
        for row in rows["across_sets"]:
            result = paired(tag(row.label, "across_sets"), tag(row.label, "per_set"))
            between.append({"label": row.label, **{
                metric: None if result is None else result[metric] for metric in ("rank1", "mAP")}})
        out[dataset, protocol] = ScheduleTable(rows, found, between)
    return out


def _difference(result: dict | None) -> tuple[str, str]:
    """A paired difference (across minus per set) in points with its interval, and its
    verdict; "not paired" without per-query scores."""
    if result is None:
        return "not paired", NOT_APPLICABLE
    lo, hi = 100 * result["lo"], 100 * result["hi"]
    return (f"{100 * result['diff']:+.1f} [{lo:+.1f}, {hi:+.1f}]",
            paired_verdict(result["lo"], result["hi"]))


def schedule_rows(table: ScheduleTable) -> tuple[list[str], list[list[str]]]:
    """Header and cells: each row per set and across sets, rank-1 then mAP, and across minus per
    set with its paired interval and whether across sets is ahead."""
    per = {r.label: r for r in table.rows["per_set"]}
    header = ["row", "rank-1 per set (%)", "rank-1 across sets (%)", "across - per set [95%]",
              "across ahead", "mAP per set (%)", "mAP across sets (%)", "across - per set [95%]",
              "across ahead", "seeds found (per set, across sets)"]
    cells = []
    for row, between in zip(table.rows["across_sets"], table.between, strict=True):
        other = per.get(row.label)
        cells.append([
            row.label, percent(other.rank1) if other else MISSING, percent(row.rank1),
            *_difference(between["rank1"]),
            percent(other.mean_ap) if other else MISSING, percent(row.mean_ap),
            *_difference(between["mAP"]),
            f"{other.seeds_found if other else 0}, {row.seeds_found} of {row.seeds_wanted}"])
    return header, cells


def schedule_claims(table: ScheduleTable) -> list[str]:
    """The claims of each schedule's table, each line naming its schedule."""
    return [f"- {schedule.replace('_', ' ')}: {claim.line()[2:]}"
            for schedule, found in table.claims.items() for claim in found]


def _holds(ok: bool) -> str:
    return "holds" if ok else "does not hold"


CLAIM_TITLES = {PAPER: "The paper's orderings, as measured",
                TARGET: "This project's targets, as measured"}


def claim_groups(found: list[Claim]) -> list[tuple[str, list[str]]]:
    """The claims' lines by origin, in CLAIM_TITLES' order (PAPER, then TARGET); an origin
    without a claim is left out."""
    groups = [(origin, [c.line() for c in found if c.origin == origin])
              for origin in CLAIM_TITLES]
    return [(origin, lines) for origin, lines in groups if lines]


TEMPLATE = Path(__file__).with_name("report.md.j2")  # the report's prose and layout


@functools.cache
def _template() -> jinja2.Template:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATE.parent), autoescape=False,
                             trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    env.filters["para"] = lambda text: text.strip("\n").replace("\n", " ") + "\n"  # one line
    return env.get_template(TEMPLATE.name)


def render_markdown(report: Report) -> str:
    """``metrics/report.md`` (its prose and layout: TEMPLATE): how it was made, then per dataset
    and protocol both tables, Table 1 beside the paper's, where the heads look and the claims as
    measured; then, from the report's ``extras`` where measured, where the default run's models
    sit (its evaluation and the references), the attention sweep (tools.experiments.sweep) and
    the cell probe (the references stage)."""
    extras = report.extras
    evaluation, sweep, probe = extras.get("evaluation"), extras.get("sweep"), extras.get("probe")
    sections = []
    for (dataset, protocol), rows in report.table1.items():
        cnn = report.cnn.get((dataset, protocol))
        sections.append({
            "dataset": dataset, "protocol": protocol,
            "table1": markdown_table(*table1_rows(dataset, rows)),
            "paper": markdown_table(*paper_rows(dataset, rows)),
            "mechanism": any(isinstance(r.person, Stat) for r in rows)
            and markdown_table(*mechanism_rows(rows)),
            "claims": claim_groups(report.claims.get((dataset, protocol), [])),
            "cnn": cnn is not None and markdown_table(*table1_rows(dataset, cnn)),
            "table2": markdown_table(*table2_rows(dataset, report.table2[dataset, protocol]))})
    text = _template().render(
        report=report, sections=sections, missing=MISSING, table2_model=TABLE2_MODEL,
        person_floor=PERSON_FLOOR, claim_titles=CLAIM_TITLES, paper=PAPER, target=TARGET,
        schedule_sets=", ".join(f"`{name}`" for name in SCHEDULE_SETS),
        schedules=[{"dataset": d, "protocol": p, "table": markdown_table(*schedule_rows(t)),
                    "claims": "\n".join(schedule_claims(t))}
                   for (d, p), t in report.schedules.items()],
        evaluation=evaluation,
        standing=evaluation and markdown_table(STANDING_HEADER, standing_rows(
            extras.get("references"), evaluation, probe, ROW)),
        sweep=sweep, sweep_table=sweep and markdown_table(SWEEP_HEADER, sweep_rows(sweep)),
        matched=sweep and matched_lines(sweep), choice=sweep and choice_line(sweep),
        probe=probe, grid=probe and markdown_table(*grid_rows(probe)),
        pooled=probe and markdown_table(*pooled_rows(probe)))
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def render_terminal(report: Report) -> str:
    """Both tables per dataset and protocol, as plain-text tables."""
    parts = []
    for dataset, protocol in report.table1:
        parts.append(f"Table 1, {dataset}, {protocol} protocol, schedule {report.schedule} "
                     "(percent)\n"
                     + text_table(*table1_rows(dataset, report.table1[dataset, protocol])))
        for origin, lines in claim_groups(report.claims.get((dataset, protocol), [])):
            parts.append(f"{CLAIM_TITLES[origin]}, {dataset}, {protocol} protocol, "
                         f"schedule {report.schedule}\n"
                         + "\n".join(lines))
        parts.append(f"Table 2, {dataset}, {protocol} protocol, schedule {report.schedule} "
                     "(percent)\n"
                     + text_table(*table2_rows(dataset, report.table2[dataset, protocol])))
    for (dataset, protocol), table in report.schedules.items():
        parts.append(f"Table 1 under both schedules, {dataset}, {protocol} protocol (percent)\n"
                     + text_table(*schedule_rows(table)) + "\n" + "\n".join(
                         schedule_claims(table)))
    if report.problems:
        parts.append("missing:\n" + "\n".join(f"  {name}: {why}"
                                             for name, why in report.problems.items()))
    return "\n\n".join(parts)
