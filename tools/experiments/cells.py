"""The paper's experiments as DVC experiments: every row of Table 1 and of Table 2 is a params
setting of the same pipeline, run as a DVC experiment so that only the stages it affects
re-run.

Rows the default pipeline already evaluates (Baseline, SpaAtn+Q, SpaAtn+Q+TemAtn, +Ind at the
params' own seed; Table 2 at the params' own K) are read from the baseline commit, never re-run.
The others are queued under stable names (``t1-s<seed>-<row>``, ``t1-s<seed>`` for the default
pipeline at another seed, ``t2-k<K>``). Table 1's seeds are values of ``attention.seed`` (SEED_KEY):
another seed re-trains the attention heads and the joint stage on the same cached CNN features,
so no seed re-runs a CNN stage and Baseline (the fine-tuned CNN) is the same model at every seed;
the spread over seeds is the heads' training noise. The CNN-seed rows (``cnnseeds``) vary the
top-level ``seed`` (CNN_SEED_KEY) instead: the default pipeline trained again from pretraining on
(``cs-s<seed>``), whose spread is the whole pipeline's training noise. With ``--jobs 1`` (a CPU:
two at a time would share the same cores) they run one after the other, each with ``dvc exp run
--temp``; with ``--jobs J`` > 1 (one per GPU) they are queued and run with ``dvc exp run
--run-all --jobs J``. An experiment that already exists for the current commit is not run again,
so an interrupted ``make ablations`` picks up where it stopped.

One at a time they run in order: each seed's default pipeline, then that seed's ablation rows. A
Table 1 experiment re-runs the attention, joint, evaluate and summary stages only (its CNN
stages' inputs are the baseline commit's).

    python -m tools.experiments run table1 --seeds 0 1 2 --jobs 1
    python -m tools.experiments run table2 --jobs 1
    python -m tools.experiments run cnnseeds --seeds 0 1 2 --jobs 1
    python -m tools.experiments run schedules --seeds 0 1 2 --jobs 1
    python -m tools.experiments list table1 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pipeline.errors import ParamsError
from pipeline.names import ROW
from pipeline.params import MAX_SEED, SCHEDULES, Params, load_params
from tools.experiments.show import dvc, existing_experiments
from tools.shell import run, user_env

log = logging.getLogger("experiments")


@dataclass(frozen=True)
class Row:
    """One row of a paper table: the model (of the four the evaluate stage scores) whose metrics
    the row reports, under the params overrides that define it (empty: the default pipeline)."""

    label: str
    model: str
    key: str  # short name used in experiment names
    overrides: dict[str, str] = field(default_factory=dict)


TABLE1 = (
    Row(ROW["baseline"], "baseline", "baseline"),
    # the controls of the heads, on the heads' own grid (model.maps): the grid's average at the
    # heads' output width, and the heads with uniform maps; both read as phase 1 (SpaAtn+Q)
    Row("Width control", "spatial", "width", {"model.maps": "average"}),
    Row("Uniform maps", "spatial", "uniform", {"model.maps": "uniform"}),
    Row("SpaAtn", "spatial", "nodiv", {"loss.diversity": "none"}),
    Row("SpaAtn+Q'", "spatial", "sparse", {"loss.diversity": "sparse"}),
    Row(ROW["spatial"], "spatial", "q"),
    Row("SpaAtn+Q+MaxPool", "temporal", "maxpool", {"model.temporal_pooling": "max"}),
    Row(ROW["temporal"], "temporal", "temporal"),
    Row(ROW["joint"], "joint", "joint"),
)
TABLE2_K = (1, 2, 4, 6, 8)


# The attention settings the paper leaves open (docs/method.md), swept on the cache: the diversity
# coefficient for Q and Q' (the same values, so that each can be compared at its own best and
# where both reach the same overlap), Q normalised by its K(K-1) pairs, the start of w'_k, a
# warm-up of the coefficient, the heads' learning rate, and no regulariser. Rows are experiments
# ``sw-<key>`` of the baseline commit (whose own row is the params' setting);
# tools.experiments.sweep collects them into metrics/sweep.json and the report's sweep table.
_LR = {"attention.spatial.lr": "0.01", "attention.temporal.lr": "0.01"}
SWEEP = (
    Row("Q, coefficient 1", "spatial", "q-w1", {"loss.diversity_weight": "1.0"}),
    Row("Q, coefficient 0.1", "spatial", "q-w0.1", {"loss.diversity_weight": "0.1"}),
    Row("Q', coefficient 0.1", "spatial", "p-w0.1",
        {"loss.diversity": "sparse", "loss.diversity_weight": "0.1"}),
    Row("Q, coefficient 0.01", "spatial", "q-w0.01", {"loss.diversity_weight": "0.01"}),
    Row("Q', coefficient 0.01", "spatial", "p-w0.01",
        {"loss.diversity": "sparse", "loss.diversity_weight": "0.01"}),
    Row("Q, coefficient 0.003", "spatial", "q-w0.003", {"loss.diversity_weight": "0.003"}),
    Row("Q', coefficient 1", "spatial", "p-w1", {"loss.diversity": "sparse",
                                                 "loss.diversity_weight": "1.0"}),
    Row("Q, coefficient 0.03", "spatial", "q-w0.03", {"loss.diversity_weight": "0.03"}),
    Row("Q', coefficient 0.03", "spatial", "p-w0.03",
        {"loss.diversity": "sparse", "loss.diversity_weight": "0.03"}),
    Row("Q over K(K-1) pairs", "spatial", "q-pairs", {"loss.diversity_scale": "pairs"}),
    Row("Q, w'_k from zero", "spatial", "q-zero", {"model.score_init": "zero"}),
    Row("Q, warm-up 5 epochs", "spatial", "q-warm5", {"loss.diversity_warmup_epochs": "5"}),
    Row("Q, heads' lr 0.01", "spatial", "q-lr0.01", dict(_LR)),
    Row("Q, coefficient 0.01, heads' lr 0.01", "spatial", "q-w0.01-lr0.01",
        {"loss.diversity_weight": "0.01", **_LR}),
    Row("no regulariser", "spatial", "none", {"loss.diversity": "none"}),
)
SEED_KEY = "attention.seed"  # what Table 1's seeds vary (the heads' training, not the CNN's)
# What the CNN-seed rows vary: the seed of every training stage (pretrain, finetune, the heads),
# so each seed re-runs the whole pipeline after index (the synthetic set keeps synthetic.seed)
CNN_SEED_KEY = "seed"
CNN_SEEDS = (0, 1, 2)
# Table 1 under both schedules (docs/method.md, "Ind, and the two schedules"): the default
# pipeline's rows on the two generated sets, per set and across sets, at each heads' seed, as
# experiments ``sc-<schedule>-s<seed>`` (none from the baseline commit, which trains one set)
SCHEDULE_SETS = ("synthetic", "synthetic2")
# params value -> the part of its experiments' names ("per", "across")
SCHEDULE_SHORT = {schedule: schedule.split("_")[0] for schedule in SCHEDULES}
# written by tools.experiments.report
REPORT_OUTPUTS = ("metrics/report.json", "metrics/report.md", "metrics/plots/table1.png")
TABLE2_MODEL = "temporal"  # Table 2 varies K in SpaAtn+Q+TemAtn (its K = 6 row is Table 1's)
# The experiments' names of each kind (a Table 1 row that changes something adds "-<its key>");
# the report finds the seeds that were run from them (seeds_named)
NAMES = {"table1": "t1-s{seed}", "table2": "t2-k{k}", "cnn": "cs-s{seed}",
         "schedule": "sc-{short}-s{seed}", "sweep": "sw-{key}"}

# The paper's numbers (REFERENCE section 1): rank-1 on PRID2011, iLIDS-VID, MARS, and MARS mAP.
PAPER_TABLE1 = {
    "Baseline": {"prid2011": 82.7, "ilidsvid": 61.2, "mars": 73.4, "mars_mAP": 58.1},
    "SpaAtn": {"prid2011": 84.2, "ilidsvid": 64.9, "mars": 74.5, "mars_mAP": 59.3},
    "SpaAtn+Q'": {"prid2011": 86.5, "ilidsvid": 64.5, "mars": 74.0, "mars_mAP": 58.2},
    "SpaAtn+Q": {"prid2011": 86.7, "ilidsvid": 68.6, "mars": 77.0, "mars_mAP": 60.9},
    "SpaAtn+Q+MaxPool": {"prid2011": 86.9, "ilidsvid": 68.2, "mars": 76.8, "mars_mAP": 60.5},
    "SpaAtn+Q+TemAtn": {"prid2011": 88.4, "ilidsvid": 69.7, "mars": 77.1, "mars_mAP": 61.2},
    "SpaAtn+Q+TemAtn+Ind": {"prid2011": 93.2, "ilidsvid": 80.2, "mars": 82.3, "mars_mAP": 65.8},
}
PAPER_TABLE2 = {
    1: {"prid2011": 86.2, "ilidsvid": 64.7, "mars": 76.0},
    2: {"prid2011": 83.4, "ilidsvid": 64.6, "mars": 75.7},
    4: {"prid2011": 86.9, "ilidsvid": 64.6, "mars": 77.2},
    6: {"prid2011": 88.4, "ilidsvid": 69.7, "mars": 77.1},
    8: {"prid2011": 88.0, "ilidsvid": 66.9, "mars": 76.7},
}


@dataclass(frozen=True)
class Cell:
    """Where one (row, seed) of a table comes from: ``experiment`` None is the baseline commit."""

    label: str
    model: str
    seed: int
    experiment: str | None
    overrides: tuple[tuple[str, str], ...]


def table1_cells(seeds: list[int], base_seed: int) -> list[Cell]:
    """Every (row, seed) of Table 1, in the order to run them: per seed, the default pipeline
    first, then the rows that change something."""
    cells = []
    for seed in seeds:
        seed_over = () if seed == base_seed else ((SEED_KEY, str(seed)),)
        name = NAMES["table1"].format(seed=seed)
        cells += [Cell(row.label, row.model, seed, None if seed == base_seed else name, seed_over)
                  for row in TABLE1 if not row.overrides]
        cells += [Cell(row.label, row.model, seed, f"{name}-{row.key}",
                       seed_over + tuple(row.overrides.items()))
                  for row in TABLE1 if row.overrides]
    return cells


def cnn_seed_cells(seeds: Sequence[int], base_seed: int, heads_seed: int) -> list[Cell]:
    """The rows of the default pipeline (Baseline, SpaAtn+Q, +TemAtn, +Ind) at each CNN seed:
    ``seed`` = the params' own (``base_seed``) is the baseline commit, any other the experiment
    ``cs-s<seed>`` (the whole pipeline trained again, CNN included). Every cell keeps the
    params' Table 1 seed (``heads_seed``, ``attention.seed``), which its results record."""
    return [Cell(row.label, row.model, heads_seed,
                 None if seed == base_seed else NAMES["cnn"].format(seed=seed),
                 () if seed == base_seed else ((CNN_SEED_KEY, str(seed)),))
            for seed in seeds for row in TABLE1 if not row.overrides]


