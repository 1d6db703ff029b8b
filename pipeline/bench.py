"""Speed and memory figures of the pipeline's hot paths: ``make bench`` prints a table and writes
``metrics/bench.json``.

Figures, not asserts: every row is the ratio of two figures measured in the same run (two timings
taken back to back, or two peak memory sizes), so a noisy or slow machine still gives comparable
rows. The rows, read top to bottom in this file:

1. ``cache_throughput``: frames/s of the cache stage (``features.write_cache`` on JPEG files:
   decode, resize, backbone, HDF5 write) over frames/s of the bare backbone on preloaded tensors
   of the same batch size. Target >= 0.85. Timings are the best of several runs (a disturbed run
   is only ever slower).
2. ``roofline``: the backbone's FLOP/s (FLOPs counted by
   ``torch.utils.flop_counter.FlopCounterMode``) over the FLOP/s of a large float32 matmul, the
   machine's practical peak. Target >= 0.5. The backbone runs channels_last (NHWC), as in the
   pipeline; ``roofline_nchw`` is the same network in the NCHW layout, for comparison.
   Rows 1 and 2 are measured again, on fewer frames, with the paper's ResNet-50 at 256x128
   (``<row>_paper``; about 5x the FLOPs per frame).
3. ``eval_<protocol>_speedup``, ``eval_<protocol>_vs_sort``, ``eval_<protocol>_memory``:
   ``metrics.evaluate_rank`` on a MARS-sized problem (1980 queries x 12180 gallery items) against
   ``usual_evaluator`` (a full argsort, a match matrix, then a Python loop over the queries that
   computes AP item by item, the shape of the classic torchreid evaluator) and ``sort_bound`` (one
   argsort per query row and nothing else, the lower bound of any ranking evaluator). Targets:
   >= 20x faster than the first, <= 1.5x the second, <= 1 GB of extra peak memory (measured with
   ``tracemalloc``, which traces numpy's allocations, in a run of its own).
4. ``attention_cached_epoch``: one epoch of the attention stage on frames, the backbone in the
   loop (frozen: eval mode, no gradients, the cheapest uncached training can be), over one epoch
   on the cached grids (``data.CachedClipDataset``); both through ``train.fit`` with the DRSA
   heads and the OIM loss. Reported, no target.
5. ``cache_memory_flatness``: peak RSS of a fresh process running ``write_cache`` on 4x the
   frames over the same on 1x (VmHWM, reset once the imports are done; ``ru_maxrss``, which
   cannot be reset, is reported beside it). Target: about 1 (<= 1.1); memory must not grow with
   the dataset.
6. ``experiment_overhead``: wall time of ``dvc exp run -S model.K=8`` after a full ``dvc repro`` of
   a tiny configuration in a throw-away git repository, over that repro. Reported, no target;
   skipped with ``--quick``.

Defaults are the default run's (ResNet-18, last stride 1, 128x64 frames, cache batch 64, 2 loader
workers) and fit a 2-core CPU in a few minutes; ``--quick`` shrinks every size to a smoke test of
the code paths (its figures mean little; the time goes to imports and process starts). Every row
in the paper's setting: ``--backbone resnet50 --last-stride 2 --height 256 --width 128`` (expect
that run to take several times longer on a CPU).

    python -m pipeline.bench --out metrics/bench.json [--quick]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import io
import json
import logging
import math
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from PIL import Image
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from tqdm import tqdm

from pipeline.data import CachedClipDataset, ClipDataset, train_labels, train_loader
from pipeline.datasets.common import video_table
from pipeline.features import write_cache
from pipeline.losses import build_identity_loss
from pipeline.metrics import evaluate_rank, pairwise_distance
from pipeline.model import DRSA, Backbone, VideoReIDNet
from pipeline.params import LossParams, ModelParams, TrainParams
from pipeline.stages.common import format_table, run, write_json
from pipeline.train import Step, fit

log = logging.getLogger("bench")

ROOT = Path(__file__).resolve().parents[1]
FRAME_SIZE = (256, 128)  # (H, W) of the JPEG files: MARS's own size, resized by the loader
PROTOCOLS = ("official", "torchreid")
MEMORY_LIMIT_MB = 1024.0


# --- sizes ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """Every size the benchmarks use; ``FULL`` for ``make bench``, ``QUICK`` for ``--quick``."""

    identities: int  # training identities of the frame set (benchmarks 1, 4)
    tracklets_per_identity: int
    frames_per_tracklet: int  # frames = identities x tracklets x frames per tracklet
    batch_size: int  # frames per backbone forward pass (the cache stage's cache.batch_size)
    cache_runs: int  # times the cache is written (best of)
    bare_batches: int  # batches per bare backbone run (runs before, between and after the above)
    matmul_n: int  # n of the n x n float32 matmul that measures the machine's FLOP/s
    matmul_repeats: int  # best of
    num_queries: int  # the evaluation problem (MARS: 1980 x 12180, 625 test identities)
    num_gallery: int
    eval_identities: int
    eval_repeats: int  # best of this many runs of evaluate_rank and of the sort bound
    P: int  # identities per training batch (attention stage: 16)
    M: int  # tracklets per identity in a batch (attention stage: 4)
    N: int  # frames per clip (model.N)
    cached_epochs: int  # epochs timed on the cache (one epoch is short); the uncached run has 1
    memory_frames: int  # frames of the x1 memory run (the x4 run caches 4 times as many)
    paper_frames: int  # frames of rows 1-2 with the paper's backbone and input size (0: skip)
    paper_bare_batches: int
    experiment: bool  # run the dvc experiment-overhead benchmark


FULL = Sizes(identities=32, tracklets_per_identity=4, frames_per_tracklet=8, batch_size=64,
             cache_runs=2, bare_batches=8, matmul_n=2048, matmul_repeats=10, num_queries=1980,
             num_gallery=12180, eval_identities=625, eval_repeats=3, P=16, M=4, N=6,
             cached_epochs=5, memory_frames=512, paper_frames=256, paper_bare_batches=1,
             experiment=True)
QUICK = Sizes(identities=4, tracklets_per_identity=2, frames_per_tracklet=4, batch_size=8,
              cache_runs=1, bare_batches=2, matmul_n=256, matmul_repeats=5, num_queries=60,
              num_gallery=600, eval_identities=40, eval_repeats=1, P=2, M=2, N=3,
              cached_epochs=2, memory_frames=16, paper_frames=0, paper_bare_batches=0,
              experiment=False)


@dataclass(frozen=True)
class Setup:
    """What the run measures: the backbone, the frame size, the loader, and the sizes."""

    sizes: Sizes
    backbone: str = "resnet18"
    last_stride: int = 1
    size: tuple[int, int] = (128, 64)  # (H, W) fed to the backbone
    num_workers: int = 2  # DataLoader worker processes (the default run's data.num_workers)
    seed: int = 0
    device: str = "cpu"  # where the backbone and the heads run (rows 1, 2, 4, 5); "cuda" on a GPU

    @property
    def autocast(self) -> bool:
        """bf16 autocast for the backbone, as the pipeline runs it on CUDA (never on CPU)."""
        return torch.device(self.device).type == "cuda"


# --- the result rows ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Target:
    """A bound on a row's ratio: ``ratio >= value`` or ``ratio <= value``."""

    op: str
    value: float

    def met(self, ratio: float) -> bool:
        return ratio >= self.value if self.op == ">=" else ratio <= self.value

    def __str__(self) -> str:
        return f"{self.op} {self.value:g}"


