"""The ``timings`` block: how long each stage of the last run took, on which CPU, and the share of
a full run that an experiment on the attention heads (``-S model.K=8``) re-runs. Every stage DVC
runs writes its own record (``pipeline.stages.common.record_time``, at ``timing_path``), an output
of that stage in dvc.yaml; the stages read are those of ``dvc.lock``, so each time shown is that
of the run that made the outputs the lock records."""

from __future__ import annotations

from pathlib import Path

from pipeline.formatting import markdown_table
from pipeline.stage_inputs import rerun_by, stages
from pipeline.stages.check import locked_stages
from pipeline.stages.common import TIMINGS, timing_path
from tools.project.docs.common import NotProduced, field_of, read_json

LOCK = "dvc.lock"
ORDER = tuple(stages())  # dvc.yaml's, as they run
# what model.K re-runs (union_heads: under per_set, in a second)
HEADS_ONLY = tuple(rerun_by("model.K"))


def minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{seconds % 60:04.1f}s"


def timings_block(root: Path) -> str:
    known = sorted((s for s in locked_stages(root / LOCK) if s.split("@")[0] in ORDER),
                   key=lambda s: (ORDER.index(s.split("@")[0]), s))
    if not known:
        raise NotProduced(LOCK, "make repro")
    paths = {s: timing_path(s).as_posix() for s in known}
    records = {s: read_json(root, paths[s], "make repro") for s in known}
    seconds = {s: float(field_of(records[s], paths[s], "seconds")) for s in known}
    total = sum(seconds.values())
    heads = sum(v for s, v in seconds.items() if s.split("@")[0] in HEADS_ONLY)
    rows = [[f"`{s}`", minutes(seconds[s]), f"{100 * seconds[s] / total:.0f}%"] for s in known]
    rows.append(["all stages", minutes(total), "100%"])
    machines = dict.fromkeys(f"{(r.get('machine') or {}).get('cpu', 'unknown CPU')}, "
                             f"{(r.get('machine') or {}).get('cores', '?')} cores"
                             for r in records.values())
    return (f"From `{TIMINGS.as_posix()}/` (each stage's wall time, imports included, recorded "
            f"by the run that made the outputs `{LOCK}` records; {'; '.join(machines)}):\n\n"
            + markdown_table(["stage", "time", "share"], rows)
            + f"\n\nAn experiment on the attention heads (`dvc exp run -S model.K=8`) re-runs "
              f"`{'`, `'.join(HEADS_ONLY)}`: {minutes(heads)}, {heads / total:.2f} of the full "
              "run.")
