"""The cache and attention rows again in the paper's setting: ResNet-50 (D = 2048), last stride
2, 256x128 input, on fewer frames and one cache run (rows ``<row>_paper``); the attention rows on
batches of ``PAPER_ATTENTION`` (P x M clips), the paper's backbone being about 5x the FLOPs per
frame."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import torch

from pipeline.model import Backbone
from tools.project.bench.attention import bench_attention
from tools.project.bench.cache import bench_cache
from tools.project.bench.common import Setup, log, skipped, tracklet_table

PAPER = {"backbone": "resnet50", "last_stride": 2, "size": (256, 128)}
# Row 4's batches in the paper's setting: P identities x M tracklets (the paper_frames frames hold
# paper_frames / (frames_per_tracklet x tracklets_per_identity) identities: 8 at the FULL sizes)
PAPER_ATTENTION = {"P": 4, "M": 2}


def bench_paper_backbone(setup: Setup, paths: Sequence[Path], workdir: Path) -> dict[str, dict]:
    """The cache and attention rows again with the paper's backbone and input (ResNet-50,
    256x128), on fewer frames, one cache run: rows ``<row>_paper``. Skipped where
    ``paper_frames`` is 0 (--quick, --no-paper) or the run already measures the paper's
    setting."""
    s = setup.sizes
    keys = ("cache_throughput", "attention_cached_epoch", "cached_step_overhead")
    if ((setup.backbone, setup.last_stride, setup.size) == tuple(PAPER.values())
            and setup.grid_block == "last"):
        return {f"{k}_paper": skipped("the main rows are the paper's setting") for k in keys}
    if not s.paper_frames:
        return {f"{k}_paper": skipped("--quick or --no-paper") for k in keys}
    paper = dataclasses.replace(
        setup, **PAPER, grid_block="last",
        sizes=dataclasses.replace(s, cache_runs=1, bare_batches=s.paper_bare_batches))
    log.info("1 again with the paper's backbone: ResNet-50 at 256x128")
    torch.manual_seed(setup.seed)
    backbone = Backbone(paper.backbone, paper.last_stride, paper.grid_block).eval()
    table = tracklet_table(paths[:s.paper_frames], s.frames_per_tracklet,
                           s.tracklets_per_identity)
    rows = bench_cache(paper, backbone, table, workdir / "cache-paper.h5", loader_check=False)
    log.info("3 again with the paper's backbone: batches of %d x %d clips",
             PAPER_ATTENTION["P"], PAPER_ATTENTION["M"])
    attention = dataclasses.replace(paper, sizes=dataclasses.replace(paper.sizes,
                                                                     **PAPER_ATTENTION))
    rows.update(bench_attention(attention, backbone, table, workdir / "cache-paper.h5",
                                workdir / "scratch-paper"))
    return {f"{k}_paper": rows[k] for k in keys}
