"""The ``report`` block (Tables 1 and 2 of ``metrics/report.md`` and the steps of Table 1), and the
``paper`` and ``rows`` blocks (the paper's numbers and each row's experiment, from
``tools.experiments``)."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.params import load_params
from tools.docs.common import DocsError, NotProduced, table
from tools.experiments import PAPER_TABLE1, PAPER_TABLE2, TABLE1, TABLE2_K, TABLE2_MODEL


def parse_report(text: str, relative: str) -> dict[tuple[str, str], dict[str, list[dict]]]:
    """``{(dataset, protocol): {"Table 1": [row dict], "Table 2": [...]}}`` of a report written
    by ``tools.report``."""
    sections: dict[tuple[str, str], dict[str, list[dict]]] = {}
    current, name, header = None, None, None
    for line in text.splitlines():
        if m := re.match(r"^## (.+), (\w+) protocol$", line):
            current, name = sections.setdefault((m[1], m[2]), {}), None
        elif line.startswith("## "):
            current = name = None
        elif m := re.match(r"^### (Table \d|Where the heads look)$", line):
            name, header = (m[1], None) if current is not None else (None, None)
        elif line.startswith("### The paper's claims"):
            name = CLAIMS if current is not None else None
        elif line.startswith("### "):
            name = None
        elif name == CLAIMS and line.startswith("- "):
            current.setdefault(CLAIMS, []).append({"line": line})
        elif name and name != CLAIMS and line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if header is None:
                header = cells
            elif not set("".join(cells)) <= set("-: "):
                current.setdefault(name, []).append(dict(zip(header, cells, strict=True)))
    if not any(tables.get("Table 1") for tables in sections.values()):
        raise DocsError(f"{relative}: expected '## <set>, <protocol> protocol' sections with a "
                        "'### Table 1' table, as tools.report writes them")
    return sections


CLAIMS = "claims"  # the bullet lines of a section's "### The paper's claims, as measured"


def mean(cell: str) -> float | None:
    m = re.match(r"^(-?\d+(?:\.\d+)?)", cell)
    return float(m[1]) if m else None


STEPS = (("the diversity term Q", "SpaAtn+Q", "SpaAtn"),
         ("Q rather than Q'", "SpaAtn+Q", "SpaAtn+Q'"),
         ("max pooling over the frames", "SpaAtn+Q+MaxPool", "SpaAtn+Q"),
         ("temporal attention over average pooling", "SpaAtn+Q+TemAtn", "SpaAtn+Q"),
         ("temporal attention over max pooling", "SpaAtn+Q+TemAtn", "SpaAtn+Q+MaxPool"),
         ("end-to-end fine-tuning (Ind)", "SpaAtn+Q+TemAtn+Ind", "SpaAtn+Q+TemAtn"),
         ("the full model over the Baseline", "SpaAtn+Q+TemAtn+Ind", "Baseline"))
KEEP = ("row", "K", "rank-1 (%)", "mAP (%)", "map overlap", "map entropy (nats)")


REPORT = "metrics/report.md"


def read_report(root: Path) -> tuple[str, dict, re.Match | None, re.Match | None]:
    """``metrics/report.md``: its text, its sections (``parse_report``), and the matches of its
    baseline commit and of its Table 1 seeds (None where absent)."""
    if not (root / REPORT).exists():
        raise NotProduced(REPORT, "make ablations, make ksweep (or make report)")
    text = (root / REPORT).read_text()
    return (text, parse_report(text, REPORT),
            re.search(r"baseline commit\s+`([0-9a-f]{7,40})`", text),
            re.search(r"Table 1:\s+seed\(s\)\s+([\d, ]+)\.", text))


def first_protocols(sections: dict) -> list[tuple[tuple[str, str], dict]]:
    """The sections of the first protocol of each set (official unless left out)."""
    return [((dataset, protocol), tables) for (dataset, protocol), tables in sections.items()
            if protocol == next(p for d, p in sections if d == dataset)]


def report_block(root: Path) -> str:
    text, sections, commit, seeds = read_report(root)
    origin = "; ".join(x for x in (commit and f"baseline commit `{commit[1][:7]}`",
                                   seeds and f"Table 1 over seeds {seeds[1]}") if x)
    parts = [f"From `{REPORT}` ({origin or 'see the report'}). Rank-1 and mAP in percent, "
             "mean ± std; the other protocol, the experiments behind each cell and the valid "
             "queries are in the report."]
    for (dataset, protocol), tables in first_protocols(sections):
        for name in ("Table 1", "Table 2"):
            rows = tables.get(name, [])
            if not rows:
                continue
            keep = [h for h in rows[0] if h in KEEP or (  # a paper column of a paper set
                h.startswith("paper") and any(not r[h].startswith("n/a") for r in rows))]
            parts.append(f"**{name}, {dataset}, {protocol} protocol**\n\n"
                         + table(keep, [[r[h] for h in keep] for r in rows]))
        by_row = {r["row"]: r for r in tables.get("Table 1", [])}
        steps = []
        for what, better, base in STEPS:
            if better in by_row and base in by_row:
                deltas = [(mean(by_row[better][c]), mean(by_row[base][c]))
                          for c in ("rank-1 (%)", "mAP (%)")]
                if all(None not in d for d in deltas):
                    (r1, r0), (m1, m0) = deltas
                    steps.append(f"- {what} ({better} against {base}): {r1 - r0:+.1f} rank-1, "
                                 f"{m1 - m0:+.1f} mAP")
        if steps:
            parts.append(f"What each step of Table 1 changes on {dataset} (difference of the "
                         "means; compare it with the ± spreads above):\n\n" + "\n".join(steps))
    if "## Missing results" in text and "None: every row was found" not in text:
        parts.append("Some cells are missing: the end of the report says why.")
    return "\n\n".join(parts)


def claims_block(root: Path) -> str:
    """The README's measured claims: for the first protocol of each set of ``metrics/report.md``,
    the paper's claims as the report measured them (where the heads look: the report, and the
    README's results block)."""
    _, sections, commit, seeds = read_report(root)
    origin = f"`{REPORT}`" + (f", baseline commit `{commit[1][:7]}`" if commit else "")
    parts = []
    for (dataset, protocol), tables in first_protocols(sections):
        claims = [c["line"] for c in tables.get(CLAIMS, [])]
        if claims:
            parts.append(f"**{dataset}, {protocol} protocol** (from {origin}; rank-1, mean over "
                         f"Table 1's seeds {seeds[1] if seeds else '?'}; noise: the larger "
                         "half-width of the two rows' 95 percent intervals):\n\n"
                         + "\n".join(claims))
    if not parts:
        return f"`{REPORT}` measures no claim yet: run `make ablations`."
    return "\n\n".join(parts)