def schedule_cells(seeds: Sequence[int]) -> list[Cell]:
    """The default pipeline's rows (Baseline, SpaAtn+Q, +TemAtn, +Ind) on SCHEDULE_SETS under
    each schedule at each heads' seed: per seed, one experiment per schedule; the per-set one
    first (its stages of the first set have the baseline commit's inputs: only the second set's
    run)."""
    sets = "[" + ",".join(SCHEDULE_SETS) + "]"
    return [Cell(row.label, row.model, seed, NAMES["schedule"].format(short=short, seed=seed),
                 (("schedule", schedule), ("data.video", sets), (SEED_KEY, str(seed))))
            for seed in seeds for schedule, short in SCHEDULE_SHORT.items()
            for row in TABLE1 if not row.overrides]


def seeds_named(names: Iterable[str], kind: str) -> set[int]:
    """The seeds of the experiments among ``names`` named as NAMES[kind] says (Table 1's with or
    without a row's key after it)."""
    pattern = re.escape(NAMES[kind]).replace(r"\{seed\}", r"(\d+)").replace(r"\{short\}", "[a-z]+")
    pattern += "(?:-|$)" if kind == "table1" else "$"
    return {int(m.group(1)) for name in names if (m := re.match(pattern, name))}


def schedule_of(cell: Cell) -> str | None:
    """The schedule a cell's overrides set (None: the params' own)."""
    return dict(cell.overrides).get("schedule")


