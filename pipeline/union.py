"""The paper's schedule across sets (``schedule: across_sets``, paper §4.2, §4.3): the CNN and the
attention heads trained once per split index on the union of ``data.video``'s sets, then +Ind
(the ``joint`` stage) per set from them.

dvc.yaml keeps one static graph for both schedules. Two stages run once per split index:
``union_cnn`` (the CNN of the union, what ``finetune`` trains per set) and ``union_heads`` (the
heads of the union, on every set's cache, what ``attention`` trains per set). Each writes a folder,
``data/models/union-<k>/cnn`` and ``.../heads``, whose ``schedule.json`` says what it holds: under
``per_set`` nothing else (the stage trains nothing, in a second), under ``across_sets`` the models
and their training curves (``live/``). The per-set stages ``finetune`` and ``attention`` depend on
those folders: under ``per_set`` they train on their set as before; under ``across_sets`` they
take the union's models as theirs (``pass_through``: the same bytes, so the cache, joint, baseline
and evaluate stages read what they always read, per set). The labels of the union keep the people
of different sets apart (``pipeline.tables.pool_sets``), and ``joint`` starts each set's identity
loss from that set's rows of the union's (``set_rows``).
"""

from __future__ import annotations

import argparse
import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING

from pipeline.errors import CheckpointError
from pipeline.files import atomic_dir, check_writable, write_json, write_with
from pipeline.params import Params, load_params

if TYPE_CHECKING:  # imported where used: under per_set a union stage needs neither (nor torch)
    import pandas as pd

MARKER = "schedule.json"
LIVE = "live"
CNN_FILES = ("finetune.pt",)
HEADS_FILES = ("spatial.pt", "temporal.pt")

log = logging.getLogger("union")


def add_union_args(parser: argparse.ArgumentParser) -> None:
    """The arguments both union stages take: ``--params``, ``--split``, ``--index`` (the index
    folder), ``--out`` (the union's folder) and ``--scratch``."""
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--split", type=int, required=True, help="the split index")
    parser.add_argument("--index", type=Path, required=True,
                        help="the index folder (<set>/split_<k>.json of every set)")
    parser.add_argument("--out", type=Path, required=True, help="the union's folder")
    parser.add_argument("--scratch", type=Path, required=True, help="resume checkpoints")


def begin(parser: argparse.ArgumentParser, argv: list[str] | None,
          per_set_stage: str) -> tuple[argparse.Namespace, Params] | None:
    """A union stage's arguments (``add_union_args`` and its own, on ``parser``) and params, its
    folders checked writable. Under ``per_set`` there is nothing to train: its folder is written
    with its ``schedule.json`` alone, the log says which per-set stage trains instead, and None
    is returned."""
    args = parser.parse_args(argv)
    check_writable(args.out.parent, args.scratch)
    p = load_params(args.params)
    if p.schedule == "across_sets":
        return args, p
    write_union(args.out, p, args.split)
    log.info("schedule %s: every set's %s stage trains on that set alone", p.schedule,
             per_set_stage)
    return None


def index_files(root: Path, p: Params, split: int) -> dict[str, Path]:
    """Each set's index file of split ``split``, in ``data.video`` order."""
    return {name: Path(root) / name / f"split_{split}.json" for name in p.data.video}


def pooled_training(files: dict[str, Path]) -> pd.DataFrame:
    """The training tracklets of every set's index file, pooled: ``pid`` the union's label (one
    per set and person), ``dataset`` and ``local_pid`` the set's own."""
    from pipeline.tables import load_video_index, pool_sets

    tables = {}
    for name, path in files.items():
        table = load_video_index(path)
        tables[name] = table[table["subset"] == "train"].reset_index(drop=True)
    return pool_sets(tables)


def union_classes(pooled: pd.DataFrame) -> dict[str, list[int]]:
    """Each set's first label in the union and its number of identities, ``{set: [start,
    count]}``: what a set's own training (+Ind) reads of the union's identity loss."""
    return {str(name): [int(part["pid"].min()), int(part["pid"].nunique())]  # contiguous
            for name, part in pooled.groupby("dataset", sort=False)}  # (pool_sets sorts by set)


def write_union(out: Path, p: Params, split: int, build=None, extra: dict | None = None) -> None:
    """The union stage's folder ``out``, whole or not at all: under ``per_set`` only its
    ``schedule.json``; under ``across_sets`` what ``build(folder)`` writes in it too."""
    with atomic_dir(out) as folder:
        if p.schedule == "across_sets":
            build(folder)
            record = {"schedule": p.schedule, "split": split, "sets": list(p.data.video),
                      **(extra or {})}
        else:  # nothing the per-set params change: the per-set stages do not re-run for it
            record = {"schedule": p.schedule}
        write_json(folder / MARKER, record)


def publish(out: Path, p: Params, split: int, made: Path, files: tuple[str, ...],
            classes: dict[str, list[int]]) -> None:
    """A union stage's trained ``files`` and curves (``live/``), written in ``made``, moved into
    its folder ``out`` with its ``schedule.json`` (the union's ``classes`` recorded), whole or
    not at all."""
    def build(folder: Path) -> None:
        for name in (*files, LIVE):
            (made / name).replace(folder / name)

    write_union(out, p, split, build, {"classes": classes})


def union_models(folder: Path, p: Params, files: tuple[str, ...], stage: str) -> Path | None:
    """None under ``per_set``; under ``across_sets`` the union stage's ``folder``, checked to hold
    ``files`` trained for this schedule and these sets."""
    if p.schedule != "across_sets":
        return None
    try:
        record = json.loads((folder / MARKER).read_text())
    except (OSError, ValueError):
        record = {}
    missing = [f for f in (*files, LIVE) if not (folder / f).exists()]
    if record.get("schedule") != "across_sets" or record.get("sets") != list(p.data.video) \
            or missing:
        raise CheckpointError(f"{folder}: not the {stage} stage's models of the union of "
                              f"{p.data.video} (its {MARKER}: {record or 'missing'}): re-run "
                              f"the {stage} stage")
    return folder


def pass_through(folder: Path, outputs: dict[str, Path], live: Path) -> None:
    """A per-set stage's outputs under ``across_sets``: the union's files ``outputs`` (name in
    ``folder`` -> this stage's path) byte for byte, and its training curves as this stage's."""
    for name, path in outputs.items():
        write_with(path, lambda tmp, source=folder / name: shutil.copyfile(source, tmp))
    with atomic_dir(live) as tmp:
        shutil.copytree(folder / LIVE, tmp, dirs_exist_ok=True)


def set_rows(state: dict, classes: dict[str, list[int]], dataset: str, count: int,
             source: Path) -> dict:
    """The identity loss state of ``dataset``'s ``count`` identities, taken from the union's
    (``state``: every tensor with one row per union class, e.g. OIM's lookup table, keeps the
    rows of this set's classes, in its own label order)."""
    import torch

    if dataset not in classes or classes[dataset][1] != count:
        raise CheckpointError(f"{source}: trained on the union of {sorted(classes)}, whose "
                              f"classes of {dataset!r} are {classes.get(dataset, [0, 0])[1]}, "
                              f"but this set has {count} training identities: re-run the "
                              "union stages")
    start, total = classes[dataset][0], sum(n for _, n in classes.values())
    rows = torch.arange(start, start + count)
    return {k: v[rows] if torch.is_tensor(v) and v.dim() and len(v) == total else v
            for k, v in state.items()}
