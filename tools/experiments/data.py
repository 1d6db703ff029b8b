"""The report as data: its rows, claims and sources, and ``metrics/report.json``, from which
``metrics/report.md``, the chart and the README's and docs' blocks are all rendered.

``metrics/report.json`` holds the report's commit and command, every table on every dataset and
protocol (each row with its mean ± std, seeds, 95 percent interval and the experiments it was
read from), the claims as measured (each marked as one of the paper's orderings or one of this
project's targets), the missing results, and the measured files the report printed beside the
tables (the default run's evaluation, the references, the sweep, the cell probe). Fractions
throughout; ``"missing"`` and ``"n/a"`` where a value has none.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.files import write_json
from pipeline.formatting import NA

FORMAT = 1  # the layout of report.json; a reader refuses another
MISSING = "missing"
NOT_APPLICABLE = NA


@dataclass(frozen=True)
class Stat:
    """A mean ± std: over the seeds found when ``seeds`` > 1, else over one seed's splits."""

    mean: float
    std: float
    seeds: int


Value = Stat | str  # a string is shown instead of a number: "missing" or "n/a"
Interval = tuple[float, float]  # (lo, hi), fractions


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
    rank1_ci: Interval | None = None  # the 95 percent interval of the test set; None: not known
    mean_ap_ci: Interval | None = None
    # ground truth (synthetic set): mean attention mass on the person, parts covered, heads with
    # less than PERSON_FLOOR of their mass on the person, and the correlation of the temporal
    # weights with the visibility of each head's part (with its 95 percent interval)
    person: Value = NOT_APPLICABLE
    parts: Value = NOT_APPLICABLE
    heads_below: Value = NOT_APPLICABLE
    person_uniform: Value = NOT_APPLICABLE  # a uniform map's person mass: the level of chance
    visibility: Value = NOT_APPLICABLE
    visibility_ci: Interval | None = None


PAPER, TARGET = "paper", "target"  # where a claim comes from


@dataclass(frozen=True)
class Claim:
    """One claim as measured: ``origin`` PAPER (an ordering of the paper's Table 1) or TARGET (a
    threshold this project set, not a number of the paper); ``verdict`` "holds", "does not
    hold", "not resolved" (a paired interval around 0), "within the noise" (no paired scores)
    or "not measured (missing)"; ``figures`` what it was decided on."""

    claim: str
    origin: str
    verdict: str
    figures: str = ""

    def line(self) -> str:
        return f"- {self.claim}: {self.verdict}" + (f" ({self.figures})" if self.figures else "")


@dataclass(frozen=True)
class ScheduleTable:
    """Table 1's default rows on one set and protocol under each schedule (``rows`` and
    ``claims``: schedule -> its rows, its claims), and each row across sets against per set,
    paired over the same queries (``between``: ``{"label", "rank1", "mAP"}``, each metric
    ``tools.experiments.paired.compare``'s ``{"a", "b", "diff", "lo", "hi"}`` of across minus per
    set, in fractions, or None where not paired)."""

    rows: dict[str, list[RowResult]]
    claims: dict[str, list[Claim]]
    between: list[dict]


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
    # the default pipeline over CNN seeds (the whole pipeline trained again), when run
    cnn_seeds: tuple[int, ...] = ()
    cnn: dict[tuple[str, str], list[RowResult]] = dataclasses.field(default_factory=dict)
    # the claims of each (dataset, protocol)'s Table 1 (tools.experiments.tables.claims)
    claims: dict[tuple[str, str], list[Claim]] = dataclasses.field(default_factory=dict)
    # the schedule the baseline commit trained Tables 1 and 2 under (its params' ``schedule``)
    schedule: str = "per_set"
    # Table 1 under both schedules on the generated sets (tools.experiments.cells.schedule_cells),
    # where its experiments were run: (dataset, protocol) -> the table
    schedule_seeds: tuple[int, ...] = ()
    schedule_commit: str | None = None  # whose experiments they are (None: ``commit``'s)
    schedules: dict[tuple[str, str], ScheduleTable] = dataclasses.field(default_factory=dict)
    command: str = ""  # how the report was made
    # the measured files printed beside the tables: {"evaluation", "references", "sweep",
    # "probe"} -> their JSON, or None where not measured
    extras: dict[str, Any] = dataclasses.field(default_factory=dict)


# --- to and from JSON ----------------------------------------------------------------------------


