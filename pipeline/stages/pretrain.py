"""Stage ``pretrain``: the backbone trained with OIM on the pooled image re-id sets (paper §4.2),
each (dataset, pid) a class of its own, one image per sample (N = 1), from ``model.init``. With no
image sets (``data.image: []``) pretraining is skipped: the backbone is exported as ``model.init``
made it (e.g. ImageNet weights), and the loss curve holds its header alone.

    python -m pipeline.stages.pretrain --params params.yaml --index data/image_index \
        --out data/models/pretrain.pt --live metrics/live/pretrain \
        --scratch scratch/pretrain
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.checkpoints import config_of, drop_checkpoint, export_model, fingerprint
from pipeline.curves import Curves
from pipeline.data import ClipDataset, train_loader
from pipeline.files import sha256_file
from pipeline.losses import build_identity_loss
from pipeline.model import build_model
from pipeline.params import Params
from pipeline.runtime import fit_options, seed_everything, start
from pipeline.stage_inputs import model_fields, settings
from pipeline.stages.common import run, training_args
from pipeline.tables import load_image_index, pool_sets
from pipeline.train import Step, fit

log = logging.getLogger("pretrain")


def export_untrained(p: Params, out: Path, live: Path) -> None:
    """No image sets: export the backbone of ``model.init`` (ImageNet weights, a checkpoint, or a
    seeded random init) with a baseline head as initialised, and a curves folder without steps,
    so that the stage's outputs exist and finetune starts from ``model.init``."""
    log.info("data.image is empty: pretraining skipped; exporting the %s backbone as model.init "
             "(%s) made it", p.model.backbone, p.model.init)
    model = build_model(p.model, head="baseline")
    export_model(out, model, config_of(p.model, *model_fields("pretrain")), "baseline",
                 {"stage": "pretrain", "num_classes": 0, "pretrained": False})
    with Curves(live):
        pass  # an empty summary and no curves: nothing was trained


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--index", type=Path, required=True, help="the index stage's folder of "
                        "the image sets (<name>/images.json)")
    args, p = training_args(parser, argv)
    seed_everything(p.seed)
    world, device = start(p.runtime)  # under torchrun: this rank's device
    if not p.data.image:
        if world.is_main:
            export_untrained(p, args.out, args.live)
            # a checkpoint of an earlier run with image sets
            drop_checkpoint(args.scratch / "last.pt")
        return

    files = {name: args.index / name / "images.json" for name in p.data.image}
    pooled = pool_sets({name: load_image_index(path) for name, path in files.items()})
    num_classes = int(pooled["pid"].max()) + 1
    log.info("%d images of %d identities from %s", len(pooled), num_classes, ", ".join(files))
    labels = pooled["pid"].tolist()
    dataset = ClipDataset([[path] for path in pooled["path"]], labels, 1,
                          (p.data.height, p.data.width), augment=p.data.augment)
    loader = train_loader(dataset, labels, p.pretrain, p.seed, p.data.num_workers,
                          pin_memory=device.type == "cuda", section="pretrain")

    model = build_model(p.model, head="baseline")
    criterion = build_identity_loss(p.loss, p.model.embed_dim, num_classes)
    key = fingerprint("pretrain", settings(p, "pretrain"),
                      {n: sha256_file(f) for n, f in files.items()})
    resume = args.scratch / "last.pt"
    fit(model, criterion, loader, p.pretrain, Step(), device, resume, key,
        desc="pretrain", curves=args.live, **fit_options(p.runtime, device))
    if world.is_main:
        export_model(args.out, model.cpu(),
                     config_of(p.model, *model_fields("pretrain")), "baseline",
                     {"stage": "pretrain", "num_classes": num_classes,
                      "criterion": criterion.cpu().state_dict()})
        drop_checkpoint(resume)


if __name__ == "__main__":
    run(main)