def row(numerator: tuple[str, float], denominator: tuple[str, float], target: Target | None,
        **details: Any) -> dict:
    """One benchmark row: its two figures (numerator first), their ratio, the target, and
    ``details`` (further figures that explain the row, sizes)."""
    ratio = numerator[1] / denominator[1]
    return {"numerator": numerator[0], "denominator": denominator[0],
            "figures": {numerator[0]: numerator[1], denominator[0]: denominator[1]},
            "ratio": ratio, "target": None if target is None else str(target),
            "met": None if target is None else target.met(ratio), **details}


def skipped(reason: str) -> dict:
    return {"skipped": True, "reason": reason}


def timed(fn: Callable[[], Any], repeats: int = 1) -> float:
    """Best wall time of ``repeats`` calls of ``fn``, in seconds (CUDA work included: the clock
    stops once the GPU has finished what ``fn`` queued)."""
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


# --- frames on disk -------------------------------------------------------------------------------


def write_frames(folder: Path, count: int, seed: int = 0) -> list[Path]:
    """``count`` JPEG files of FRAME_SIZE: smooth random colour fields with fine noise, so they
    decode like photographs rather than flat colour. A pool of 32 distinct images is encoded once
    and written round robin, which keeps the setup fast; every file is decoded on its own."""
    rng = np.random.default_rng(seed)
    pool = []
    for _ in range(min(count, 32)):
        coarse = Image.fromarray(rng.integers(0, 256, (16, 8, 3), dtype=np.uint8))
        smooth = np.asarray(coarse.resize(FRAME_SIZE[::-1], Image.BICUBIC), dtype=np.int16)
        noisy = smooth + rng.integers(-12, 13, smooth.shape)
        buffer = io.BytesIO()
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
        pool.append(buffer.getvalue())
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        path = folder / f"{i:06d}.jpg"
        path.write_bytes(pool[i % len(pool)])
        paths.append(path)
    return paths