def _value(data: Any) -> Value:
    return data if isinstance(data, str) else Stat(float(data["mean"]), float(data["std"]),
                                                   int(data["seeds"]))


def _interval(data: Any) -> Interval | None:
    return None if data is None else (float(data[0]), float(data[1]))


VALUE_FIELDS = ("rank1", "mean_ap", "overlap", "entropy", "person", "parts", "heads_below",
                "person_uniform", "visibility")
INTERVAL_FIELDS = ("rank1_ci", "mean_ap_ci", "visibility_ci")


def row_from_data(data: dict) -> RowResult:
    return RowResult(**{**data,
                        **{k: _value(data[k]) for k in VALUE_FIELDS},
                        **{k: _interval(data[k]) for k in INTERVAL_FIELDS},
                        "experiments": tuple(data["experiments"])})


def to_data(report: Report) -> dict:
    """The report as JSON-ready data: one section per (dataset, protocol) of Table 1."""
    def rows(table: dict, key: tuple[str, str]) -> list[dict] | None:
        return [dataclasses.asdict(r) for r in table[key]] if key in table else None

    return {
        "format": FORMAT, "command": report.command, "commit": report.commit,
        "commit_name": report.commit_name, "seeds": list(report.seeds),
        "base_seed": report.base_seed, "base_k": report.base_k,
        "datasets": list(report.datasets), "cnn_seeds": list(report.cnn_seeds),
        "sections": [{"dataset": d, "protocol": p, "table1": rows(report.table1, (d, p)),
                      "table2": rows(report.table2, (d, p)), "cnn": rows(report.cnn, (d, p)),
                      "claims": [dataclasses.asdict(c) for c in report.claims.get((d, p), [])]}
                     for d, p in report.table1],
        "schedule": report.schedule, "schedule_seeds": list(report.schedule_seeds),
        "schedule_commit": report.schedule_commit,
        "schedules": [{"dataset": d, "protocol": p,
                       "rows": {s: [dataclasses.asdict(r) for r in rows]
                                for s, rows in table.rows.items()},
                       "claims": {s: [dataclasses.asdict(c) for c in found]
                                  for s, found in table.claims.items()},
                       "between": table.between}
                      for (d, p), table in report.schedules.items()],
        "problems": report.problems, **report.extras}


EXTRAS = ("evaluation", "references", "sweep", "probe")


def from_data(data: dict, source: str = "report.json") -> Report:
    """A Report from ``to_data``'s output; a file of another layout is an error naming
    ``source``."""
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ValueError(f"{source}: not a report of format {FORMAT} (write it again with "
                         "`make report`)")
    try:
        tables: dict[str, dict] = {"table1": {}, "table2": {}, "cnn": {}}
        claims = {}
        for section in data["sections"]:
            key = (section["dataset"], section["protocol"])
            for name, table in tables.items():
                if section.get(name) is not None:
                    table[key] = [row_from_data(r) for r in section[name]]
            claims[key] = [Claim(**c) for c in section["claims"]]
        schedules = {(section["dataset"], section["protocol"]): ScheduleTable(
            rows={s: [row_from_data(r) for r in rows] for s, rows in section["rows"].items()},
            claims={s: [Claim(**c) for c in found] for s, found in section["claims"].items()},
            between=list(section["between"]))
            for section in data.get("schedules") or []}
        return Report(
            commit=data["commit"], commit_name=data["commit_name"], seeds=tuple(data["seeds"]),
            base_seed=data["base_seed"], base_k=data["base_k"], datasets=tuple(data["datasets"]),
            table1=tables["table1"], table2=tables["table2"], problems=data["problems"],
            cnn_seeds=tuple(data["cnn_seeds"]), cnn=tables["cnn"], claims=claims,
            schedule=data.get("schedule", "per_set"), schedule_commit=data.get("schedule_commit"),
            schedule_seeds=tuple(data.get("schedule_seeds") or ()), schedules=schedules,
            command=data["command"], extras={k: data.get(k) for k in EXTRAS})
    except (KeyError, TypeError) as err:
        raise ValueError(f"{source}: a report without {err} (write it again with "
                         "`make report`)") from None


def write_report(path: str | Path, report: Report) -> None:
    write_json(path, to_data(report))


def read_report(path: str | Path) -> Report:
    path = Path(path)
    try:
        return from_data(json.loads(path.read_text()), str(path))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path}: not JSON ({err}); write it again with `make report`") from None
