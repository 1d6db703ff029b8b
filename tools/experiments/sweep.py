"""The attention sweep (tools.experiments.cells.SWEEP) collected into ``metrics/sweep.json``: for
the baseline commit and each ``sw-<key>`` experiment of it, the settings the paper leaves open, the
training maps at the end of phase 1 (mean entropy and share of entries below 1e-6 over the last
epoch, from the DVCLive summary of the attention stage's spatial phase) and the test figures of
the SpaAtn+Q model (``spatial``) and the temporal model (rank-1 and mAP with their 95 percent
intervals, map entropy, overlap, mass on the person, parts covered; the weight-visibility
correlation of the temporal model). The report
(``make report``) prints it; the file keeps the commit the sweep ran on, so that the table stays
true when the defaults it chose become a later commit.

    python -m tools.experiments run sweep       # queue and run the rows this commit lacks
    python -m tools.experiments.sweep --out metrics/sweep.json

The first video set and split of the params are read (the sweep runs on the default cache).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import sys
from collections.abc import Sequence
from pathlib import Path

import yaml

from pipeline.curves import SATURATION_WARNING
from pipeline.files import write_json
from pipeline.formatting import corr, num, pct_of, text_table
from pipeline.params import DataParams, Params, dotted, run_name, to_dict
from pipeline.stage_inputs import live_folders
from tools.experiments.cells import SWEEP, sweep_cells
from tools.experiments.show import ReportError, collect_sources, load_show_json, run_exp_show
from tools.experiments.sources import EVAL_FILE, Reader, commit_of, git_head, git_show

LIVE_SUMMARY = f"metrics/live/{live_folders()['attention spatial']}/metrics.json"
# experiments made before the curves moved to DVCLive (the sweep of commit 212483c) kept them as
# a CSV of the steps, read when their revision has no DVCLive summary
LEGACY_CURVE = "metrics/plots/loss/attention/{run}/spatial.csv"
# the settings of a row, read from its params (the key, the column name)
SETTINGS = (
    ("loss.diversity", "regulariser"),
    ("loss.diversity_weight", "coefficient"),
    ("loss.diversity_scale", "scale"),
    ("loss.diversity_warmup_epochs", "warm-up"),
    ("model.score_init", "w'_k start"),
    ("attention.spatial.lr", "lr"),
)
# the paper-literal setting of each: pipeline.params' defaults (a key missing from a row's params)
SETTING_DEFAULTS = {key: dotted(to_dict(Params()), key) for key, _ in SETTINGS}
TEST_STATS = ("overlap", "entropy", "person", "parts_covered")
MODELS = ("spatial", "temporal")


def training_maps(read: Reader, rev: str, run: str) -> dict[str, float] | None:
    """Mean map entropy and saturated share of phase 1's last epoch at revision ``rev`` (None
    when the phase logged no maps)."""
    try:
        summary = json.loads(read(rev, LIVE_SUMMARY.format(run=run)))
    except FileNotFoundError as missing:
        try:
            return final_epoch(read(rev, LEGACY_CURVE.format(run=run)))
        except FileNotFoundError:
            raise missing from None  # name the file a current experiment has
    means = summary.get("mean", {})
    if "map_entropy" not in means:
        return None
    return {"entropy": float(means["map_entropy"]), "saturated": float(means["map_saturated"])}


def final_epoch(text: str) -> dict[str, float] | None:
    """Mean map entropy and saturated share of the last epoch of a legacy loss curve CSV (None
    when the curve has no map columns)."""
    rows = list(csv.DictReader(io.StringIO(text)))
    if not rows or "map_entropy" not in rows[0]:
        return None
    last = [r for r in rows if r["epoch"] == rows[-1]["epoch"]]
    return {key: sum(float(r[column]) for r in last) / len(last)
            for key, column in (("entropy", "map_entropy"), ("saturated", "map_saturated"))}


def collect(show: list[dict], head: str | None, read: Reader) -> dict:
    """The sweep's rows from a ``dvc exp show --json`` output; a row whose experiment is missing
    or unreadable keeps its label and says why (``problem``)."""
    sources = collect_sources(show, head)
    params = sources.baseline.params or {}
    dataset = (dotted(params, "data.video") or DataParams().video)[0]
    split = (dotted(params, "data.splits") or DataParams().splits)[0]
    run = run_name(dataset, split)
    rows = []
    for cell in sweep_cells(int(dotted(params, "attention.seed") or 0)):
        row: dict = {"label": cell.label, "experiment": cell.experiment or "baseline commit"}
        source = sources.get(cell.experiment)
        if source is None or source.problem or source.rev is None:
            row["problem"] = (source.problem if source else None) or "not run"
            rows.append(row)
            continue
        stale = [f"its params have {key}={dotted(source.params, key)}, expected {wanted}"
                 for key, wanted in cell.overrides
                 if dotted(source.params, key) not in (None, yaml.safe_load(wanted))]
        if stale:
            row["problem"] = stale[0]
            rows.append(row)
            continue
        row["settings"] = {key: _setting(source.params or {}, key) for key, _ in SETTINGS}
        try:
            evaluation = json.loads(read(source.rev, EVAL_FILE.format(run=run)))
            row["training"] = training_maps(read, source.rev, run)
            for model in MODELS:
                row[model] = _figures(evaluation, model)
        except (FileNotFoundError, json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            row = {**{k: row[k] for k in ("label", "experiment", "settings")},
                   "problem": f"{type(err).__name__}: {err}"
                   if not isinstance(err, FileNotFoundError) else str(err)}
        rows.append(row)
    return {"commit": sources.commit, "dataset": dataset, "split": split,
            "rows": rows, "matched": matched_overlap(rows)}


def literal_except(settings: dict, *keys: str) -> bool:
    """Whether every open setting but ``keys`` is at the paper-literal default."""
    return all(settings[k] == SETTING_DEFAULTS[k] for k in SETTING_DEFAULTS if k not in keys)


def choose(sweep: dict) -> dict | None:
    """The rule that sets the default coefficient, from the training maps only (never the test
    figures): among the Q rows that differ from the paper-literal setting in the coefficient
    alone, the largest coefficient whose phase-1 training maps end with less than
    SATURATION_WARNING of their entries below 1e-6 (maps the identity loss can still move); None
    when no such row was run. The strongest regulariser that does not freeze the maps."""
    candidates = [row for row in sweep["rows"]
                  if not row.get("problem") and row.get("training")
                  and row["settings"]["loss.diversity"] == "hellinger"
                  and literal_except(row["settings"], "loss.diversity_weight")
                  and row["training"]["saturated"] < SATURATION_WARNING]
    return max(candidates, key=lambda r: r["settings"]["loss.diversity_weight"], default=None)


def _figures(evaluation: dict, model: str) -> dict:
    """A model's official rank-1 and mAP with intervals and its map figures (the temporal
    model's: with the weight-visibility correlation) from an evaluate output."""
    official = evaluation["models"][model]["official"]
    maps = evaluation.get("attention", {}).get(model, {})
    extra = ("visibility_corr", "visibility_corr_lo", "visibility_corr_hi")
    return {**{k: official.get(k) for k in ("rank1", "rank1_lo", "rank1_hi", "mAP", "mAP_lo",
                                             "mAP_hi")},
            **{k: maps.get(k) for k in TEST_STATS},
            **({k: maps.get(k) for k in extra} if model == "temporal" else {})}