def paper_block(root: Path) -> str:
    sets = [("prid2011", "PRID2011"), ("ilidsvid", "iLIDS-VID"), ("mars", "MARS")]
    t1 = table(["Table 1 row", *(n for _, n in sets), "MARS mAP"],
               [[row, *(f"{v[s]:.1f}" for s, _ in sets), f"{v['mars_mAP']:.1f}"]
                for row, v in PAPER_TABLE1.items()])
    t2 = table(["Table 2", *(n for _, n in sets)],
               [[f"K = {k}", *(f"{v[s]:.1f}" for s, _ in sets)] for k, v in PAPER_TABLE2.items()])
    return ("From `tools/experiments.py` (`PAPER_TABLE1`, `PAPER_TABLE2`), rank-1 in percent:"
            f"\n\n{t1}\n\n{t2}")


def rows_block(root: Path) -> str:
    k = load_params(root / "params.yaml").model.K
    t1 = [[row.label, f"`{row.model}`",
           (f"`t1-s<s>-{row.key}`" if row.overrides else
            "the baseline commit at its own seed, `t1-s<s>` at another"),
           " ".join(f"`-S {o}={v}`" for o, v in row.overrides.items()) or "-"] for row in TABLE1]
    t2 = [[f"K = {n}", f"`{TABLE2_MODEL}`",
           "the baseline commit" if n == k else f"`t2-k{n}`",
           "-" if n == k else f"`-S model.K={n}`"] for n in TABLE2_K]
    return table(["row", "model scored", "experiment (seed s)", "overrides"], t1 + t2)
