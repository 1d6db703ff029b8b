"""The ``report`` block (Tables 1 and 2 of the report and the steps of Table 1), the ``claims``
block (the claims as the report measured them), both read from ``metrics/report.json``
(``tools.experiments.data``), and the ``paper`` and ``rows`` blocks (the paper's numbers and each
row's experiment, from ``tools.experiments``)."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from pipeline.formatting import markdown_table
from pipeline.params import load_params
from tools.experiments.cells import (
    NAMES,
    PAPER_TABLE1,
    PAPER_TABLE2,
    TABLE1,
    TABLE2_K,
    TABLE2_MODEL,
)
from tools.experiments.data import PAPER, TARGET, Report, RowResult, Stat, read_report
from tools.experiments.tables import (
    claim_groups,
    schedule_claims,
    schedule_rows,
    table1_rows,
    table2_rows,
)
from tools.project.docs.common import DocsError, NotProduced

STEPS = (("the diversity term Q", "SpaAtn+Q", "SpaAtn"),
         ("Q rather than Q'", "SpaAtn+Q", "SpaAtn+Q'"),
         ("max pooling over the frames", "SpaAtn+Q+MaxPool", "SpaAtn+Q"),
         ("temporal attention over average pooling", "SpaAtn+Q+TemAtn", "SpaAtn+Q"),
         ("temporal attention over max pooling", "SpaAtn+Q+TemAtn", "SpaAtn+Q+MaxPool"),
         ("end-to-end fine-tuning (Ind)", "SpaAtn+Q+TemAtn+Ind", "SpaAtn+Q+TemAtn"),
         ("the full model over the Baseline", "SpaAtn+Q+TemAtn+Ind", "Baseline"))
KEEP = ("row", "K", "rank-1 (%)", "mAP (%)", "map overlap", "map entropy (nats)")
REPORT = "metrics/report.json"


def load_report(root: Path) -> Report:
    """``metrics/report.json``; NotProduced when absent, DocsError when unreadable."""
    if not (root / REPORT).exists():
        raise NotProduced(REPORT, "make ablations, make ksweep (or make report)")
    try:
        return read_report(root / REPORT)
    except (OSError, ValueError) as err:
        raise DocsError(str(err).replace(str(root / REPORT), REPORT)) from None


def first_protocols(pairs: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """Of the (dataset, protocol) ``pairs`` of a table, the first protocol of each set (official
    unless left out)."""
    pairs = list(pairs)
    return [(d, p) for d, p in pairs if p == next(q for e, q in pairs if e == d)]


def origin(report: Report) -> str:
    return f"`{REPORT}`, baseline commit `{report.commit[:7]}`"


def _kept(header: list[str], cells: list[list[str]]) -> tuple[list[str], list[list[str]]]:
    """The columns of KEEP, and a paper column where some row has a paper number."""
    keep = [i for i, h in enumerate(header) if h in KEEP or (
        h.startswith("paper") and any(not row[i].startswith("n/a") for row in cells))]
    return [header[i] for i in keep], [[row[i] for i in keep] for row in cells]


def _step(better: RowResult, base: RowResult) -> tuple[float, float] | None:
    values = (better.rank1, base.rank1, better.mean_ap, base.mean_ap)
    if not all(isinstance(v, Stat) for v in values):
        return None
    r1, r0, m1, m0 = (v.mean for v in values)
    return 100 * (r1 - r0), 100 * (m1 - m0)


def report_block(root: Path) -> str:
    report = load_report(root)
    parts = [f"From {origin(report)}; Table 1 over seeds {', '.join(map(str, report.seeds))}. "
             "Rank-1 and mAP in percent, mean ± std; the other protocol, the experiments behind "
             "each cell and the valid queries are in `metrics/report.md`."]
    for dataset, protocol in first_protocols(report.table1):
        for name, table, rows_of in (("Table 1", report.table1, table1_rows),
                                     ("Table 2", report.table2, table2_rows)):
            rows = table.get((dataset, protocol)) or []
            if rows:
                parts.append(f"**{name}, {dataset}, {protocol} protocol, schedule "
                             f"{report.schedule}**\n\n"
                             + markdown_table(*_kept(*rows_of(dataset, rows))))
        by_row = {r.label: r for r in report.table1[dataset, protocol]}
        steps = [f"- {what} ({better} against {base}): {d[0]:+.1f} rank-1, {d[1]:+.1f} mAP"
                 for what, better, base in STEPS if better in by_row and base in by_row
                 and (d := _step(by_row[better], by_row[base])) is not None]
        if steps:
            parts.append(f"What each step of Table 1 changes on {dataset} (difference of the "
                         "means; compare it with the ± spreads above):\n\n" + "\n".join(steps))
    if report.problems:
        parts.append("Some cells are missing: the end of `metrics/report.md` says why.")
    return "\n\n".join(parts)


def claims_block(root: Path) -> str:
    """The README's measured claims: for the first protocol of each set of the report, the
    paper's orderings and this project's targets as the report measured them (what each kind
    means: the report's CLAIM_TITLES and its template's notes, in metrics/report.md)."""
    report = load_report(root)
    heads = {PAPER: "The paper's orderings (its Table 1: each row above the one it builds on)",
             TARGET: "This project's targets (thresholds set here, not numbers of the paper)"}
    parts = []
    for dataset, protocol in first_protocols(report.table1):
        for kind, lines in claim_groups(report.claims.get((dataset, protocol), [])):
            parts.append(f"**{heads[kind]}**, {dataset}, {protocol} protocol, schedule "
                         f"{report.schedule}:\n\n"
                         + "\n".join(lines))
    if not parts:
        return f"`{REPORT}` measures no claim yet: run `make ablations`."
    return (f"From {origin(report)}; Table 1's seeds {', '.join(map(str, report.seeds))}; rank-1 "
            "unless said; [lo, hi]: the 95 percent interval of the paired difference over the "
            "same query identities and seeds (tools.experiments.paired): a claim that needs more "
            "than a difference (`>`, `+ N`) holds only with it above 0.\n\n"
            + "\n\n".join(parts))


def schedules_block(root: Path) -> str:
    """Table 1 under both schedules (``make schedule``) on the first protocol of each set: each
    row per set and across sets, their paired difference, and each schedule's claims."""
    report = load_report(root)
    if not report.schedules:
        return (f"{origin(report)} has no Table 1 under both schedules: run `make schedule`, "
                "then `make report`.")
    commit = (report.schedule_commit or report.commit)[:7]
    parts = [f"From `{REPORT}`, the experiments of commit `{commit}`; heads' seeds "
             f"{', '.join(map(str, report.schedule_seeds))}; percent, mean ± std over the seeds; "
             "[lo, hi]: the 95 percent interval of the paired difference "
             "(tools.experiments.paired)."]
    for dataset, protocol in first_protocols(report.schedules):
        table = report.schedules[dataset, protocol]
        parts.append(f"**{dataset}, {protocol} protocol**\n\n"
                     + markdown_table(*schedule_rows(table)) + "\n\n"
                     + "\n".join(schedule_claims(table)))
    return "\n\n".join(parts)


