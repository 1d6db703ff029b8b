"""Row 1: the cache stage's throughput against the bare backbone."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch
from torch import nn

from pipeline.features import write_cache
from pipeline.model import Backbone
from tools.project.bench.common import FRAME_SIZE, Setup, Target, log, row, timed


@torch.no_grad()
def backbone_fps(backbone: nn.Module, batch: torch.Tensor, batches: int, runs: int = 1,
                 autocast: bool = False) -> float:
    """Frames/s of ``backbone`` (eval mode, no gradients) on one preloaded batch: ``batches``
    forward passes, the best of ``runs`` such runs; bf16 autocast on ``autocast``."""
    backbone.eval()

    def forward_passes() -> None:
        with torch.autocast(batch.device.type, torch.bfloat16, enabled=autocast):
            for _ in range(batches):
                backbone(batch)

    return batches * len(batch) / timed(forward_passes, runs)


def bench_cache(setup: Setup, backbone: Backbone, table: pd.DataFrame,
                             cache_path: Path, loader_check: bool = True) -> dict[str, dict]:
    """Row 1. Writes the cache that the attention rows train on to ``cache_path``.

    Every figure is the best of several runs (a disturbed run is only ever slower): the cache is
    written ``cache_runs`` times, and the bare backbone is timed before, between and after those
    runs (``bare_batches`` batches each), so a load change during the benchmark cannot favour
    either side. ``loader_check``: also write the cache once with the frames loaded in this
    process (no workers), a detail that tells loader contention from the rest.
    """
    s = setup.sizes
    batch = torch.randn(s.batch_size, 3, *setup.size,
                        generator=torch.Generator().manual_seed(0)).to(setup.device)
    backbone = backbone.to(setup.device)
    amp = setup.autocast
    backbone_fps(backbone, batch, 2, autocast=amp)  # warm-up: kernels are chosen on first passes
    frames = sum(len(f) for f in table["frames"])

    log.info("1. cache throughput: %d frames x %d runs, batch %d, %d loader workers", frames,
             s.cache_runs, s.batch_size, setup.num_workers)
    attrs = {"checkpoint_sha256": "bench", "backbone": setup.backbone,
             "last_stride": setup.last_stride, "grid_block": setup.grid_block}
    bare_runs, cache_runs = [backbone_fps(backbone, batch, s.bare_batches, autocast=amp)], []
    for _ in range(s.cache_runs):
        cache_runs.append(timed(lambda: write_cache(
            cache_path, backbone, {"train": table}, setup.size, attrs, batch_size=s.batch_size,
            num_workers=setup.num_workers, device=setup.device, autocast=amp)))
        bare_runs.append(backbone_fps(backbone, batch, s.bare_batches, autocast=amp))
    bare, cache_fps = max(bare_runs), frames / min(cache_runs)
    details = {}
    if loader_check and setup.num_workers > 0:
        details["cache_frames_per_s_no_workers"] = frames / timed(lambda: write_cache(
            cache_path, backbone, {"train": table}, setup.size, attrs, batch_size=s.batch_size,
            num_workers=0, device=setup.device, autocast=amp))

    common = {"backbone": setup.backbone, "last_stride": setup.last_stride,
              "grid_block": setup.grid_block, "input": list(setup.size),
              "batch_size": s.batch_size, "device": setup.device,
              "precision": "bf16 autocast" if amp else "float32"}
    return {
        "cache_throughput": row(
            ("cache_frames_per_s", cache_fps), ("backbone_frames_per_s", bare), Target(">=", 0.85),
            frames=frames, num_workers=setup.num_workers, cache_runs_s=cache_runs,
            backbone_runs_frames_per_s=bare_runs, **details, frame_files=list(FRAME_SIZE),
            **common),
    }
