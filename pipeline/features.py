"""The res5c feature cache (HDF5) and batched feature extraction.

With the CNN fixed, the attention heads only ever see res5c grids, so the cache stage computes them
once and every attention experiment (K, d, diversity, enhancement, pooling, learning rates) trains
on the file instead of re-running the backbone.

File layout, one group per subset (``train``, ``test``)::

    <subset>/grids        (F, D, h, w) float16, chunked one frame per chunk, F = cached frames
    <subset>/offsets      (T + 1,) int64: tracklet t owns grids[offsets[t]:offsets[t + 1]]
    <subset>/frame_index  (F,) int32: position of each cached frame in its tracklet
    <subset>/pids, camids (T,) int64; is_query (T,) bool

Attributes record what the grids depend on (``checkpoint_sha256``, ``backbone``, ``last_stride``,
``height``, ``width``, ``max_frames_per_tracklet``); ``open_cache`` refuses a file whose attributes
differ from what the caller expects. Grids are written batch by batch (memory does not grow with
the dataset) into a temporary file that is renamed only when complete; under torchrun the ranks
share the frames and rank 0 writes. Disk cost: D x h x w x 2 bytes per frame, 128 KiB at
2048 x 8 x 4.
"""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pipeline import distributed
from pipeline.data import eval_loader, load_frame
from pipeline.errors import CacheError
from pipeline.files import atomic_path, check_writable, sha256_file
from pipeline.model import HeadOutput

log = logging.getLogger(__name__)
CACHE_FORMAT = 1
SUBSETS = ("train", "test")


def cache_attrs(model_path: str | Path, payload: dict) -> dict:
    """What the grids depend on (the backbone checkpoint's hash and architecture), as written by
    the cache stage and checked by every reader."""
    cfg = payload["model_params"]
    return {"checkpoint_sha256": sha256_file(model_path), "backbone": cfg["backbone"],
            "last_stride": cfg["last_stride"]}


def select_frames(num_frames: int, cap: int) -> np.ndarray:
    """Positions of the frames to cache: all of them (``cap`` 0), or ``cap`` evenly spaced ones."""
    if cap <= 0 or num_frames <= cap:
        return np.arange(num_frames)
    return np.unique(np.linspace(0, num_frames - 1, cap).round().astype(np.int64))


class _Frames(Dataset):
    def __init__(self, paths: list[Path], size: tuple[int, int]) -> None:
        self.paths, self.size = paths, size

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> Tensor:
        return load_frame(self.paths[i], self.size)


def grid_shape(backbone: nn.Module, size: tuple[int, int],
               device: torch.device | str = "cpu") -> tuple[int, int, int]:
    """(D, h, w) of the grid ``backbone`` makes of one ``size`` frame (a probe of zeros)."""
    probe = torch.zeros(1, 3, *size, device=device)
    with torch.no_grad():
        D, h, w = backbone(probe).shape[1:]
    return int(D), int(h), int(w)


def cache_bytes(frame_counts: Iterable[int], grid: tuple[int, int, int],
                max_frames: int = 0) -> int:
    """Bytes of the grids of one cache of tracklets of ``frame_counts`` frames: the frames
    ``select_frames`` keeps of each, D x h x w float16 values per frame (HDF5's own structures
    aside: ``check_free_space`` adds them)."""
    frames = sum(len(select_frames(n, max_frames)) for n in frame_counts)
    return frames * math.prod(grid) * 2


def check_free_space(path: Path, needed: int, files: int = 1, what: str = "the feature cache",
                     remedy: str = "") -> None:
    """Fail before writing ``needed`` bytes in ``files`` caches (plus 2% and 64 MiB each for
    HDF5's own structures) beside ``path`` when its file system has less free space, instead of
    filling the disk. ``what`` names what is to be written, ``remedy`` adds a way out."""
    needed = int(needed * 1.02) + files * (64 << 20)
    folder = next(p for p in (path.parent, *path.parents) if p.exists())  # may not exist yet
    free = shutil.disk_usage(folder).free
    log.info("%s: %s, about %.2f GB to write, %.2f GB free", path, what, needed / 1e9, free / 1e9)
    if free < needed:
        raise CacheError(f"{path}: {what} needs about {needed / 1e9:.2f} GB but {path.parent} "
                         f"has {free / 1e9:.2f} GB free; free some space, point data/cache at a "
                         f"larger disk, or lower cache.max_frames_per_tracklet{remedy}")


