"""Row 4: one epoch of the attention stage's phase-2 training on the cached grids against one
epoch on frames through the frozen backbone (what training without the cache would cost); and
the cached training step against the heads' compute alone on the same batches held in memory
(what loading the cache costs on top: ``cached_step_overhead``, target <= 1.2)."""

from __future__ import annotations

import copy
import dataclasses
import time
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from pipeline.data import CachedClipDataset, ClipDataset, train_labels, train_loader
from pipeline.losses import build_identity_loss, diversity_penalty
from pipeline.model import DRSA, Backbone, VideoReIDNet
from pipeline.params import LossParams, ModelParams, TrainParams
from pipeline.train import Step, fit
from tools.project.bench.common import Setup, Target, log, row


def bench_attention(setup: Setup, backbone: Backbone, table: pd.DataFrame, cache_path: Path,
                    scratch: Path) -> dict[str, dict]:
    """Row 4: the attention stage's phase-2 step (all DRSA heads, OIM plus the diversity term;
    the default run's model and loss params) for one epoch of P x M identity batches, on the cache
    and on frames through the frozen backbone. The same seed gives both the same batches."""
    s = setup.sizes
    model_cfg = dataclasses.replace(ModelParams(), backbone=setup.backbone, init="scratch",
                                    last_stride=setup.last_stride, N=s.N,
                                    grid_block=setup.grid_block)
    loss_cfg = LossParams()
    pids = table["pid"].tolist()
    labels = train_labels(pids)
    targets = [labels[int(p)] for p in pids]

    def epochs(model: nn.Module, dataset, count: int, name: str,
               frozen_batchnorm: bool = False) -> tuple[float, int]:
        train_cfg = TrainParams(epochs=count, identities_per_batch=s.P,
                                instances_per_identity=s.M, lr_step_epoch=count)
        torch.manual_seed(setup.seed)
        criterion = build_identity_loss(loss_cfg, model_cfg.embed_dim, len(labels))
        loader = train_loader(dataset, targets, train_cfg, setup.seed, setup.num_workers)
        step = Step(diversity=loss_cfg.diversity, diversity_weight=loss_cfg.diversity_weight)
        resume = scratch / f"{name}.pt"
        resume.unlink(missing_ok=True)  # a kept --workdir must not resume a finished run
        start = time.perf_counter()
        fit(model, criterion, loader, train_cfg, step, torch.device(setup.device), resume,
            key=name, desc=f"bench {name}", frozen_batchnorm=frozen_batchnorm,
            autocast=setup.autocast and name == "uncached")  # bf16 for the backbone only
        return (time.perf_counter() - start) / count, len(loader)

    log.info("4. attention epoch: %d tracklets, P=%d x M=%d, N=%d", len(table), s.P, s.M, s.N)
    torch.manual_seed(setup.seed)
    cached_heads = DRSA(model_cfg, backbone.out_channels)
    cached = CachedClipDataset(cache_path, "train", s.N, labels)
    cached_s, batches = epochs(cached_heads, cached, s.cached_epochs, "cached")

    # the heads' compute alone: the same step (forward, OIM + diversity, backward, SGD) on one
    # epoch of the same batches, loaded beforehand
    train_cfg = TrainParams(epochs=1, identities_per_batch=s.P, instances_per_identity=s.M)
    loader = train_loader(cached, targets, train_cfg, setup.seed, 0)
    loader.batch_sampler.set_epoch(0)
    held = [(x.to(setup.device), y.to(setup.device)) for x, y, _ in loader]
    torch.manual_seed(setup.seed)
    heads = DRSA(model_cfg, backbone.out_channels).to(setup.device).train()
    criterion = build_identity_loss(loss_cfg, model_cfg.embed_dim, len(labels)).to(setup.device)
    optimizer = torch.optim.SGD([*heads.parameters(), *criterion.parameters()], lr=0.01,
                                momentum=0.9)
    start = time.perf_counter()
    for _ in range(s.cached_epochs):
        for x, y in held:
            out = heads(x)
            loss = criterion(out.embedding, y) + loss_cfg.diversity_weight * diversity_penalty(
                out.spatial, loss_cfg.diversity)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
    compute_s = (time.perf_counter() - start) / s.cached_epochs

    frozen = copy.deepcopy(backbone)
    for param in frozen.parameters():
        param.requires_grad_(False)
    torch.manual_seed(setup.seed)
    net = VideoReIDNet(frozen, DRSA(model_cfg, backbone.out_channels))

    frames = ClipDataset(table["frames"].tolist(), targets, s.N, setup.size, augment=False)
    uncached_s, _ = epochs(net, frames, 1, "uncached", frozen_batchnorm=True)
    return {"attention_cached_epoch": row(
        ("uncached_epoch_s", uncached_s), ("cached_epoch_s", cached_s), None,
        batches_per_epoch=batches, clips_per_batch=s.P * s.M, frames_per_clip=s.N,
        cached_epochs_timed=s.cached_epochs, num_workers=setup.num_workers,
        backbone_in_loop="frozen: eval mode, no gradients"),
        "cached_step_overhead": row(
            ("cached_epoch_s", cached_s), ("heads_compute_epoch_s", compute_s), Target("<=", 1.2),
            batches_per_epoch=batches, num_workers=setup.num_workers,
            what="train.fit on the cache (loading, the loop's bookkeeping) over the same steps "
                 "on batches already in memory")}
