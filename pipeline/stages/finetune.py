"""Stage ``finetune``: the pretrained backbone fine-tuned on one video set's training tracklets:
restricted-random-sampling clips of N frames, frame features averaged over space and time, one FC
to the embedding, OIM. This is also the paper's Baseline (Table 1).

Under ``schedule: across_sets`` the CNN is the union's (``--union``, the union_cnn stage's folder:
``pipeline.union``), taken as this set's without training.

    python -m pipeline.stages.finetune --params params.yaml \
        --index data/index/<set>/split_<k>.json --init data/models/pretrain.pt \
        --union data/models/union-<k>/cnn --out data/models/<set>-<k>/finetune.pt \
        --live metrics/live/finetune/<set>-<k> --scratch scratch/finetune/<set>-<k>
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from pipeline import distributed
from pipeline.checkpoints import config_of, drop_checkpoint, export_model, fingerprint
from pipeline.data import ClipDataset, train_labels, train_loader
from pipeline.files import sha256_file
from pipeline.losses import build_identity_loss
from pipeline.model import build_model
from pipeline.params import Params
from pipeline.runtime import fit_options, seed_everything, start
from pipeline.stage_inputs import model_fields, settings
from pipeline.stages.common import run, training_args
from pipeline.tables import load_video_index
from pipeline.train import Step, fit
from pipeline.union import CNN_FILES, pass_through, union_models

log = logging.getLogger("finetune")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--index", type=Path, required=True, help="a split_<k>.json")
    parser.add_argument("--init", type=Path, required=True, help="the pretrained model")
    parser.add_argument("--union", type=Path,
                        help="the union_cnn stage's folder: under schedule across_sets, its CNN "
                             "is this set's (pipeline.union); without it, trains on this set")
    args, p = training_args(parser, argv)
    union = args.union and union_models(args.union, p, CNN_FILES, "union_cnn")
    if union is not None:
        if distributed.world().is_main:
            pass_through(union, {CNN_FILES[0]: args.out}, args.live)
            log.info("schedule across_sets: the CNN of the union (%s) is this set's", union)
        return
    table = load_video_index(args.index)
    train = table[table["subset"] == "train"]
    train_cnn(p, train, args.init, args.out, args.live, args.scratch,
              [sha256_file(args.index)])


def train_cnn(p: Params, train: pd.DataFrame, init: Path, out: Path, live: Path, scratch: Path,
              inputs: list[str], sets: list[str] | None = None, extra: dict | None = None) -> None:
    """The backbone fine-tuned on the tracklets of ``train`` (the training part of a set, or the
    pooled union of several: ``sets``, each tracklet's set, batched as ``data.union_sampling``
    says), exported to ``out`` by the main process; ``inputs``: the hashes of the index files
    (part of the resume fingerprint); ``extra``: more of the export's payload."""
    seed_everything(p.seed)
    world, device = start(p.runtime)  # under torchrun: this rank's device
    labels = train_labels(train["pid"])
    log.info("%d training tracklets of %d identities", len(train), len(labels))
    targets = [labels[int(pid)] for pid in train["pid"]]
    dataset = ClipDataset(train["frames"].tolist(), targets, p.model.N,
                          (p.data.height, p.data.width), augment=p.data.augment)
    loader = train_loader(dataset, targets, p.finetune, p.seed, p.data.num_workers,
                          pin_memory=device.type == "cuda", section="finetune", sets=sets,
                          balance=p.data.union_sampling)

    model = build_model(p.model, head="baseline", init=str(init))
    criterion = build_identity_loss(p.loss, p.model.embed_dim, len(labels))
    stage = "finetune" if sets is None else "union_cnn"
    key = fingerprint(stage, settings(p, stage), *inputs, sha256_file(init))
    resume = scratch / "last.pt"
    fit(model, criterion, loader, p.finetune, Step(), device, resume, key,
        desc="finetune", curves=live, **fit_options(p.runtime, device))
    if world.is_main:
        export_model(out, model.cpu(),
                     config_of(p.model, *model_fields(stage)), "baseline",
                     {"stage": "finetune", "num_classes": len(labels),
                      "criterion": criterion.cpu().state_dict(), **(extra or {})})
        drop_checkpoint(resume)


if __name__ == "__main__":
    run(main)
