"""Stage ``attention``: the DRSA heads trained on cached res5c grids, CNN fixed (paper §4.2).

Phase 1 (``attention.spatial``): the K spatial attention heads with average temporal pooling, the
identity loss plus the diversity term (paper: SpaAtn+Q). Phase 2 (``attention.temporal``):
everything but the CNN, with ``model.temporal_pooling`` (paper: SpaAtn+Q+TemAtn). Training clips
are restricted random samples of the cached frames. Both phases' heads are outputs: evaluate
scores them both.

Under ``schedule: across_sets`` the heads are the union's (``--union``, the union_heads stage's
folder: ``pipeline.union``), taken as this set's without training.

    python -m pipeline.stages.attention --params params.yaml --cache data/cache/<set>-<k>.h5 \
        --backbone data/models/<set>-<k>/finetune.pt --union data/models/union-<k>/heads \
        --spatial data/models/<set>-<k>/spatial.pt \
        --temporal data/models/<set>-<k>/temporal.pt \
        --live metrics/live/attention/<set>-<k> --scratch scratch/attention/<set>-<k>
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import logging
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from pipeline import distributed
from pipeline.checkpoints import drop_checkpoint, export_model, fingerprint, load
from pipeline.curves import warn_if_saturated
from pipeline.data import CachedClipDataset, train_labels, train_loader
from pipeline.features import cache_attrs, open_cache
from pipeline.files import check_writable
from pipeline.losses import build_identity_loss
from pipeline.model import drsa_heads
from pipeline.params import Params, load_params
from pipeline.runtime import fit_options, seed_everything, start
from pipeline.stage_inputs import settings
from pipeline.stages.common import run
from pipeline.train import Step, fit
from pipeline.union import HEADS_FILES, pass_through, union_models

log = logging.getLogger("attention")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--backbone", type=Path, required=True,
                        help="the fine-tuned model the cache was made with (checked)")
    parser.add_argument("--union", type=Path,
                        help="the union_heads stage's folder: under schedule across_sets, its "
                             "heads are this set's (pipeline.union); without it, trains on this "
                             "set")
    parser.add_argument("--spatial", type=Path, required=True, help="phase 1 heads")
    parser.add_argument("--temporal", type=Path, required=True, help="phase 2 heads")
    parser.add_argument("--live", type=Path, required=True,
                        help="folder of the phases' DVCLive folders (spatial/, temporal/)")
    parser.add_argument("--scratch", type=Path, required=True, help="resume checkpoints")
    args = parser.parse_args(argv)
    check_writable(args.spatial.parent, args.temporal.parent, args.live, args.scratch)
    p = load_params(args.params)
    union = args.union and union_models(args.union, p, HEADS_FILES, "union_heads")
    if union is not None:
        if distributed.world().is_main:
            pass_through(union, dict(zip(HEADS_FILES, (args.spatial, args.temporal),
                                         strict=True)), args.live)
            log.info("schedule across_sets: the heads of the union (%s) are this set's", union)
        return
    dataset, targets, D, cache_hash = cached_training(args.cache, args.backbone, p)
    train_heads(p, dataset, targets, D, args.spatial, args.temporal, args.live, args.scratch,
                [cache_hash])


def cached_training(cache: Path, backbone: Path, p: Params,
                    labels: dict[int, int] | None = None) -> tuple:
    """A set's cached training tracklets: (the dataset, each tracklet's label, the grids'
    channels, the hash of the backbone that made the cache, checked against ``backbone``);
    ``labels``: pid -> label (default: the set's own, 0..C-1)."""
    expect = {**cache_attrs(backbone, load(backbone), p.model.grid_block),
              "height": p.data.height, "width": p.data.width}
    with open_cache(cache, expect) as f:
        D = f["train/grids"].shape[1]
        pids = f["train/pids"][:]
        cache_hash = f.attrs["checkpoint_sha256"]
    labels = labels or train_labels(pids)
    dataset = CachedClipDataset(cache, "train", p.model.N, labels)
    return dataset, [labels[int(pid)] for pid in pids], D, cache_hash


def train_heads(p: Params, dataset: Dataset, targets: list[int], D: int, spatial: Path,
                temporal: Path, live: Path, scratch: Path, inputs: list[str],
                sets: list[str] | None = None, extra: dict | None = None) -> None:
    """Both phases of the heads on ``dataset`` (cached clips; the union of several sets'
    with ``sets``, each item's set, batched as ``data.union_sampling`` says), exported to
    ``spatial`` and ``temporal`` by the main process; ``inputs``: the hashes of the caches'
    backbones (part of the resume fingerprint); ``extra``: more of the exports' payload."""
    seed_everything(p.heads_seed)
    world, device = start(p.runtime)  # under torchrun: this rank's device
    classes = len(set(targets))
    log.info("%d training tracklets of %d identities, %d channels", len(targets), classes, D)
    heads = drsa_heads(p.model, D)  # the width control for model.maps: average
    criterion = build_identity_loss(p.loss, p.model.embedding_size, classes)
    stage = "attention" if sets is None else "union_heads"
    key = fingerprint(stage, settings(p, stage), *inputs)

    # Phase 1: spatial heads, average temporal pooling; the temporal attention stays at its
    # zero initialisation (= average pooling) and out of the optimizer.
    for param in heads.temporal.parameters():
        param.requires_grad_(False)
    phase = functools.partial(train_phase, heads, criterion, dataset, targets, p, device,
                              scratch, live, key, sets)
    average = Step.of(p.loss, forward=lambda net, grids: net(grids, "avg"))
    phase("spatial", average, p.heads_seed)
    if world.is_main:
        export_model(spatial, heads.cpu(),
                     dataclasses.replace(p.model, temporal_pooling="avg"), "drsa",
                     {"stage": "attention.spatial", "criterion": criterion.cpu().state_dict(),
                      **(extra or {})})

    # Phase 2: everything but the CNN, with the configured temporal pooling.
    for param in heads.temporal.parameters():
        param.requires_grad_(True)
    phase("temporal", Step.of(p.loss), p.heads_seed + 1)
    if world.is_main:
        export_model(temporal, heads.cpu(), p.model, "drsa",
                     {"stage": "attention.temporal", "criterion": criterion.cpu().state_dict(),
                      **(extra or {})})
        drop_checkpoint(scratch / "spatial.pt")
        drop_checkpoint(scratch / "temporal.pt")


def train_phase(heads: nn.Module, criterion: nn.Module, dataset: Dataset,
                targets: list[int], p: Params, device: torch.device, scratch: Path, live: Path,
                key: str, sets: list[str] | None, phase: str, step: Step,
                seed: int) -> list[dict]:
    """One phase of the stage (``spatial`` or ``temporal``: its section ``attention.<phase>``)
    trained on the cache, resumable from ``scratch/<phase>.pt``, its curves in
    ``live/<phase>``; its history. Warns when its maps ended saturated."""
    section = getattr(p.attention, phase)
    loader = train_loader(dataset, targets, section, seed, p.data.num_workers,
                          section=f"attention.{phase}", sets=sets,
                          balance=p.data.union_sampling)
    history = fit(heads, criterion, loader, section, step, device, scratch / f"{phase}.pt", key,
                  desc=f"attention {phase}", curves=live / phase,
                  **fit_options(p.runtime, device, backbone=False))
    warn_if_saturated(history, f"attention {phase}", "loss.diversity_weight, "
                      "loss.diversity_scale, loss.diversity_warmup_epochs, model.score_init and "
                      f"attention.{phase}.lr")
    return history


if __name__ == "__main__":
    run(main)