def _setting(params: dict, key: str):
    value = dotted(params, key)
    return SETTING_DEFAULTS[key] if value is None else value


def matched_overlap(rows: Sequence[dict]) -> list[dict]:
    """Q against Q' where both reach the same overlap: for each Q row (coefficient rows: every
    other setting at its default), the entropy of Q' at that row's test overlap, interpolated
    linearly in log overlap between the two Q' coefficient rows around it (none outside their
    range). Entropy and overlap of the SpaAtn+Q model."""
    def curve(kind: str) -> list[tuple[float, float, float]]:
        points = []
        for row in rows:
            s, m = row.get("settings"), row.get("spatial")
            if (not s or not m or m.get("overlap") is None or m.get("entropy") is None
                    or s["loss.diversity"] != kind):
                continue
            if not literal_except(s, "loss.diversity", "loss.diversity_weight"):
                continue
            points.append((s["loss.diversity_weight"], m["overlap"], m["entropy"]))
        return sorted(points, key=lambda p: p[1])

    sparse = curve("sparse")
    out = []
    for weight, overlap, entropy in curve("hellinger"):
        below = [p for p in sparse if p[1] <= overlap]
        above = [p for p in sparse if p[1] >= overlap]
        if not below or not above or overlap <= 0:
            continue
        lo, hi = below[-1], above[0]
        if hi[1] == lo[1] or lo[1] <= 0:
            other = lo[2]
        else:
            t = (math.log(overlap) - math.log(lo[1])) / (math.log(hi[1]) - math.log(lo[1]))
            other = lo[2] + t * (hi[2] - lo[2])
        out.append({"coefficient": weight, "overlap": overlap, "entropy_q": entropy,
                    "entropy_sparse": other, "difference": entropy - other,
                    "between": [lo[0], hi[0]]})
    return out


# --- rendering ------------------------------------------------------------------------------------


