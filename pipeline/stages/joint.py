"""Stage ``joint``: the whole network, CNN included, fine-tuned end to end on one video set's
training tracklets (paper: "Ind", the final model). Starts from the fine-tuned backbone and the
attention stage's heads (and its OIM lookup table: under ``schedule: across_sets`` this set's rows
of the union's, ``pipeline.union.set_rows``); the network stops at ``model.grid_block``, the
block whose grids the heads read (the fine-tuned backbone's later blocks are not part of it).

    python -m pipeline.stages.joint --params params.yaml --index data/index/<set>/split_<k>.json \
        --backbone data/models/<set>-<k>/finetune.pt --heads data/models/<set>-<k>/temporal.pt \
        --out data/models/<set>-<k>/joint.pt --live metrics/live/joint/<set>-<k> \
        --scratch scratch/joint/<set>-<k>
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.checkpoints import drop_checkpoint, export_model, fingerprint, load_exported
from pipeline.curves import warn_if_saturated
from pipeline.data import ClipDataset, train_labels, train_loader
from pipeline.errors import CheckpointError
from pipeline.files import sha256_file
from pipeline.losses import build_identity_loss
from pipeline.model import VideoReIDNet, grid_backbone
from pipeline.params import canonical_grid_block
from pipeline.runtime import fit_options, seed_everything, start
from pipeline.stage_inputs import settings
from pipeline.stages.common import run, training_args
from pipeline.tables import load_video_index
from pipeline.train import Step, fit
from pipeline.union import set_rows

log = logging.getLogger("joint")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--index", type=Path, required=True, help="a split_<k>.json")
    parser.add_argument("--backbone", type=Path, required=True, help="the fine-tuned model")
    parser.add_argument("--heads", type=Path, required=True, help="the attention stage's heads")
    args, p = training_args(parser, argv)
    seed_everything(p.heads_seed)
    world, device = start(p.runtime)  # under torchrun: this rank's device

    table = load_video_index(args.index)
    train = table[table["subset"] == "train"]
    labels = train_labels(train["pid"])
    targets = [labels[int(pid)] for pid in train["pid"]]
    # No augmentation: the heads and their lookup table were trained on the cached features of
    # plain frames, and flipped or shifted clips would move the whole network away from them
    # (on the synthetic set this costs ~10 rank-1 points and makes the loss climb).
    dataset = ClipDataset(train["frames"].tolist(), targets, p.model.N,
                          (p.data.height, p.data.width), augment=False)
    loader = train_loader(dataset, targets, p.joint, p.heads_seed, p.data.num_workers,
                          pin_memory=device.type == "cuda", section="joint")

    base, _ = load_exported(args.backbone)
    heads, payload = load_exported(args.heads)
    # the backbone up to model.grid_block, whose grids the heads were trained on (the cache's)
    backbone = grid_backbone(base.backbone, p.model.grid_block)
    if canonical_grid_block(heads.cfg.backbone, heads.cfg.grid_block) != backbone.grid_block:
        raise CheckpointError(f"{args.heads}: heads trained on the grids of "
                              f"{heads.cfg.grid_block}, but model.grid_block is "
                              f"{p.model.grid_block}: re-run the cache and attention stages")
    model = VideoReIDNet(backbone, heads)
    cfg = heads.cfg
    criterion = build_identity_loss(p.loss, cfg.embedding_size, len(labels))
    if "criterion" in payload:  # continue with the attention stage's lookup table
        state = payload["criterion"]
        if "union_classes" in payload:  # heads of the union: this set's rows of its table
            state = set_rows(state, payload["union_classes"], table.attrs.get("dataset", ""),
                             len(labels), args.heads)
        criterion.load_state_dict(state)
    log.info("%d training tracklets of %d identities; K=%d heads", len(train), len(labels), cfg.K)
    key = fingerprint("joint", settings(p, "joint"), sha256_file(args.index),
                      sha256_file(args.backbone), sha256_file(args.heads))
    resume = args.scratch / "last.pt"
    step = Step.of(p.loss)
    # BatchNorm statistics frozen: fine-tuning starts from exactly the features the heads were
    # trained on (train.freeze_batchnorm says why)
    history = fit(model, criterion, loader, p.joint, step, device, resume, key, desc="joint",
                  curves=args.live, **fit_options(p.runtime, device), frozen_batchnorm=True)
    warn_if_saturated(history, "joint", "loss.diversity_weight, loss.diversity_scale and joint.lr")
    if world.is_main:
        export_model(args.out, model.cpu(), cfg, "drsa",
                     {"stage": "joint", "criterion": criterion.cpu().state_dict()})
        drop_checkpoint(resume)


if __name__ == "__main__":
    run(main)
