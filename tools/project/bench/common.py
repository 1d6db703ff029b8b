"""What every benchmark row shares: the sizes and the setup of a run, the format of a row (two
figures, their ratio, a target), the timer, the JPEG frames on disk and their video table, and the
description of the machine."""

from __future__ import annotations

import io
import logging
import math
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from PIL import Image

from pipeline.stages.common import machine as stage_machine
from pipeline.tables import video_table

log = logging.getLogger("bench")

FRAME_SIZE = (256, 128)  # (H, W) of the JPEG files: MARS's own size, resized by the loader


# --- sizes ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Sizes:
    """Every size the benchmarks use; ``FULL`` for ``make bench``, ``QUICK`` for ``--quick``."""

    # training identities of the frame set (benchmarks 1, 4); FULL: the default run's training
    # set (64 identities x 3 tracklets), so an attention epoch has its 4 batches of P x M clips
    identities: int
    tracklets_per_identity: int
    frames_per_tracklet: int  # frames = identities x tracklets x frames per tracklet
    batch_size: int  # frames per backbone forward pass (the cache stage's cache.batch_size)
    cache_runs: int  # times the cache is written (best of)
    bare_batches: int  # batches per bare backbone run (runs before, between and after the above)
    num_queries: int  # the evaluation problem (MARS: 1980 x 12180, 625 test identities)
    num_gallery: int
    eval_identities: int
    eval_repeats: int  # best of this many runs of evaluate_rank and of the sort bound
    P: int  # identities per training batch (attention stage: 16)
    M: int  # tracklets per identity in a batch (attention stage: 2)
    N: int  # frames per clip (model.N)
    cached_epochs: int  # epochs timed on the cache (one epoch is short); the uncached run has 1
    memory_frames: int  # frames of the x1 memory run (the x4 run caches 4 times as many)
    paper_frames: int  # frames of rows 1-2 with the paper's backbone and input size (0: skip)
    paper_bare_batches: int
    experiment: bool  # run the dvc experiment-overhead benchmark


FULL = Sizes(identities=64, tracklets_per_identity=3, frames_per_tracklet=8, batch_size=64,
             cache_runs=2, bare_batches=8, num_queries=1980,
             num_gallery=12180, eval_identities=625, eval_repeats=3, P=16, M=2, N=6,
             cached_epochs=5, memory_frames=512, paper_frames=256, paper_bare_batches=1,
             experiment=True)
QUICK = Sizes(identities=4, tracklets_per_identity=2, frames_per_tracklet=4, batch_size=8,
              cache_runs=1, bare_batches=2, num_queries=60,
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
    grid_block: str = "last"  # the backbone's block whose grids are cached (model.grid_block)

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


def table_rows(benchmarks: dict[str, dict]) -> Iterator[list[str]]:
    """One terminal row per benchmark: name, figures, ratio, target, met."""
    for name, b in benchmarks.items():
        if b.get("skipped"):
            yield [name, f"skipped ({b['reason']})", "-", "-", "-"]
            continue
        figures = ", ".join(f"{k} {v:.4g}" for k, v in b["figures"].items())
        met = "-" if b["met"] is None else ("yes" if b["met"] else "no")
        yield [name, figures, f"{b['ratio']:.3g}", b["target"] or "report", met]


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
    """A training video table (``pipeline.tables.video_table``) over ``paths`` cut into
    tracklets: consecutive tracklets share an identity, each in its own camera. ``repeat`` > 1
    lists the frames that many times, as further identities (a bigger dataset from the same
    files)."""
    rows = []
    for r in range(repeat):
        for t, start in enumerate(range(0, len(paths), frames_per_tracklet)):
            rows.append({"pid": 1 + t // tracklets_per_identity + r * len(paths),
                         "camid": 1 + t % tracklets_per_identity, "subset": "train",
                         "is_query": False,
                         "frames": [str(p) for p in paths[start:start + frames_per_tracklet]]})
    return video_table(rows, Path("<bench>"))


# --- the machine ----------------------------------------------------------------------------------


def machine(device: str = "cpu") -> dict:
    """What the figures were measured on: the stages' record of the CPU and usable cores
    (``pipeline.stages.common.machine``), the GPU, the library versions and the load."""
    cpu = stage_machine()
    gpu = (torch.cuda.get_device_name(torch.device(device))
           if torch.device(device).type == "cuda" else None)
    return {"cpu_count": os.cpu_count(), "cpus_usable": cpu["cores"], "processor": cpu["cpu"],
            "gpu": gpu, "python": platform.python_version(), "torch": torch.__version__,
            "numpy": np.__version__, "torch_threads": torch.get_num_threads(),
            "load_average_at_start": list(os.getloadavg())}
