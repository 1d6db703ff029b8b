"""The res5c feature cache (HDF5; the grids of the backbone's ``model.grid_block``, res5c by
default) and batched feature extraction.

With the CNN fixed, the attention heads only ever see res5c grids, so the cache stage computes them
once and every attention experiment (K, d, diversity, enhancement, pooling, learning rates) trains
on the file instead of re-running the backbone.

File layout, one group per subset (``train``, ``test``)::

    <subset>/grids        (F, D, h, w) float16, chunked one frame per chunk, F = cached frames
    <subset>/offsets      (T + 1,) int64: tracklet t owns grids[offsets[t]:offsets[t + 1]]
    <subset>/frame_index  (F,) int32: position of each cached frame in its tracklet
    <subset>/pids, camids (T,) int64; is_query (T,) bool
    <subset>/parts        (F, P, h, w) float16, only for tables with label maps (the synthetic
                          set): the fraction of each grid cell's pixels that have label p
    <subset>/visibility   (F, P) float16, likewise: per label, its visible pixels / its pixels
                          without the occluder (NaN: label 0, and labels absent without it)

``parts`` and ``visibility`` are the ground truth the attention is measured against: a cached
frame's visible label map (``pipeline.tables.LABELS``) resized to the network input (nearest
neighbour) and pooled into the h x w grid, pixel row r and column c falling in cell
(r * h // H, c * w // W) as ``pipeline.figures.cell_maps`` draws it, so each cell's fractions sum
to 1; ``visibility`` counts the label map at its own size. The file attribute ``part_names`` names
the P labels; ``attention_stats.read_parts`` reads the three, or None from a cache of a set
without label maps.

Attributes record what the grids depend on (``checkpoint_sha256``, ``backbone``, ``last_stride``,
``grid_block``: the backbone's block whose output they are, stored only when not its last, see
``LATER_ATTRS``; ``height``, ``width``, ``max_frames_per_tracklet``); ``open_cache`` refuses a
file whose attributes differ from what the caller expects. Grids are written batch by batch
(memory does not grow with the dataset) into a temporary file that is renamed only when complete;
under torchrun the ranks share the frames and rank 0 writes. Disk cost: D x h x w x 2 bytes per
frame, 128 KiB at 2048 x 8 x 4.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pipeline import distributed
from pipeline.data import eval_loader, load_frame
from pipeline.errors import CacheError
from pipeline.files import atomic_path, check_room, check_writable, sha256_file
from pipeline.model import HeadOutput
from pipeline.params import canonical_grid_block

log = logging.getLogger(__name__)
CACHE_FORMAT = 1
SUBSETS = ("train", "test")


def cache_attrs(model_path: str | Path, payload: dict, grid_block: str | None = None) -> dict:
    """What the grids depend on (the backbone checkpoint's hash and architecture, and with
    ``grid_block`` the block whose output they are: ``model.grid_block``, ``last`` also for the
    name of the backbone's last block), as written by the cache stage and checked by every reader
    (a reader without ``grid_block`` does not check it)."""
    cfg = payload["model_params"]
    attrs = {"checkpoint_sha256": sha256_file(model_path), "backbone": cfg["backbone"],
             "last_stride": cfg["last_stride"]}
    if grid_block is not None:
        attrs["grid_block"] = canonical_grid_block(cfg["backbone"], grid_block,
                                                   f" (the backbone of {model_path})")
    return attrs


# Attributes added after caches were first written, with the value a file without them was made
# with: stored only when they differ from it, so that a cache of the default setting keeps its
# bytes (and DVC its hash); readers take the absent attribute for this value.
LATER_ATTRS = {"grid_block": "last"}


def stored_attrs(attrs: dict) -> dict:
    """The file attributes of ``attrs`` (``LATER_ATTRS`` only where they differ)."""
    return {k: v for k, v in attrs.items() if k not in LATER_ATTRS or v != LATER_ATTRS[k]}


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
    free = check_room(path, needed, what, ", point data/cache at a larger disk, or lower "
                      f"cache.max_frames_per_tracklet{remedy}", CacheError)
    log.info("%s: %s, about %.2f GB to write, %.2f GB free", path, what, needed / 1e9, free / 1e9)


def label_fractions(labels: np.ndarray, grid: tuple[int, int], num_labels: int) -> np.ndarray:
    """The fraction of each grid cell's pixels that have each label: ``labels`` (H, W) integer
    label map -> (P, h, w) float64 for ``grid`` = (h, w), P = ``num_labels``; pixel (r, c) lies in
    cell (r * h // H, c * w // W), as ``pipeline.figures.cell_maps`` draws a cell. Each cell's
    fractions sum to 1."""
    H, W = labels.shape
    h, w = grid
    if h > H or w > W:
        raise ValueError(f"a {H} x {W} label map has fewer pixels than the {h} x {w} grid")
    cells = (np.arange(H) * h // H)[:, None] * w + (np.arange(W) * w // W)[None, :]  # (H, W)
    counts = np.bincount((labels.astype(np.int64) * (h * w) + cells).ravel(),
                         minlength=num_labels * h * w).reshape(num_labels, h, w)
    return counts / np.bincount(cells.ravel(), minlength=h * w).reshape(h, w)


def label_visibility(visible: np.ndarray, unoccluded: np.ndarray, num_labels: int) -> np.ndarray:
    """Per label, its visible pixels / its pixels without the occluder: (P,) float64 from two
    (H, W) label maps; NaN for a label without pixels in ``unoccluded`` (the occluder's own label
    always) and for label 0 (the background)."""
    shown = np.bincount(visible.ravel(), minlength=num_labels).astype(np.float64)
    whole = np.bincount(unoccluded.ravel(), minlength=num_labels).astype(np.float64)
    fraction = np.full(num_labels, np.nan)
    np.divide(shown, whole, out=fraction, where=whole > 0)
    fraction[0] = np.nan
    return fraction


def label_channels(path: str | Path) -> tuple[Image.Image, Image.Image]:
    """The two channels of a label map file (a 2-channel "LA" PNG, ``pipeline.tables.LABELS``):
    the visible labels and the labels without the occluder; anything else is a CacheError."""
    try:
        with Image.open(path) as image:
            if image.mode != "LA":
                raise CacheError(f"{path}: a label map must be a 2-channel (LA) image, this one "
                                 f"is {image.mode}")
            image.load()
            return image.getchannel("L"), image.getchannel("A")
    except (OSError, UnidentifiedImageError, SyntaxError) as err:
        raise CacheError(f"{path}: cannot read the label map ({err})") from err


def at_input_size(labels: Image.Image, size: tuple[int, int]) -> np.ndarray:
    """A label channel at the network's input ``size`` = (H, W), nearest neighbour (as the frames
    are resized), as an array."""
    return np.asarray(labels.resize((size[1], size[0]), Image.NEAREST))


def read_label_map(path: str | Path, size: tuple[int, int], grid: tuple[int, int],
                   num_labels: int) -> tuple[np.ndarray, np.ndarray]:
    """A label map file (a 2-channel "LA" PNG: visible labels, labels without the occluder) as
    (``label_fractions`` of its visible labels resized to ``size`` = (H, W) by nearest neighbour,
    ``label_visibility``). A file that is not such a map, or has a label >= ``num_labels``, is a
    CacheError."""
    visible, unoccluded = label_channels(path)
    resized = at_input_size(visible, size)
    visible, unoccluded = np.asarray(visible), np.asarray(unoccluded)
    top = max(int(visible.max()), int(unoccluded.max()))
    if top >= num_labels:
        raise CacheError(f"{path}: label {top} in a label map of {num_labels} labels")
    return (label_fractions(resized, grid, num_labels),
            label_visibility(visible, unoccluded, num_labels))


def _labelled(table: pd.DataFrame, path: Path, subset: str) -> bool:
    """Whether the tracklets of ``table`` have label maps: all of them (True) or none (False, as
    in every real set); some but not all is a CacheError."""
    if "labels" not in table.columns:
        return False
    has = table["labels"].map(len) > 0
    if has.any() and not has.all():
        raise CacheError(f"{path}: {int((~has).sum())} of the {len(table)} {subset} tracklets "
                         "have no label maps, the others have: expected all or none")
    return bool(has.all())


def _write_parts(group: h5py.Group, table: pd.DataFrame, picks: list[np.ndarray],
                 size: tuple[int, int], grid: tuple[int, int], num_labels: int,
                 block: int = 4096) -> None:
    """``group``'s ``parts`` and ``visibility`` of the cached frames (``picks`` of each tracklet),
    from their label maps, written ``block`` frames at a time."""
    maps = [labels[i] for labels, p in zip(table["labels"], picks, strict=True) for i in p]
    parts = group.create_dataset("parts", shape=(len(maps), num_labels, *grid), dtype=np.float16)
    visibility = group.create_dataset("visibility", shape=(len(maps), num_labels),
                                      dtype=np.float16)
    for start in range(0, len(maps), block):
        read = [read_label_map(m, size, grid, num_labels) for m in maps[start:start + block]]
        parts[start:start + len(read)] = np.stack([r[0] for r in read]).astype(np.float16)
        visibility[start:start + len(read)] = np.stack([r[1] for r in read]).astype(np.float16)


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
    part_names: Sequence[str] = (),
) -> None:
    """Run ``backbone`` over the selected frames of every tracklet and stream the grids to
    ``path``. ``tables`` maps a subset name to its video table; ``attrs`` are stored as file
    attributes (with ``max_frames_per_tracklet``, ``height``, ``width``). A table whose tracklets
    have label maps (its ``labels`` column) also gets the ``parts`` and ``visibility`` of its
    cached frames, for the labels ``part_names`` (``pipeline.tables.LABELS``; stored as the file
    attribute ``part_names``).

    Under torchrun every rank computes its share of the batches (``distributed.my_batches``: the
    same batches as one process, so the same grids) and sends them, as fp16, to rank 0, which alone
    writes the file; every rank calls this with the same arguments and returns once the file is
    in place."""
    path = Path(path)
    main = distributed.world().is_main
    if main:  # a read-only or full folder fails now, not after the backbone ran over every frame
        check_writable(path.parent)
    device = torch.device(device)
    backbone = backbone.to(device).eval()
    grid = grid_shape(backbone, size, device)
    labelled = {subset: _labelled(table, path, subset) for subset, table in tables.items()}
    if any(labelled.values()) and not part_names:
        raise CacheError(f"{path}: the tracklets have label maps, but no part_names name them")
    run = functools.partial(_run_backbone, backbone, size=size, grid=grid, batch_size=batch_size,
                            num_workers=num_workers, device=device, autocast=autocast)
    with atomic_path(path) if main else contextlib.nullcontext() as tmp:
        if main:  # (atomic_path removed a killed run's leftover: it does not count as used)
            frames = sum(len(select_frames(len(f), max_frames)) for t in tables.values()
                         for f in t["frames"])
            check_free_space(path, frames * int(np.prod(grid)) * 2)
        with h5py.File(tmp, "w") if main else contextlib.nullcontext() as f:
            if f is not None:
                f.attrs.update({**stored_attrs(attrs), "format": CACHE_FORMAT, "height": size[0],
                                "width": size[1], "max_frames_per_tracklet": max_frames})
                if any(labelled.values()):
                    f.attrs["part_names"] = list(part_names)
            for subset, table in tables.items():
                if table.empty:
                    raise CacheError(f"{path}: no {subset} tracklets to cache")
                picks = [select_frames(len(frames), max_frames) for frames in table["frames"]]
                paths = [Path(frames[i]) for frames, p in zip(table["frames"], picks, strict=True)
                         for i in p]
                group, grids = (None, None) if f is None else _index_group(f, subset, table,
                                                                           picks, grid)
                run(paths, desc=f"cache {subset}", grids=grids)
                if group is not None:
                    if labelled[subset]:  # cheap beside the backbone: rank 0 alone
                        _write_parts(group, table, picks, size, grid[1:], len(part_names))
                    log.info("%s: %d tracklets, %d frames cached%s", subset, len(table),
                             len(paths), " with their parts" if labelled[subset] else "")
            if f is not None:
                f.attrs["complete"] = True
    distributed.barrier()  # every rank returns once the file is in place (rank 0 renamed it)


def _index_group(f: h5py.File, subset: str, table: pd.DataFrame, picks: list[np.ndarray],
                 grid: tuple[int, int, int]) -> tuple[h5py.Group, h5py.Dataset]:
    """The group of ``subset``: where each tracklet's frames lie (``offsets``, ``frame_index``),
    its identity, camera and query flag; and its empty ``grids`` dataset, one fp16 grid a row
    (the handle ``create_dataset`` returns: writing through it keeps the file's bytes those of
    one handle's chunk cache, the same from run to run)."""
    offsets = np.concatenate([[0], np.cumsum([len(p) for p in picks])])
    group = f.create_group(subset)
    group["offsets"] = offsets.astype(np.int64)
    group["frame_index"] = np.concatenate(picks).astype(np.int32)
    group["pids"] = table["pid"].to_numpy(np.int64)
    group["camids"] = table["camid"].to_numpy(np.int64)
    group["is_query"] = table["is_query"].to_numpy(bool)
    grids = group.create_dataset("grids", shape=(int(offsets[-1]), *grid), dtype=np.float16,
                                 chunks=(1, *grid))
    return group, grids


def _run_backbone(backbone: nn.Module, paths: list[Path], *, size: tuple[int, int],
                  grid: tuple[int, int, int], batch_size: int, num_workers: int,
                  device: torch.device, autocast: bool, desc: str,
                  grids: h5py.Dataset | None) -> None:
    """Every frame of ``paths`` through ``backbone``, in batches of ``batch_size``. Under
    torchrun each rank computes its share of the batches and sends it to every rank; rank 0 (the
    one given ``grids``) stores each batch's fp16 grids in its rows."""
    world = distributed.world()
    chunks = distributed.batches(len(paths), batch_size)
    mine = distributed.my_batches(chunks, world)
    loader = iter(eval_loader(_Frames(paths, size), batch_size, num_workers,
                              device.type == "cuda"))
    bar = tqdm(total=len(paths), desc=desc, unit="frame", disable=not world.is_main)
    for round_ in range(distributed.num_rounds(len(chunks), world)):
        # the last round can leave a rank without a batch: it sends no grid
        out = torch.zeros(0, *grid, dtype=torch.float16, device=device)
        if round_ < len(mine):
            batch = next(loader)
            with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=autocast):
                out = backbone(batch.to(device, non_blocking=True)).to(torch.float16)
        blocks = distributed.all_gather_(out)  # one block per rank, in rank order
        if grids is None:
            continue
        for rank, block in enumerate(blocks):
            b = round_ * world.size + rank
            if b < len(chunks):
                grids[chunks[b].start:chunks[b].stop] = block.cpu().numpy()
                bar.update(len(chunks[b]))
    bar.close()


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
            stored = f.attrs.get(key, LATER_ATTRS.get(key))
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
    frame_index per grid; where there are ``parts``, one (P, h, w) and ``visibility`` (P,) per
    grid, P the number of ``part_names``."""
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
    if "parts" in group or "visibility" in group:
        P, (h, w) = len(f.attrs.get("part_names", [])), group["grids"].shape[2:]
        for name, shape in (("parts", (F, P, h, w)), ("visibility", (F, P))):
            if not isinstance(group.get(name), h5py.Dataset) or group[name].shape != shape:
                found = group[name].shape if isinstance(group.get(name), h5py.Dataset) else None
                return (f"{subset}/{name} has shape {found}, expected {shape}: one per grid, for "
                        f"the {P} part_names")
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