def table2_cells(base_k: int, seed: int) -> list[Cell]:
    return [Cell(f"K = {k}", TABLE2_MODEL, seed,
                 None if k == base_k else NAMES["table2"].format(k=k),
                 () if k == base_k else (("model.K", str(k)),)) for k in TABLE2_K]


def sweep_cells(seed: int) -> list[Cell]:
    """The params' own setting (the baseline commit), then every row of SWEEP."""
    return [Cell("params.yaml", "spatial", seed, None, ()),
            *(Cell(row.label, row.model, seed, NAMES["sweep"].format(key=row.key),
                   tuple(row.overrides.items()))
              for row in SWEEP)]


# How the user gives each kind of seed: the make variable, then the option it fills
SEEDS_OPTION = {SEED_KEY: "SEEDS (--seeds)", CNN_SEED_KEY: "CNN_SEEDS (--seeds)"}


def checked_seeds(seeds: Sequence[int | str] | None, key: str, p: Params) -> list[int]:
    """``seeds`` (as typed, or ints) as values of ``key`` (SEED_KEY or CNN_SEED_KEY), [] for
    none. Refused up front, naming SEEDS_OPTION[key] and the range: a repeat (it would count
    twice) or a seed the check stage would refuse in every experiment it names."""
    seeds, option = list(seeds or ()), SEEDS_OPTION[key]
    # seed + attention.seed seeds the heads (Params.heads_seed): both share MAX_SEED
    other, other_key = (p.seed, CNN_SEED_KEY) if key == SEED_KEY else (p.attention.seed, SEED_KEY)
    top = MAX_SEED - other
    valid = f"integers >= 0 and <= {top}"
    if other:
        valid += f" ({other_key} is {other}, and seed + attention.seed must stay <= 2**64 - 1)"
    for seed in seeds:
        if not _is_seed(seed, top):
            raise ParamsError(f"{option}: expected values of {key}, {valid}, got {seed!r}")
    numbers = [int(seed) for seed in seeds]
    repeated = sorted({n for n in numbers if numbers.count(n) > 1})
    if repeated:
        raise ParamsError(f"{option}: expected each seed once, got {' '.join(map(str, numbers))} "
                          f"(repeats {', '.join(map(str, repeated))})")
    return numbers