def tracklet_table(paths: Sequence[Path], frames_per_tracklet: int, tracklets_per_identity: int,
                   repeat: int = 1) -> pd.DataFrame:
    """A training video table (``datasets.common.video_table``) over ``paths`` cut into tracklets:
    consecutive tracklets share an identity, each in its own camera. ``repeat`` > 1 lists the
    frames that many times, as further identities (a bigger dataset from the same files)."""
    rows = []
    for r in range(repeat):
        for t, start in enumerate(range(0, len(paths), frames_per_tracklet)):
            rows.append({"pid": 1 + t // tracklets_per_identity + r * len(paths),
                         "camid": 1 + t % tracklets_per_identity, "subset": "train",
                         "is_query": False,
                         "frames": [str(p) for p in paths[start:start + frames_per_tracklet]]})
    return video_table(rows, Path("<bench>"))


# --- 1. cache throughput and 2. roofline ----------------------------------------------------------


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
    b = backbone
    layers = nn.Sequential(b.conv1, b.bn1, b.relu, b.maxpool, b.layer1, b.layer2, b.layer3,
                           b.layer4)
    nchw = copy.deepcopy(layers).to(memory_format=torch.contiguous_format)
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


PAPER = {"backbone": "resnet50", "last_stride": 2, "size": (256, 128)}


def bench_paper_backbone(setup: Setup, paths: Sequence[Path], workdir: Path) -> dict[str, dict]:
    """Rows 1 and 2 again with the paper's backbone and input (ResNet-50, 256x128), on fewer
    frames, one cache run: rows ``<row>_paper``. Skipped where ``paper_frames`` is 0 (--quick,
    --no-paper) or the run already measures the paper's setting."""
    s = setup.sizes
    keys = ("cache_throughput", "roofline", "roofline_nchw")
    if (setup.backbone, setup.last_stride, setup.size) == tuple(PAPER.values()):
        return {f"{k}_paper": skipped("the main rows are the paper's setting") for k in keys}
    if not s.paper_frames:
        return {f"{k}_paper": skipped("--quick or --no-paper") for k in keys}
    paper = dataclasses.replace(
        setup, **PAPER,
        sizes=dataclasses.replace(s, cache_runs=1, bare_batches=s.paper_bare_batches))
    log.info("1-2 again with the paper's backbone: ResNet-50 at 256x128")
    torch.manual_seed(setup.seed)
    backbone = Backbone(paper.backbone, paper.last_stride).eval()
    table = tracklet_table(paths[:s.paper_frames], s.frames_per_tracklet,
                           s.tracklets_per_identity)
    rows = bench_cache_and_roofline(paper, backbone, table, workdir / "cache-paper.h5",
                                    loader_check=False)
    return {f"{k}_paper": rows[k] for k in keys}


# --- 3. evaluation --------------------------------------------------------------------------------


def mars_like_problem(num_q: int, num_g: int, num_ids: int, cameras: int = 6, dim: int = 128,
                      seed: int = 0) -> tuple[np.ndarray, ...]:
    """A ranking problem shaped like MARS's test set: (distmat, q_pids, g_pids, q_camids,
    g_camids).

    The gallery holds tracklets of ``num_ids`` identities (pids 1..num_ids, about num_g / num_ids
    each, cameras drawn at random, so nearly every identity is seen by several cameras), 10%
    distractors (pid 0) and 5% junk (pid -1). Queries are gallery tracklets of identities, as in
    MARS's official protocol (a query finds itself at distance 0, as junk: same pid and camera).
    Features are 128-d and L2-normalised: an identity's centre plus noise, random for pids 0 and
    -1. The same matrix serves both protocols; under ``torchreid`` the junk tracklets simply count
    as non-matches, which costs the same.
    """
    rng = np.random.default_rng(seed)
    num_junk, num_distractors = num_g // 20, num_g // 10
    num_people = num_g - num_junk - num_distractors
    people = np.sort(rng.integers(0, num_ids, num_people)) + 1
    people[:num_ids] = np.arange(1, num_ids + 1)  # every identity at least once
    g_pids = np.concatenate([people, np.zeros(num_distractors, np.int64),
                             np.full(num_junk, -1, np.int64)])
    g_camids = rng.integers(1, cameras + 1, num_g)

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=1, keepdims=True)

    centres = unit(rng.standard_normal((num_ids + 1, dim)))
    feats = unit(rng.standard_normal((num_g, dim)))
    is_person = g_pids > 0
    feats[is_person] = unit(centres[g_pids[is_person]] + 0.12 * rng.standard_normal(
        (int(is_person.sum()), dim)))
    shuffle = rng.permutation(num_g)
    g_pids, g_camids, feats = g_pids[shuffle], g_camids[shuffle], feats[shuffle]
    queries = rng.choice(np.flatnonzero(g_pids > 0), num_q, replace=False)
    distmat = pairwise_distance(feats[queries], feats)
    return distmat, g_pids[queries], g_pids, g_camids[queries], g_camids


