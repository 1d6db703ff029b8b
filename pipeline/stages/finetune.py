"""Stage ``finetune``: the pretrained backbone fine-tuned on one video set's training tracklets:
restricted-random-sampling clips of N frames, frame features averaged over space and time, one FC
to the embedding, OIM. This is also the paper's Baseline (Table 1).

    python -m pipeline.stages.finetune --params params.yaml \
        --index data/index/<set>/split_<k>.json --init data/models/pretrain.pt \
        --out data/models/<set>-<k>/finetune.pt \
        --live metrics/live/finetune/<set>-<k> --scratch scratch/finetune/<set>-<k>
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.data import ClipDataset, train_labels, train_loader
from pipeline.files import check_writable, sha256_file
from pipeline.losses import build_identity_loss
from pipeline.model import build_model
from pipeline.params import load_params, to_dict
from pipeline.stages.common import run
from pipeline.tables import load_video_index
from pipeline.train import (
    Step,
    config_of,
    drop_checkpoint,
    export_model,
    fingerprint,
    fit,
    fit_options,
    seed_everything,
    start,
)

log = logging.getLogger("finetune")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--index", type=Path, required=True, help="a split_<k>.json")
    parser.add_argument("--init", type=Path, required=True, help="the pretrained model")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--live", type=Path, required=True, help="DVCLive folder of the curves")
    parser.add_argument("--scratch", type=Path, required=True, help="resume checkpoints")
    args = parser.parse_args(argv)
    check_writable(args.out.parent, args.live, args.scratch)
    p = load_params(args.params)
    seed_everything(p.seed)
    world, device = start(p.runtime)  # under torchrun: this rank's device

    table = load_video_index(args.index)
    train = table[table["subset"] == "train"]
    labels = train_labels(train["pid"])
    log.info("%d training tracklets of %d identities", len(train), len(labels))
    targets = [labels[int(pid)] for pid in train["pid"]]
    dataset = ClipDataset(train["frames"].tolist(), targets, p.model.N,
                          (p.data.height, p.data.width), augment=p.data.augment)
    loader = train_loader(dataset, targets, p.finetune, p.seed, p.data.num_workers,
                          pin_memory=device.type == "cuda", section="finetune")

    model = build_model(p.model, head="baseline", init=str(args.init))
    criterion = build_identity_loss(p.loss, p.model.embed_dim, len(labels))
    key = fingerprint("finetune", p.seed, to_dict(p.finetune), to_dict(p.loss), to_dict(p.data),
                      p.model.N, sha256_file(args.index), sha256_file(args.init))
    resume = args.scratch / "last.pt"
    fit(model, criterion, loader, p.finetune, Step(), device, resume, key,
        desc="finetune", curves=args.live, **fit_options(p.runtime, device))
    if world.is_main:
        export_model(args.out, model.cpu(),
                     config_of(p.model, "backbone", "init", "last_stride", "N", "embed_dim"),
                     "baseline",
                     {"stage": "finetune", "num_classes": len(labels),
                      "criterion": criterion.cpu().state_dict()})
        drop_checkpoint(resume)


if __name__ == "__main__":
    run(main)
