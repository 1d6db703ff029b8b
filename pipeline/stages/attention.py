"""Stage ``attention``: the DRSA heads trained on cached res5c grids, CNN fixed (paper §4.2).

Phase 1 (``attention.spatial``): the K spatial attention heads with average temporal pooling, the
identity loss plus the diversity term (paper: SpaAtn+Q). Phase 2 (``attention.temporal``):
everything but the CNN, with ``model.temporal_pooling`` (paper: SpaAtn+Q+TemAtn). Training clips
are restricted random samples of the cached frames. Both phases' heads are outputs: evaluate
scores them both.

    python -m pipeline.stages.attention --params params.yaml --cache data/cache/<set>-<k>.h5 \
        --backbone data/models/<set>-<k>/finetune.pt --spatial data/models/<set>-<k>/spatial.pt \
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

from pipeline.data import CachedClipDataset, train_labels, train_loader
from pipeline.features import cache_attrs, open_cache
from pipeline.files import check_writable
from pipeline.losses import build_identity_loss
from pipeline.model import drsa_heads
from pipeline.params import Params, load_params, to_dict
from pipeline.stages.common import run
from pipeline.train import (
    Step,
    drop_checkpoint,
    export_model,
    fingerprint,
    fit,
    fit_options,
    load,
    seed_everything,
    start,
    warn_if_saturated,
)

log = logging.getLogger("attention")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--cache", type=Path, required=True)
    parser.add_argument("--backbone", type=Path, required=True,
                        help="the fine-tuned model the cache was made with (checked)")
    parser.add_argument("--spatial", type=Path, required=True, help="phase 1 heads")
    parser.add_argument("--temporal", type=Path, required=True, help="phase 2 heads")
    parser.add_argument("--live", type=Path, required=True,
                        help="folder of the phases' DVCLive folders (spatial/, temporal/)")
    parser.add_argument("--scratch", type=Path, required=True, help="resume checkpoints")
    args = parser.parse_args(argv)
    check_writable(args.spatial.parent, args.temporal.parent, args.live, args.scratch)
    p = load_params(args.params)
    seed_everything(p.heads_seed)
    world, device = start(p.runtime)  # under torchrun: this rank's device

    expect = {**cache_attrs(args.backbone, load(args.backbone), p.model.grid_block),
              "height": p.data.height, "width": p.data.width}
    with open_cache(args.cache, expect) as f:
        D = f["train/grids"].shape[1]
        pids = f["train/pids"][:]
        cache_hash = f.attrs["checkpoint_sha256"]
    labels = train_labels(pids)
    dataset = CachedClipDataset(args.cache, "train", p.model.N, labels)
    targets = [labels[int(pid)] for pid in pids]
    log.info("%d training tracklets of %d identities, %d channels", len(pids), len(labels), D)

    heads = drsa_heads(p.model, D)  # the width control for model.maps: average
    criterion = build_identity_loss(p.loss, p.model.embedding_size, len(labels))
    key = fingerprint("attention", p.heads_seed, to_dict(p.model), to_dict(p.loss),
                      to_dict(p.attention), p.data.num_workers, cache_hash)

    # Phase 1: spatial heads, average temporal pooling; the temporal attention stays at its
    # zero initialisation (= average pooling) and out of the optimizer.
    for param in heads.temporal.parameters():
        param.requires_grad_(False)
    phase = functools.partial(train_phase, heads, criterion, dataset, targets, p, device,
                              args.scratch, args.live, key)
    average = Step.of(p.loss, forward=lambda net, grids: net(grids, "avg"))
    phase("spatial", average, p.heads_seed)
    if world.is_main:
        export_model(args.spatial, heads.cpu(),
                     dataclasses.replace(p.model, temporal_pooling="avg"), "drsa",
                     {"stage": "attention.spatial", "criterion": criterion.cpu().state_dict()})

    # Phase 2: everything but the CNN, with the configured temporal pooling.
    for param in heads.temporal.parameters():
        param.requires_grad_(True)
    phase("temporal", Step.of(p.loss), p.heads_seed + 1)
    if world.is_main:
        export_model(args.temporal, heads.cpu(), p.model, "drsa",
                     {"stage": "attention.temporal", "criterion": criterion.cpu().state_dict()})
        drop_checkpoint(args.scratch / "spatial.pt")
        drop_checkpoint(args.scratch / "temporal.pt")


def train_phase(heads: nn.Module, criterion: nn.Module, dataset: CachedClipDataset,
                targets: list[int], p: Params, device: torch.device, scratch: Path, live: Path,
                key: str, phase: str, step: Step, seed: int) -> list[dict]:
    """One phase of the stage (``spatial`` or ``temporal``: its section ``attention.<phase>``)
    trained on the cache, resumable from ``scratch/<phase>.pt``, its curves in
    ``live/<phase>``; its history. Warns when its maps ended saturated."""
    section = getattr(p.attention, phase)
    loader = train_loader(dataset, targets, section, seed, p.data.num_workers,
                          section=f"attention.{phase}")
    history = fit(heads, criterion, loader, section, step, device, scratch / f"{phase}.pt", key,
                  desc=f"attention {phase}", curves=live / phase,
                  **fit_options(p.runtime, device, backbone=False))
    warn_if_saturated(history, f"attention {phase}", "loss.diversity_weight, "
                      "loss.diversity_scale, loss.diversity_warmup_epochs, model.score_init and "
                      f"attention.{phase}.lr")
    return history


if __name__ == "__main__":
    run(main)