def usual_evaluator(distmat: np.ndarray, q_pids: np.ndarray, g_pids: np.ndarray,
                    q_camids: np.ndarray, g_camids: np.ndarray, max_rank: int = 20,
                    protocol: str = "torchreid") -> dict:
    """CMC and mAP the usual way: the reference ``evaluate_rank`` is compared with.

    The shape of the classic torchreid ``eval_market1501``: one full argsort of the distance matrix,
    a (num_q, num_g) match matrix, then a Python loop over the queries that drops the junk of each,
    takes cumulative sums, and computes the precision at every rank item by item. The argsort is
    stable, as ``evaluate_rank``'s, so tied distances rank alike. Protocols as in
    ``pipeline.metrics``: ``torchreid`` (junk = same pid and camera; AP = mean precision at the true
    matches; queries without a match skipped) or ``official`` (junk also pid -1; trapezoid AP;
    every query counts, a query without a match scores 0). Assumes more than ``max_rank`` non-junk
    gallery items per query.
    """
    num_q = distmat.shape[0]
    indices = np.argsort(distmat, axis=1, kind="stable")
    matches = (g_pids[indices] == q_pids[:, None]).astype(np.int32)
    all_cmc, all_ap = [], []
    for q_idx in tqdm(range(num_q), desc=f"usual evaluator ({protocol})", unit="query",
                      leave=False, mininterval=1.0):
        order = indices[q_idx]
        remove = (g_pids[order] == q_pids[q_idx]) & (g_camids[order] == q_camids[q_idx])
        if protocol == "official":
            remove |= g_pids[order] == -1
        raw_cmc = matches[q_idx][~remove]  # 1 at the true matches, junk dropped
        if not raw_cmc.any():
            if protocol == "official":
                all_cmc.append(np.zeros(max_rank))
                all_ap.append(0.0)
            continue
        cmc = raw_cmc.cumsum()
        cmc[cmc > 1] = 1
        all_cmc.append(cmc[:max_rank])
        num_rel = raw_cmc.sum()
        hits = raw_cmc.cumsum()
        precision = np.asarray([x / (i + 1.0) for i, x in enumerate(hits)])  # item by item
        if protocol == "official":  # mean of the precision here and one item before (1 at first)
            previous = np.concatenate([[1.0], precision[:-1]])
            precision = (previous + precision) / 2
        all_ap.append(float((precision * raw_cmc).sum() / num_rel))
    if not all_ap:
        raise ValueError("no query has a true match in the gallery")
    return {"cmc": np.asarray(all_cmc, dtype=np.float64).sum(axis=0) / len(all_cmc),
            "mAP": float(np.mean(all_ap)), "num_queries": num_q}


def sort_bound(distmat: np.ndarray) -> np.ndarray:
    """The work every ranking evaluator must do, and nothing else: one stable argsort per query
    row (the sort ``evaluate_rank`` uses). Returns each row's nearest gallery index."""
    return np.array([np.argsort(r, kind="stable")[0] for r in distmat])