def paper_block(root: Path) -> str:
    sets = [("prid2011", "PRID2011"), ("ilidsvid", "iLIDS-VID"), ("mars", "MARS")]
    t1 = markdown_table(["Table 1 row", *(n for _, n in sets), "MARS mAP"],
               [[row, *(f"{v[s]:.1f}" for s, _ in sets), f"{v['mars_mAP']:.1f}"]
                for row, v in PAPER_TABLE1.items()])
    t2 = markdown_table(["Table 2", *(n for _, n in sets)],
               [[f"K = {k}", *(f"{v[s]:.1f}" for s, _ in sets)] for k, v in PAPER_TABLE2.items()])
    return ("From `tools/experiments/cells.py` (`PAPER_TABLE1`, `PAPER_TABLE2`), rank-1 in percent:"
            f"\n\n{t1}\n\n{t2}")


def rows_block(root: Path) -> str:
    k = load_params(root / "params.yaml").model.K
    named = NAMES["table1"].format(seed="<s>")
    t1 = [[row.label, f"`{row.model}`",
           (f"`{named}-{row.key}`" if row.overrides else
            f"the baseline commit at its own seed, `{named}` at another"),
           " ".join(f"`-S {o}={v}`" for o, v in row.overrides.items()) or "-"] for row in TABLE1]
    t2 = [[f"K = {n}", f"`{TABLE2_MODEL}`",
           "the baseline commit" if n == k else f"`{NAMES['table2'].format(k=n)}`",
           "-" if n == k else f"`-S model.K={n}`"] for n in TABLE2_K]
    return markdown_table(["row", "model scored", "experiment (seed s)", "overrides"], t1 + t2)