def write_cache(
    path: str | Path,
    backbone: nn.Module,
    tables: dict[str, pd.DataFrame],
    size: tuple[int, int],
    attrs: dict,
    max_frames: int = 0,
    batch_size: int = 64,
    num_workers: int = 0,
    device: torch.device | str = "cpu",
    autocast: bool = False,
) -> None:
    """Run ``backbone`` over the selected frames of every tracklet and stream the grids to
    ``path``. ``tables`` maps a subset name to its video table; ``attrs`` are stored as file
    attributes (with ``max_frames_per_tracklet``, ``height``, ``width``).

    Under torchrun every rank computes its share of the batches (``distributed.my_batches``: the
    same batches as one process, so the same grids) and sends them, as fp16, to rank 0, which alone
    writes the file; every rank calls this with the same arguments."""
    path = Path(path)
    world = distributed.world()
    main = world.is_main
    if main:  # a read-only or full folder fails now, not after the backbone ran over every frame
        check_writable(path.parent)
    device = torch.device(device)
    backbone = backbone.to(device).eval()
    D, h, w = grid_shape(backbone, size, device)
    with atomic_path(path) if main else contextlib.nullcontext() as tmp:
        if main:  # (atomic_path removed a killed run's leftover: it does not count as used)
            frames = sum(len(select_frames(len(f), max_frames)) for t in tables.values()
                         for f in t["frames"])
            check_free_space(path, frames * int(D * h * w) * 2)
        with h5py.File(tmp, "w") if main else contextlib.nullcontext() as f:
            if main:
                f.attrs.update({**attrs, "format": CACHE_FORMAT, "height": size[0],
                                "width": size[1], "max_frames_per_tracklet": max_frames})
            for subset, table in tables.items():
                if table.empty:
                    raise CacheError(f"{path}: no {subset} tracklets to cache")
                picks = [select_frames(len(frames), max_frames) for frames in table["frames"]]
                offsets = np.concatenate([[0], np.cumsum([len(p) for p in picks])])
                if main:
                    group = f.create_group(subset)
                    group["offsets"] = offsets.astype(np.int64)
                    group["frame_index"] = np.concatenate(picks).astype(np.int32)
                    group["pids"] = table["pid"].to_numpy(np.int64)
                    group["camids"] = table["camid"].to_numpy(np.int64)
                    group["is_query"] = table["is_query"].to_numpy(bool)
                    grids = group.create_dataset("grids", shape=(int(offsets[-1]), D, h, w),
                                                 dtype=np.float16, chunks=(1, D, h, w))
                paths = [Path(frames[i]) for frames, p in zip(table["frames"], picks, strict=True)
                         for i in p]
                chunks = distributed.batches(len(paths), batch_size)
                mine = distributed.my_batches(chunks, world)
                loader = iter(eval_loader(_Frames(paths, size), batch_size, num_workers,
                                          device.type == "cuda"))
                bar = tqdm(total=len(paths), desc=f"cache {subset}", unit="frame",
                           disable=not main)
                for round_ in range(distributed.num_rounds(len(chunks), world)):
                    # the last round can leave a rank without a batch: it sends no grid
                    out = torch.zeros(0, D, h, w, dtype=torch.float16, device=device)
                    if round_ < len(mine):
                        batch = next(loader)
                        with torch.no_grad(), torch.autocast(device.type, torch.bfloat16,
                                                             enabled=autocast):
                            out = backbone(batch.to(device, non_blocking=True)).to(torch.float16)
                    blocks = distributed.all_gather_(out)  # one block per rank, in rank order
                    if not main:
                        continue
                    for rank, block in enumerate(blocks):
                        b = round_ * world.size + rank
                        if b < len(chunks):
                            rows = chunks[b]
                            grids[rows.start:rows.stop] = block.cpu().numpy()
                            bar.update(len(rows))
                bar.close()
                if main:
                    log.info("%s: %d tracklets, %d frames cached", subset, len(table), len(paths))
            if main:
                f.attrs["complete"] = True