def peak_extra_mb(fn: Callable[[], Any]) -> float:
    """Peak memory allocated while ``fn`` runs, beyond what was allocated before, in MB, as
    ``tracemalloc`` sees it (Python objects and numpy's array buffers)."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        fn()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return (peak - base) / 2 ** 20


def bench_evaluation(setup: Setup) -> dict[str, dict]:
    """Rows 3: per protocol, evaluate_rank against the usual evaluator (speed-up), against the sort
    bound (how close to it), and its peak extra memory. The scores of evaluate_rank and the usual
    evaluator are compared, so both did the same work."""
    s = setup.sizes
    log.info("3. evaluation: %d queries x %d gallery items", s.num_queries, s.num_gallery)
    problem = mars_like_problem(s.num_queries, s.num_gallery, s.eval_identities, seed=setup.seed)
    distmat = problem[0]
    sort_s = timed(lambda: sort_bound(distmat), s.eval_repeats)
    size = {"num_queries": s.num_queries, "num_gallery": s.num_gallery,
            "distmat_MB": distmat.nbytes / 2 ** 20}
    rows = {}
    for protocol in PROTOCOLS:
        ours: dict = {}

        def run_ours(protocol: str = protocol, ours: dict = ours) -> None:
            ours.update(evaluate_rank(*problem, protocol=protocol))

        ours_s = timed(run_ours, s.eval_repeats)
        start = time.perf_counter()
        usual = usual_evaluator(*problem, protocol=protocol)
        usual_s = time.perf_counter() - start
        memory = peak_extra_mb(run_ours)
        cmc_diff = float(np.abs(ours["cmc"] - usual["cmc"]).max())
        map_diff = abs(ours["mAP"] - usual["mAP"])
        log.info("%s: evaluate_rank %.3f s, usual evaluator %.3f s, sort bound %.3f s, "
                 "%.1f MB extra; |CMC diff| %.2g, |mAP diff| %.2g", protocol, ours_s, usual_s,
                 sort_s, memory, cmc_diff, map_diff)
        rows[f"eval_{protocol}_speedup"] = row(
            ("usual_evaluator_s", usual_s), ("evaluate_rank_s", ours_s), Target(">=", 20),
            max_abs_diff_cmc=cmc_diff, abs_diff_mAP=map_diff, rank1=float(ours["cmc"][0]),
            mAP=ours["mAP"], num_valid_queries=ours["num_valid_queries"], **size)
        rows[f"eval_{protocol}_vs_sort"] = row(
            ("evaluate_rank_s", ours_s), ("sort_bound_s", sort_s), Target("<=", 1.5), **size)
        rows[f"eval_{protocol}_memory"] = row(
            ("peak_extra_MB", memory), ("limit_MB", MEMORY_LIMIT_MB), Target("<=", 1.0),
            method="tracemalloc (numpy buffers traced), a separate untimed run", **size)
    return rows


# --- 4. attention training on cached grids --------------------------------------------------------


def bench_attention(setup: Setup, backbone: Backbone, table: pd.DataFrame, cache_path: Path,
                    scratch: Path) -> dict[str, dict]:
    """Row 4: the attention stage's phase-2 step (all DRSA heads, OIM plus the diversity term;
    the default run's model and loss params) for one epoch of P x M identity batches, on the cache
    and on frames through the frozen backbone. The same seed gives both the same batches."""
    s = setup.sizes
    model_cfg = dataclasses.replace(ModelParams(), backbone=setup.backbone, init="scratch",
                                    last_stride=setup.last_stride, N=s.N)
    loss_cfg = LossParams()
    pids = table["pid"].tolist()
    labels = train_labels(pids)
    targets = [labels[int(p)] for p in pids]

    def epochs(model: nn.Module, dataset, count: int, name: str,
               set_train_mode: Callable[[], None] | None = None) -> tuple[float, int]:
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
            key=name, desc=f"bench {name}", set_train_mode=set_train_mode,
            autocast=setup.autocast and name == "uncached")  # bf16 for the backbone only
        return (time.perf_counter() - start) / count, len(loader)

    log.info("4. attention epoch: %d tracklets, P=%d x M=%d, N=%d", len(table), s.P, s.M, s.N)
    torch.manual_seed(setup.seed)
    cached_heads = DRSA(model_cfg, backbone.out_channels)
    cached = CachedClipDataset(cache_path, "train", s.N, labels)
    cached_s, batches = epochs(cached_heads, cached, s.cached_epochs, "cached")

    frozen = copy.deepcopy(backbone)
    for param in frozen.parameters():
        param.requires_grad_(False)
    torch.manual_seed(setup.seed)
    net = VideoReIDNet(frozen, DRSA(model_cfg, backbone.out_channels))

    def train_mode() -> None:
        net.train()
        net.backbone.eval()

    frames = ClipDataset(table["frames"].tolist(), targets, s.N, setup.size, augment=False)
    uncached_s, _ = epochs(net, frames, 1, "uncached", train_mode)
    return {"attention_cached_epoch": row(
        ("uncached_epoch_s", uncached_s), ("cached_epoch_s", cached_s), None,
        batches_per_epoch=batches, clips_per_batch=s.P * s.M, frames_per_clip=s.N,
        cached_epochs_timed=s.cached_epochs, num_workers=setup.num_workers,
        backbone_in_loop="frozen: eval mode, no gradients")}


# --- 5. memory flatness ---------------------------------------------------------------------------


def _rss_kb(field: str) -> int:
    """A ``/proc/self/status`` memory figure (VmRSS: now, VmHWM: peak), in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise KeyError(field)


