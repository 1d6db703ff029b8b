"""Rows 1 and 2: the cache stage's throughput against the bare backbone, and the backbone's
FLOP/s against a large matmul (the roofline), in the NHWC layout the pipeline runs and in NCHW."""

from __future__ import annotations

import copy
from pathlib import Path

import pandas as pd
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from pipeline.features import write_cache
from pipeline.model import Backbone
from tools.bench.common import FRAME_SIZE, Setup, Target, log, row, timed


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


def backbone_layers(b: nn.Module) -> nn.Module:
    """The layers of a ``pipeline.model.Backbone`` in order, as one module sharing their weights,
    without its ``forward``'s conversions to channels_last."""
    if b.name == "mobilenet_v2":
        return b.features
    return nn.Sequential(b.conv1, b.bn1, b.relu, b.maxpool, b.layer1, b.layer2, b.layer3,
                         b.layer4)


def count_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward pass of ``model`` on ``x``, as FlopCounterMode counts them: 2 per
    multiply-add of the convolutions and matrix products (biases, norms and activations are not
    counted)."""
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops()


def matmul_flops_per_s(n: int, repeats: int, device: str = "cpu",
                       dtype: torch.dtype = torch.float32) -> float:
    """FLOP/s of an n x n matmul (2 n^3 FLOPs) in ``dtype`` on ``device``, the best of
    ``repeats``: the machine's practical peak (on CUDA in bf16: the tensor cores that the
    autocast backbone uses)."""
    generator = torch.Generator().manual_seed(0)
    a, b = (torch.randn(n, n, generator=generator).to(device, dtype) for _ in range(2))
    out = torch.empty(n, n, device=device, dtype=dtype)
    torch.mm(a, b, out=out)  # warm-up
    return 2.0 * n ** 3 / timed(lambda: torch.mm(a, b, out=out), repeats)


def bench_cache_and_roofline(setup: Setup, backbone: Backbone, table: pd.DataFrame,
                             cache_path: Path, loader_check: bool = True) -> dict[str, dict]:
    """Rows 1 and 2. Writes the cache that row 4 trains on to ``cache_path``.

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
             "last_stride": setup.last_stride}
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

    log.info("2. roofline: FLOPs of the backbone, %d x %d matmul", s.matmul_n, s.matmul_n)
    flops_per_frame = count_flops(backbone, batch) / len(batch)
    matmul = matmul_flops_per_s(s.matmul_n, s.matmul_repeats, setup.device,
                                torch.bfloat16 if amp else torch.float32)
    # the same layers without Backbone.forward's conversion to channels_last, weights in NCHW
    nchw = copy.deepcopy(backbone_layers(backbone)).to(memory_format=torch.contiguous_format)
    backbone_fps(nchw, batch, 2, autocast=amp)
    bare_nchw = backbone_fps(nchw, batch, s.bare_batches, runs=2, autocast=amp)

    gflops = flops_per_frame / 1e9
    common = {"backbone": setup.backbone, "last_stride": setup.last_stride,
              "input": list(setup.size), "batch_size": s.batch_size,
              "GFLOP_per_frame": gflops, "matmul_n": s.matmul_n, "device": setup.device,
              "precision": "bf16 autocast" if amp else "float32"}
    return {
        "cache_throughput": row(
            ("cache_frames_per_s", cache_fps), ("backbone_frames_per_s", bare), Target(">=", 0.85),
            frames=frames, num_workers=setup.num_workers, cache_runs_s=cache_runs,
            backbone_runs_frames_per_s=bare_runs, **details, frame_files=list(FRAME_SIZE),
            **common),
        "roofline": row(
            ("backbone_GFLOP_per_s", gflops * bare), ("matmul_GFLOP_per_s", matmul / 1e9),
            Target(">=", 0.5), backbone_frames_per_s=bare, **common),
        "roofline_nchw": row(
            ("backbone_GFLOP_per_s", gflops * bare_nchw), ("matmul_GFLOP_per_s", matmul / 1e9),
            Target(">=", 0.5), backbone_frames_per_s=bare_nchw, **common),
    }