def _is_seed(seed: int | str, top: int) -> bool:
    text = str(seed).strip()
    # ASCII digits only: no sign, point or exponent (and none of the digits int() refuses, ²)
    return text.isascii() and text.isdigit() and int(text) <= top


def cells_for(table: str, params_path: str, seeds: Sequence[int | str] | None) -> list[Cell]:
    p = load_params(params_path)
    if table == "cnnseeds":
        return cnn_seed_cells(checked_seeds(seeds, CNN_SEED_KEY, p) or CNN_SEEDS, p.seed,
                              p.attention.seed)
    if table == "sweep":
        return sweep_cells(p.attention.seed)
    if table == "schedules":
        return schedule_cells(checked_seeds(seeds, SEED_KEY, p) or [p.attention.seed])
    if table == "table1":
        return table1_cells(checked_seeds(seeds, SEED_KEY, p) or [p.attention.seed],
                            p.attention.seed)
    return table2_cells(p.model.K, p.attention.seed)


def to_queue(cells: list[Cell]) -> dict[str, tuple[tuple[str, str], ...]]:
    """Experiment name -> overrides, once each, in run order."""
    queue: dict[str, tuple[tuple[str, str], ...]] = {}
    for cell in cells:
        if cell.experiment is not None:
            queue.setdefault(cell.experiment, cell.overrides)
    return queue


# --- talking to DVC ------------------------------------------------------------------------------


def out_of_date(status: dict) -> list[str]:
    """The stages of a ``dvc status --json`` output that need running, leaving out those that
    are only ``always changed`` (the check stage runs at every repro and changes nothing)."""
    return [stage for stage, changes in status.items() if changes != ["always changed"]]