def _reset_peak_rss() -> bool:
    """Reset this process's peak RSS (VmHWM) to its current RSS (Linux >= 4.0: ``clear_refs``
    5), so that it then measures what follows rather than the imports. False where refused."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def cache_child(spec_path: str) -> dict:
    """Body of the memory benchmark's subprocess: cache the frames that ``spec_path`` (a JSON
    file) lists and report this process's RSS (KiB) when caching starts, its peak during caching
    (VmHWM, reset after the imports; ``ru_maxrss`` is reported beside it, but on Linux it also
    keeps the peak of the process image before ``exec``), and the peak of its loader workers."""
    spec = json.loads(Path(spec_path).read_text())
    torch.set_num_threads(spec["threads"])
    backbone = Backbone(spec["backbone"], spec["last_stride"])
    device = spec["device"]
    table = tracklet_table([Path(p) for p in spec["paths"]], spec["frames_per_tracklet"],
                           spec["tracklets_per_identity"], spec["repeat"])
    reset = _reset_peak_rss()
    before = _rss_kb("VmRSS")
    start = time.perf_counter()
    write_cache(spec["out"], backbone, {"train": table}, tuple(spec["size"]),
                {"checkpoint_sha256": "bench"}, batch_size=spec["batch_size"],
                num_workers=spec["num_workers"], device=device,
                autocast=torch.device(device).type == "cuda")
    return {"frames": int(sum(len(f) for f in table["frames"])),
            "seconds": time.perf_counter() - start, "peak_reset": reset, "rss_before_kb": before,
            "peak_rss_kb": _rss_kb("VmHWM"),
            "maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
            "workers_maxrss_kb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}


_CHILD = "import json, sys; from pipeline.bench import cache_child; " \
         "print('BENCH ' + json.dumps(cache_child(sys.argv[1])))"


def bench_memory(setup: Setup, paths: Sequence[Path], workdir: Path) -> dict[str, dict]:
    """Row 5: ``write_cache`` in a fresh process per dataset size (x1, x4 frames; the x4 set lists
    the x1 files four times over as further identities), both processes at once."""
    s = setup.sizes
    paths = list(paths[:s.memory_frames])
    log.info("5. memory flatness: caching %d and %d frames in two processes", len(paths),
             4 * len(paths))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    children, logs = {}, {}
    for repeat in (1, 4):
        spec = workdir / f"memory-x{repeat}.json"
        spec.write_text(json.dumps({
            "paths": [str(p) for p in paths], "repeat": repeat,
            "frames_per_tracklet": s.frames_per_tracklet,
            "tracklets_per_identity": s.tracklets_per_identity, "backbone": setup.backbone,
            "last_stride": setup.last_stride, "size": list(setup.size),
            "batch_size": s.batch_size, "num_workers": setup.num_workers,
            "threads": torch.get_num_threads(), "device": setup.device,
            "out": str(workdir / f"memory-x{repeat}.h5")}))
        logs[repeat] = workdir / f"memory-x{repeat}.log"  # files, not pipes: nothing can block
        with logs[repeat].open("w") as output:
            children[repeat] = subprocess.Popen(
                [sys.executable, "-c", _CHILD, str(spec)], cwd=workdir, env=env, stdout=output,
                stderr=subprocess.STDOUT, text=True)
    results = {}
    for repeat, child in children.items():
        child.wait()
        output = logs[repeat].read_text()
        if child.returncode:
            raise RuntimeError(f"the x{repeat} memory run failed:\n{output[-3000:]}")
        line = next(x for x in output.splitlines() if x.startswith("BENCH "))
        results[repeat] = json.loads(line.removeprefix("BENCH "))
    mb = {r: results[r]["peak_rss_kb"] / 1024 for r in results}
    return {"cache_memory_flatness": row(
        ("x4_peak_rss_MB", mb[4]), ("x1_peak_rss_MB", mb[1]), Target("<=", 1.1),
        frames_x1=results[1]["frames"], frames_x4=results[4]["frames"],
        growth_MB=mb[4] - mb[1],
        rss_at_start_MB={f"x{r}": results[r]["rss_before_kb"] / 1024 for r in results},
        workers_peak_rss_MB={f"x{r}": results[r]["workers_maxrss_kb"] / 1024 for r in results},
        ru_maxrss_MB={f"x{r}": results[r]["maxrss_kb"] / 1024 for r in results},
        cache_s={f"x{r}": results[r]["seconds"] for r in results},
        method="peak RSS (VmHWM) of a fresh caching process per size, "
               + ("reset after the imports" if all(r["peak_reset"] for r in results.values())
                  else "imports included (the reset was refused)"))}


# --- 6. experiment overhead -----------------------------------------------------------------------

# A tiny configuration (also the end-to-end tests'): every stage runs, in about a minute.
TINY = {
    "data": {"height": 32, "width": 16, "num_workers": 0},
    "synthetic": {"train_identities": 4, "test_identities": 4, "image_identities": 4,
                  "images_per_identity": 2, "cameras": 2, "tracklets_per_camera": 1,
                  "min_length": 2, "max_length": 5, "distractor_tracklets": 1,
                  "junk_tracklets": 1, "height": 32, "width": 16},
    "model": {"backbone": "resnet18", "init": "scratch", "last_stride": 1, "N": 3, "K": 3,
              "d": 8, "embed_dim": 16},
    "cache": {"batch_size": 16},
    "evaluate": {"batch_size": 8},
}
TINY_STAGES = ("pretrain", "finetune", "attention.spatial", "attention.temporal", "joint")


def tiny_params() -> dict:
    """The project's params.yaml with TINY applied and one short epoch per training stage."""
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    for section, values in TINY.items():
        params[section].update(values)
    for dotted in TINY_STAGES:
        node = params
        for part in dotted.split("."):
            node = node[part]
        node.update({"epochs": 1, "identities_per_batch": 2, "instances_per_identity": 2,
                     "lr_step_epoch": 1})
    return params


