"""The ``timings`` block: how long each stage of the last run took (``metrics/timings.json``,
which every stage writes when DVC runs it: ``pipeline.stages.common.record_time``), on which CPU,
and the share of a full run that an experiment on the attention heads (``-S model.K=8``) re-runs."""

from __future__ import annotations

from pathlib import Path

from pipeline.formatting import markdown_table
from tools.docs.common import field_of, read_json

RELATIVE = "metrics/timings.json"
ORDER = ("check", "download", "index", "pretrain", "finetune", "cache", "attention", "joint",
         "evaluate", "summary")  # dvc.yaml's stages, in the order they run
HEADS_ONLY = ("check", "attention", "joint", "evaluate", "summary")  # what model.K re-runs


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{seconds % 60:04.1f}s"


def timings_block(root: Path) -> str:
    timings = read_json(root, RELATIVE, "make repro")
    stages = field_of(timings, RELATIVE, "stages")
    known = [s for s in stages if s.split("@")[0] in ORDER]
    known.sort(key=lambda s: (ORDER.index(s.split("@")[0]), s))
    total = sum(stages[s]["seconds"] for s in known)
    heads = sum(stages[s]["seconds"] for s in known if s.split("@")[0] in HEADS_ONLY)
    rows = [[f"`{s}`", minutes(stages[s]["seconds"]), f"{100 * stages[s]['seconds'] / total:.0f}%"]
            for s in known]
    rows.append(["all stages", minutes(total), "100%"])
    machine = timings.get("machine", {})
    return (f"From `{RELATIVE}` (each stage's wall time, imports included, as its last run "
            f"recorded it; {machine.get('cpu', 'unknown CPU')}, {machine.get('cores', '?')} "
            f"cores):\n\n" + markdown_table(["stage", "time", "share"], rows)
            + f"\n\nAn experiment on the attention heads (`dvc exp run -S model.K=8`) re-runs "
              f"`{'`, `'.join(HEADS_ONLY)}`: {minutes(heads)}, {heads / total:.2f} of the full "
              "run.")