def run_experiments(queue: dict[str, tuple[tuple[str, str], ...]], jobs: int) -> None:
    """Run the experiments ``queue`` names. One at a time: each with ``dvc exp run --temp``, in
    a temporary copy of the workspace, in order (DVC's celery queue can hang after an experiment
    with no worker left: treeverse/dvc#10428); a failure is logged and the next one runs. With
    ``jobs`` > 1 (one per GPU): queued, then ``dvc exp run --run-all --jobs``."""
    def settings(overrides: tuple[tuple[str, str], ...]) -> list[str]:
        return [a for k, v in overrides for a in ("-S", f"{k}={v}")]

    def shown(overrides: tuple[tuple[str, str], ...]) -> str:
        return " ".join(f"{k}={v}" for k, v in overrides)

    if jobs == 1:
        for i, (name, overrides) in enumerate(queue.items(), 1):
            log.info("running %s (%d of %d): %s", name, i, len(queue), shown(overrides))
            try:
                dvc("exp", "run", "--temp", "-n", name, *settings(overrides), echo=True)
            except RuntimeError as err:
                log.error("%s failed: %s", name, err)
        return
    for name, overrides in queue.items():
        log.info("queueing %s: %s", name, shown(overrides))
        dvc("exp", "run", "--queue", "-n", name, *settings(overrides))
    log.info("running %d experiment(s) with %d worker(s); their logs are printed when the run "
             "ends (meanwhile: `dvc queue status`, `dvc queue logs <name>`; if the status shows "
             "queued experiments and no worker, `dvc queue start -j %d`)", len(queue), jobs, jobs)
    dvc("exp", "run", "--run-all", "--jobs", str(jobs), echo=True)


def run_table(table: str, params_path: str, seeds: Sequence[int | str] | None, jobs: int,
              only: list[str] | None = None) -> None:
    """Queue the table's experiments that this commit lacks (or just those named in ``only``),
    run them, and fail naming any that did not complete."""
    cells = cells_for(table, params_path, seeds)  # bad params or seeds: refused before dvc runs
    if out_of_date(json.loads(dvc("status", "--json") or "{}")):
        raise SystemExit("error: the pipeline is not up to date: run `make repro` and commit "
                         "dvc.lock and metrics/ first (experiments are based on that commit)")
    tracked = ("params.yaml", "dvc.yaml", "dvc.lock", "metrics")
    status = run(Path.cwd(), "git", "status", "--porcelain", "--", *tracked, env=user_env(),
                 stdout_only=True)
    dirty = "".join(line + "\n" for line in status.splitlines()
                    if line[3:] not in REPORT_OUTPUTS)  # the report is no input of the runs
    if dirty:
        raise SystemExit(f"error: uncommitted changes in {', '.join(tracked)}:\n{dirty}commit "
                         "them first: the report reads the baseline rows from the commit")
    done = existing_experiments(json.loads(dvc("exp", "show", "--json")))
    planned = to_queue(cells)
    unknown = sorted(set(only or ()) - set(planned))
    if unknown:
        raise SystemExit(f"error: --only {', '.join(unknown)}: not an experiment of {table} "
                         f"(those are: {', '.join(planned)})")
    queue = {name: over for name, over in planned.items()
             if name not in done and (not only or name in only)}
    skipped = sorted(set(planned) & done)
    if skipped:
        log.info("already done for this commit: %s", ", ".join(skipped))
    if not queue:
        log.info("%s: every experiment is done", table)
        return
    run_experiments(queue, jobs)
    done = existing_experiments(json.loads(dvc("exp", "show", "--json")))
    failed = [name for name in queue if name not in done]
    if failed:
        see = "the log above" if jobs == 1 else f"`dvc queue logs {failed[0]}`"
        raise SystemExit(f"error: experiment(s) {', '.join(failed)} failed: see {see}; run the "
                         "same command again to retry them (finished ones are kept)")


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("action", choices=("run", "list"))
    parser.add_argument("table", choices=("table1", "table2", "sweep", "cnnseeds", "schedules"))
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--seeds", nargs="+", help=f"Table 1 seeds: values of {SEED_KEY} "
                        f"(default: the params' own); CNN seeds: values of {CNN_SEED_KEY} "
                        f"(default: {' '.join(map(str, CNN_SEEDS))})")
    parser.add_argument("--jobs", type=int, default=1, help="experiments run at a time")
    parser.add_argument("--only", nargs="+", help="run just these experiments of the table")
    args = parser.parse_args(argv)
    if args.jobs < 1:
        parser.error("--jobs must be at least 1")
    try:
        if args.action == "run":
            run_table(args.table, args.params, args.seeds, args.jobs, args.only)
            return
        cells = cells_for(args.table, args.params, args.seeds)
    except ParamsError as err:
        raise SystemExit(f"error: {err}") from None
    for cell in cells:
        over = " ".join(f"-S {k}={v}" for k, v in cell.overrides)
        print(f"{cell.label:22s} seed {cell.seed}  {cell.model:9s} "
              f"{cell.experiment or '(baseline commit)':22s} {over}")


if __name__ == "__main__":
    main()