def tiny_repo(work: Path) -> None:
    """A git repository holding a copy of the pipeline (code, dvc.yaml, DVC config) with tiny
    params, committed."""
    work.mkdir(parents=True)
    for name in ("dvc.yaml", ".dvcignore", ".gitignore"):
        shutil.copy(ROOT / name, work / name)
    shutil.copytree(ROOT / "pipeline", work / "pipeline",
                    ignore=shutil.ignore_patterns("__pycache__"))
    (work / ".dvc").mkdir()
    for name in ("config", ".gitignore"):
        shutil.copy(ROOT / ".dvc" / name, work / ".dvc" / name)
    shutil.copytree(ROOT / ".dvc" / "plots", work / ".dvc" / "plots")
    (work / "data" / "archives").mkdir(parents=True)
    shutil.copy(ROOT / "data" / ".gitignore", work / "data" / ".gitignore")
    (work / "data" / "archives" / ".gitkeep").touch()
    (work / "params.yaml").write_text(yaml.safe_dump(tiny_params(), sort_keys=False))
    _sh(work, "git", "init", "-q")
    _sh(work, "git", "add", "-A")
    _sh(work, "git", "commit", "-q", "-m", "tiny pipeline")


def _sh(work: Path, *cmd: str) -> float:
    """Run ``cmd`` in ``work`` with the venv's bin first on PATH; its wall time in seconds."""
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(work.parent),
           "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@localhost",
           "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@localhost",
           "PYTHONDONTWRITEBYTECODE": "1",
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(torch.get_num_threads()))}
    start = time.perf_counter()
    result = subprocess.run(cmd, cwd=work, env=env, capture_output=True, text=True, check=False)
    if result.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{result.stdout[-3000:]}\n"
                           f"{result.stderr[-3000:]}")
    return time.perf_counter() - start


def bench_experiment(setup: Setup, workdir: Path) -> dict[str, dict]:
    """Row 6: ``dvc repro`` of the tiny configuration, commit, then ``dvc exp run -S model.K=8``
    (which re-runs only the stages K affects)."""
    if not setup.sizes.experiment:
        return {"experiment_overhead": skipped("--quick")}
    if shutil.which("git") is None or not (Path(sys.executable).parent / "dvc").exists():
        return {"experiment_overhead": skipped("needs git and dvc in the interpreter's bin")}
    log.info("6. experiment overhead: dvc repro, then dvc exp run -S model.K=8 (tiny config)")
    repo = workdir / "exp" / "repo"
    shutil.rmtree(repo.parent, ignore_errors=True)  # a kept --workdir starts afresh
    tiny_repo(repo)
    repro_s = _sh(repo, "dvc", "repro")
    _sh(repo, "git", "add", "-A")
    _sh(repo, "git", "commit", "-q", "-m", "repro")
    exp_s = _sh(repo, "dvc", "exp", "run", "-S", "model.K=8")
    return {"experiment_overhead": row(
        ("exp_run_s", exp_s), ("repro_s", repro_s), None,
        config="tiny (bench.TINY), model.K 3 -> 8")}


# --- the run --------------------------------------------------------------------------------------


