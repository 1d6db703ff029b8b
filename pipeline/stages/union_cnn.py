"""Stage ``union_cnn``: under ``schedule: across_sets``, the pretrained backbone fine-tuned on the
union of the training tracklets of every set of ``data.video`` at split ``--split`` (paper §4.3:
the Baseline "jointly fine-tuned on video datasets: PRID2011, iLIDS-VID, and MARS"), as
``finetune`` trains it on one set: the labels keep the sets' people apart, batches are drawn as
``data.union_sampling`` says. Under ``per_set`` it trains nothing and writes its folder's
``schedule.json`` alone (``pipeline.union``).

Writes ``--out`` (a folder): ``finetune.pt`` (the CNN, with each set's classes of the union in
its payload), ``live/`` (its DVCLive curves) and ``schedule.json``. Every set's ``finetune`` stage
then takes the CNN as its own.

    python -m pipeline.launch pipeline.stages.union_cnn --params params.yaml --split <k> \
        --index data/index --init data/models/pretrain.pt --out data/models/union-<k>/cnn \
        --scratch scratch/union_cnn/<k>
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.files import sha256_file
from pipeline.stages.common import run
from pipeline.union import (
    CNN_FILES,
    LIVE,
    add_union_args,
    begin,
    index_files,
    pooled_training,
    publish,
    union_classes,
)

log = logging.getLogger("union_cnn")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_union_args(parser)
    parser.add_argument("--init", type=Path, required=True, help="the pretrained model")
    started = begin(parser, argv, "finetune")
    if started is None:
        return
    args, p = started
    # imported only to train: under per_set the stage never loads torch (a second, not five)
    from pipeline import distributed
    from pipeline.stages.finetune import train_cnn

    files = index_files(args.index, p, args.split)
    pooled = pooled_training(files)
    classes = union_classes(pooled)
    log.info("the union of %s", ", ".join(f"{s} ({n} identities)" for s, (_, n) in classes.items()))
    made = args.scratch / "made"  # beside the resume checkpoint
    train_cnn(p, pooled, args.init, made / CNN_FILES[0], made / LIVE, args.scratch,
              [sha256_file(f) for f in files.values()], sets=pooled["dataset"].tolist(),
              extra={"union_classes": classes})
    if distributed.world().is_main:
        publish(args.out, p, args.split, made, CNN_FILES, classes)


if __name__ == "__main__":
    run(main)