def open_cache(path: str | Path, expect: dict) -> h5py.File:
    """Open a cache for reading after checking it is complete and made from ``expect``'s inputs
    (a mismatch is an error naming the attribute, never silently used)."""
    path = Path(path)
    try:
        f = h5py.File(path, "r")
    except OSError as err:
        raise CacheError(f"{path}: not a readable HDF5 feature cache ({err})") from err
    try:
        if not f.attrs.get("complete", False):
            raise CacheError(f"{path}: incomplete feature cache (its writer was interrupted)")
        for key, value in expect.items():
            stored = f.attrs.get(key)
            if stored is None or _plain(stored) != _plain(value):
                raise CacheError(f"{path}: made with {key}={_plain(stored)!r}, but this run "
                                 f"expects {key}={_plain(value)!r}: re-run the cache stage")
        for subset in SUBSETS:
            problem = _layout_problem(f, subset)
            if problem:
                raise CacheError(f"{path}: {problem}, though its attributes say complete; "
                                 "re-run the cache stage")
    except BaseException:
        f.close()
        raise
    return f


def _layout_problem(f: h5py.File, subset: str) -> str:
    """What is wrong with the datasets of ``subset`` ("" when nothing), against the layout of the
    module docstring: every dataset present, grids of 4 dimensions, offsets that start at 0,
    increase and end at the number of grids, one pid, camid and is_query per tracklet, one
    frame_index per grid."""
    names = ("grids", "offsets", "frame_index", "pids", "camids", "is_query")
    group = f.get(subset)
    missing = [f"{subset}/{n}" for n in names if not isinstance(group, h5py.Group)
               or not isinstance(group.get(n), h5py.Dataset)]
    if missing:
        return f"{', '.join(missing)} missing"
    if group["grids"].ndim != 4:
        return f"{subset}/grids has shape {group['grids'].shape}, expected (frames, D, h, w)"
    F, offsets = len(group["grids"]), group["offsets"][()]
    ordered = (offsets.ndim == 1 and len(offsets) > 0 and offsets[0] == 0 and offsets[-1] == F
               and bool(np.all(np.diff(offsets) > 0)))
    if not ordered:
        return f"{subset}/offsets do not start at 0, increase and end at its {F} grids"
    T = len(offsets) - 1
    for name, rows, per in (("pids", T, "tracklet"), ("camids", T, "tracklet"),
                            ("is_query", T, "tracklet"), ("frame_index", F, "grid")):
        if group[name].shape != (rows,):
            return (f"{subset}/{name} has shape {group[name].shape}, expected ({rows},): one "
                    f"per {per}")
    return ""


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


@torch.no_grad()
def embed(model: Callable[[Tensor], HeadOutput], loader: DataLoader, device: torch.device,
          autocast: bool = False, desc: str = "embed",
          record: Callable[[HeadOutput], Any] | None = None) -> tuple[np.ndarray, list]:
    """Embeddings (num_items, E) of every item of a test set, in order, from its ``eval_loader``.
    ``model`` maps a batch of clips (B, N, ...) to a ``HeadOutput``; ``record(output)``, when
    given, is kept for every batch (e.g. statistics of its attention maps).

    Returns:
        The embeddings and the batches' records in batch order (an empty list without
        ``record``). Under torchrun each rank embeds its share of the batches and every rank gets
        all the embeddings and all the records.
    """
    chunks, records = [], []
    for clips, _, _ in tqdm(loader, desc=desc, unit="batch",
                            disable=not distributed.world().is_main):
        with torch.autocast(device.type, torch.bfloat16, enabled=autocast):
            out = model(clips.to(device, non_blocking=True))
        chunks.append(out.embedding.float().cpu().numpy())
        if record is not None:
            records.append(record(out))
    return (np.concatenate(distributed.gather_batches(chunks)),
            distributed.gather_batches(records) if record is not None else [])