def machine(device: str = "cpu") -> dict:
    """What the figures were measured on."""
    gpu = (torch.cuda.get_device_name(torch.device(device))
           if torch.device(device).type == "cuda" else None)
    return {"cpu_count": os.cpu_count(), "cpus_usable": len(os.sched_getaffinity(0)),
            "processor": _cpu_model() or platform.processor() or platform.machine(),
            "gpu": gpu, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "torch_threads": torch.get_num_threads(),
            "load_average_at_start": list(os.getloadavg())}


def _cpu_model() -> str | None:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return None


def run_all(setup: Setup, workdir: Path, quick: bool = False) -> dict:
    """Every benchmark in order; the JSON-able result."""
    s = setup.sizes
    start = time.perf_counter()
    frames = s.identities * s.tracklets_per_identity * s.frames_per_tracklet
    paths = write_frames(workdir / "frames", max(frames, s.memory_frames), setup.seed)
    table = tracklet_table(paths[:frames], s.frames_per_tracklet, s.tracklets_per_identity)
    torch.manual_seed(setup.seed)
    backbone = Backbone(setup.backbone, setup.last_stride).eval()
    cache_path = workdir / "cache.h5"

    benchmarks: dict[str, dict] = {}
    benchmarks.update(bench_cache_and_roofline(setup, backbone, table, cache_path))
    benchmarks.update(bench_paper_backbone(setup, paths, workdir))
    benchmarks.update(bench_evaluation(setup))
    benchmarks.update(bench_attention(setup, backbone, table, cache_path, workdir / "scratch"))
    benchmarks.update(bench_memory(setup, paths, workdir))
    benchmarks.update(bench_experiment(setup, workdir))
    return {"quick": quick, "machine": machine(setup.device),
            "setup": {"backbone": setup.backbone, "last_stride": setup.last_stride,
                      "input": list(setup.size), "num_workers": setup.num_workers,
                      "seed": setup.seed, "frame_files": list(FRAME_SIZE),
                      "device": setup.device},
            "sizes": dataclasses.asdict(s), "benchmarks": benchmarks,
            "total_s": time.perf_counter() - start}


def table_rows(benchmarks: dict[str, dict]) -> Iterator[list[str]]:
    """One terminal row per benchmark: name, figures, ratio, target, met."""
    for name, b in benchmarks.items():
        if b.get("skipped"):
            yield [name, f"skipped ({b['reason']})", "-", "-", "-"]
            continue
        figures = ", ".join(f"{k} {v:.4g}" for k, v in b["figures"].items())
        met = "-" if b["met"] is None else ("yes" if b["met"] else "no")
        yield [name, figures, f"{b['ratio']:.3g}", b["target"] or "report", met]


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("metrics/bench.json"))
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes: a smoke test of every benchmark")
    parser.add_argument("--backbone", default="resnet18",
                        help="resnet18 (default run), resnet34, resnet50 (paper)")
    parser.add_argument("--last-stride", type=int, default=1, choices=(1, 2))
    parser.add_argument("--height", type=int, default=128, help="input height (paper: 256)")
    parser.add_argument("--width", type=int, default=64, help="input width (paper: 128)")
    parser.add_argument("--batch-size", type=int, help="frames per backbone pass (default 64)")
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--no-paper", action="store_true",
                        help="skip rows 1-2 with the paper's ResNet-50 at 256x128")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu",
                        help="where models run: cpu (default), cuda or cuda:<i> (rows 1, 2, 4, 5; "
                             "the backbone under bf16 autocast on CUDA, as in the pipeline)")
    parser.add_argument("--workdir", type=Path,
                        help="keep the frames, caches and repository here (default: a temporary "
                             "folder, deleted at the end)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = QUICK if args.quick else FULL
    if args.batch_size:
        sizes = dataclasses.replace(sizes, batch_size=args.batch_size)
    if args.no_paper:
        sizes = dataclasses.replace(sizes, paper_frames=0)
    try:
        device = torch.device(args.device)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        parser.error(f"--device {args.device}: expected cpu, cuda or cuda:<index>")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error(f"--device {args.device}: no CUDA device is available here")
    setup = Setup(sizes, args.backbone, args.last_stride, (args.height, args.width),
                  args.num_workers, args.seed, str(device))

    with contextlib.ExitStack() as stack:
        if args.workdir:
            workdir = args.workdir.resolve()
            workdir.mkdir(parents=True, exist_ok=True)
        else:
            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-")))
        result = run_all(setup, workdir, args.quick)
    write_json(args.out, result)
    print(format_table(["benchmark", "figures", "ratio", "target", "met"],
                       list(table_rows(result["benchmarks"]))))
    log.info("wrote %s (%.0f s in all)", args.out, result["total_s"])
    return result


if __name__ == "__main__":
    run(main)