def _settings_cell(settings: dict) -> str:
    kind = {"hellinger": "Q", "sparse": "Q'", "none": "none"}[settings["loss.diversity"]]
    parts = [kind]
    if kind != "none":
        parts.append(f"x{settings['loss.diversity_weight']:g}")
        if settings["loss.diversity_scale"] != "sum":
            parts.append(f"/{settings['loss.diversity_scale']}")
        if settings["loss.diversity_warmup_epochs"]:
            parts.append(f"warm-up {settings['loss.diversity_warmup_epochs']}")
    if settings["model.score_init"] != "uniform":
        parts.append(f"w'_k {settings['model.score_init']}")
    parts.append(f"lr {settings['attention.spatial.lr']:g}")
    return ", ".join(parts)


SWEEP_HEADER = ("row", "setting", "train entropy", "train saturated", "entropy", "overlap",
                "person", "parts", "SpaAtn+Q rank-1 [95%]", "SpaAtn+Q mAP [95%]",
                "+TemAtn rank-1 [95%]", "+TemAtn mAP [95%]", "r(weight, visibility) [95%]")


def sweep_rows(sweep: dict) -> list[list[str]]:
    """One line per row: settings, training maps, then the test figures."""
    lines = []
    for row in sweep["rows"]:
        if row.get("problem"):
            lines.append([row["label"], f"missing: {row['problem']}", *[""] * 11])
            continue
        train = row.get("training") or {}
        s, t = row["spatial"], row["temporal"]
        lines.append([row["label"], _settings_cell(row["settings"]), num(train.get("entropy")),
                      num(train.get("saturated"), ".2f"), num(s["entropy"]), num(s["overlap"]),
                      num(s["person"]), num(s["parts_covered"], ""), pct_of(s, "rank1"),
                      pct_of(s, "mAP"), pct_of(t, "rank1"), pct_of(t, "mAP"),
                      corr(t.get("visibility_corr"), t.get("visibility_corr_lo"),
                           t.get("visibility_corr_hi"))])
    return lines


def choice_line(sweep: dict) -> str:
    """What ``choose`` picks, said with the figures it used."""
    row = choose(sweep)
    if row is None:
        return (f"No Q row that changes only the coefficient ends phase 1 with less than "
                f"{SATURATION_WARNING:g} of its training maps' entries saturated: the rule picks "
                f"nothing.")
    return (f"The rule for the default (training maps only: the largest coefficient of Q, every "
            f"other open setting as the paper reads, whose phase-1 training maps end with less "
            f"than {SATURATION_WARNING:g} of their entries below 1e-6) picks "
            f"\"{row['label']}\" "
            f"(coefficient {row['settings']['loss.diversity_weight']:g}; saturated "
            f"{row['training']['saturated']:.2f}, training entropy "
            f"{row['training']['entropy']:.3f} nats).")


def matched_lines(sweep: dict) -> list[str]:
    out = []
    for m in sweep.get("matched", []):
        out.append(f"- Q x{m['coefficient']:g}: overlap {m['overlap']:.3f}, entropy "
                   f"{m['entropy_q']:.3f} nats; Q' at the same overlap (between its coefficients "
                   f"{m['between'][0]:g} and {m['between'][1]:g}): {m['entropy_sparse']:.3f}; "
                   f"Q broader by {m['difference']:+.3f} nats")
    return out


def main(argv: list[str] | None = None, read: Reader = git_show) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("metrics/sweep.json"))
    parser.add_argument("--show-json", type=Path,
                        help="a saved `dvc exp show --json` output (default: run it)")
    parser.add_argument("--rev", help="baseline commit of the sweep (default: HEAD)")
    args = parser.parse_args(argv)
    try:
        if args.show_json is not None:
            show, head = load_show_json(args.show_json), args.rev
        else:  # the experiments of --rev, as the report reads them
            head = commit_of(args.rev, "--rev") if args.rev else git_head("HEAD")
            show = run_exp_show(head if args.rev else None)
        sweep = collect(show, head, read)
    except ReportError as err:
        raise SystemExit(f"error: {err}") from None
    write_json(args.out, sweep)
    print(text_table(list(SWEEP_HEADER), sweep_rows(sweep)))
    print("\n".join(matched_lines(sweep)))
    print(choice_line(sweep))
    missing = [r["experiment"] for r in sweep["rows"] if r.get("problem")]
    if missing:
        print(f"missing: {', '.join(missing)} (`python -m tools.experiments run sweep`)",
              file=sys.stderr)
    print(f"wrote {args.out} ({len(SWEEP) + 1} rows, commit {sweep['commit'][:12]})")


if __name__ == "__main__":
    main()
