"""The ``bench`` and ``bench-notes`` blocks: the benchmark table of ``metrics/bench.json`` and what
its details say."""

from __future__ import annotations

from pathlib import Path

from pipeline.formatting import markdown_table
from tools.project.docs.common import field_of, read_json

UNITS = (("_frames_per_s", "frames/s", 1), ("_GFLOP_per_s", "GFLOP/s", 1), ("_MB", "MB", 0),
         ("_s", "s", 2))


def figure(name: str, value: float) -> str:
    """``cache_frames_per_s`` 98.19 -> ``cache 98.2 frames/s``."""
    for suffix, unit, digits in UNITS:
        if name.endswith(suffix):
            return f"{name.removesuffix(suffix).replace('_', ' ')} {value:.{digits}f} {unit}"
    return f"{name.replace('_', ' ')} {value:.4g}"


def bench_rows(bench: dict) -> list[list[str]]:
    rows = []
    for name, b in field_of(bench, "metrics/bench.json", "benchmarks").items():
        if b.get("skipped"):
            rows.append([f"`{name}`", f"skipped ({b.get('reason', '')})", "", "-", "-", "-"])
            continue
        num, den = b["numerator"], b["denominator"]
        met = "-" if b["met"] is None else ("yes" if b["met"] else "**no**")
        rows.append([f"`{name}`", figure(num, b["figures"][num]), figure(den, b["figures"][den]),
                     f"{b['ratio']:.4g}", b["target"] or "reported", met])
    return rows


def bench_block(root: Path) -> str:
    bench = read_json(root, "metrics/bench.json", "make bench")
    m, s = field_of(bench, "metrics/bench.json", "machine"), bench.get("setup", {})
    where = (f"{m.get('processor') or 'unknown CPU'}, {m.get('cpus_usable')} usable cores, "
             f"GPU {m.get('gpu') or 'none'}, device {s.get('device', 'cpu')}, torch "
             f"{m.get('torch')}; backbone {s.get('backbone')} at "
             f"{'x'.join(map(str, s.get('input', [])))}")
    quick = " **`--quick`: a smoke test, the figures mean little.**" if bench.get("quick") else ""
    return (f"From `metrics/bench.json`: {where}; {bench.get('total_s', 0) / 60:.1f} min in all."
            f"{quick}\n\n" + markdown_table(
                ["row", "numerator", "denominator", "ratio", "target", "met"], bench_rows(bench)))


def bench_notes_block(root: Path) -> str:
    b = field_of(read_json(root, "metrics/bench.json", "make bench"), "metrics/bench.json",
                 "benchmarks")
    ok = {name: row for name, row in b.items() if not row.get("skipped")}
    notes = []
    if c := ok.get("cache_throughput"):
        runs = c.get("backbone_runs_frames_per_s", [])
        if runs:
            slowest = c["figures"]["cache_frames_per_s"] / min(runs)
            notes.append(f"`cache_throughput`: the bare backbone's timings spread from "
                         f"{min(runs):.1f} to {max(runs):.1f} frames/s and the row divides by the "
                         f"best of them; against the slowest it would be {slowest:.2f}.")
        if "cache_frames_per_s_no_workers" in c:
            notes.append(f"Caching without loader workers: "
                         f"{c['cache_frames_per_s_no_workers']:.1f} frames/s, against "
                         f"{c['figures']['cache_frames_per_s']:.1f} with "
                         f"{c.get('num_workers')} workers.")
    if (e := ok.get("eval_official_vs_sort")):
        notes.append(f"`evaluate_rank` spends {1 / e['ratio']:.2f} of its time in the per-row "
                     "argsort that bounds every ranking evaluator (official protocol).")
    for suffix, what in (("", "the default run's backbone"), ("_paper", "ResNet-50 at 256x128")):
        if (a := ok.get(f"attention_cached_epoch{suffix}")):
            notes.append(f"With {what}, an attention epoch on the cache is {a['ratio']:.1f} "
                         "times as fast as with the backbone in the loop.")
    if (x := ok.get("experiment_overhead")):
        notes.append(f"`dvc exp run -S model.K=8` takes {x['ratio']:.2f} of a full `dvc repro` "
                     "of the tiny configuration.")
    return "\n".join(f"- {n}" for n in notes) or "- (no rows to comment on)"
