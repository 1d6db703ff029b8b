"""Stage ``union_heads``: under ``schedule: across_sets``, the DRSA heads trained on the cached
grids of every set of ``data.video`` at split ``--split`` together, CNN fixed (paper §4.2: the
spatial heads trained on the fixed CNN, then everything but the CNN, on the three sets), in the
two phases of the ``attention`` stage. The grids are those of the union's CNN (each set's cache
is checked against it); the labels keep the sets' people apart, batches are drawn as
``data.union_sampling`` says. Under ``per_set`` it trains nothing and writes its folder's
``schedule.json`` alone (``pipeline.union``).

Writes ``--out`` (a folder): ``spatial.pt`` and ``temporal.pt`` (the two phases' heads, with each
set's classes of the union in their payload), ``live/`` (their DVCLive curves, ``spatial/`` and
``temporal/``) and ``schedule.json``. Every set's ``attention`` stage then takes them as its own.

    python -m pipeline.launch pipeline.stages.union_heads --params params.yaml --split <k> \
        --index data/index --cache data/cache --cnn data/models/union-<k>/cnn \
        --out data/models/union-<k>/heads --scratch scratch/union_heads/<k>
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.errors import CacheError
from pipeline.params import run_name
from pipeline.stages.common import run
from pipeline.union import (
    CNN_FILES,
    HEADS_FILES,
    LIVE,
    add_union_args,
    begin,
    index_files,
    pooled_training,
    publish,
    union_classes,
    union_models,
)

log = logging.getLogger("union_heads")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_union_args(parser)
    parser.add_argument("--cache", type=Path, required=True,
                        help="the cache folder (<set>-<k>.h5 of every set)")
    parser.add_argument("--cnn", type=Path, required=True,
                        help="the union_cnn stage's folder (its CNN made the caches)")
    started = begin(parser, argv, "attention")
    if started is None:
        return
    args, p = started
    # imported only to train: under per_set the stage never loads torch (a second, not five)
    from pipeline import distributed
    from pipeline.data import UnionDataset
    from pipeline.stages.attention import cached_training, train_heads

    cnn = union_models(args.cnn, p, CNN_FILES, "union_cnn") / CNN_FILES[0]
    pooled = pooled_training(index_files(args.index, p, args.split))
    classes = union_classes(pooled)
    parts, targets, sets, channels = [], [], [], set()
    for name, (start, count) in classes.items():
        own = pooled[pooled["dataset"] == name]
        labels = dict(zip(own["local_pid"].astype(int), own["pid"].astype(int), strict=True))
        dataset, part_targets, D, cache_hash = cached_training(
            args.cache / f"{run_name(name, args.split)}.h5", cnn, p, labels)
        if sorted(set(part_targets)) != list(range(start, start + count)):
            raise CacheError(f"{args.cache / run_name(name, args.split)}.h5: its training "
                             f"identities are not those of {name}'s index: re-run its cache "
                             "stage")
        parts.append(dataset)
        targets += part_targets
        sets += [name] * len(part_targets)
        channels.add(D)
    if len(channels) != 1:
        raise CacheError(f"{args.cache}: the caches of {list(classes)} hold grids of "
                         f"{sorted(channels)} channels: re-run their cache stages")
    made = args.scratch / "made"  # beside the resume checkpoints (spatial.pt, temporal.pt)
    train_heads(p, UnionDataset(parts), targets, channels.pop(), *(made / f for f in HEADS_FILES),
                made / LIVE, args.scratch, [cache_hash], sets=sets,
                extra={"union_classes": classes})
    if distributed.world().is_main:
        publish(args.out, p, args.split, made, HEADS_FILES, classes)


if __name__ == "__main__":
    run(main)
