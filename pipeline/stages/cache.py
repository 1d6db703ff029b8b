"""Stage ``cache``: res5c grids of the fine-tuned backbone for every (selected) frame of one video
set's split, in HDF5 (see ``pipeline.features``): the output of its ``model.grid_block``, the
backbone run up to that block only. It reads no attention, loss or pooling params, so
experiments on those never recompute CNN features. A set with label maps (the synthetic one) also
gets, per cached frame, the share of each label in each grid cell and the visible share of each
label (``parts``, ``visibility``: the ground truth the evaluate stage measures attention against).

Before writing, it checks that the disk holds every cache of its set's split matrix not yet
written (``--matrix-index`` and ``--matrix-out`` name split ``{split}``'s index file and cache;
the splits are ``data.splits``): a matrix of 10 splits fails at once, not after hours of caching
the first ones. ``data.splits`` only sizes that check, so the stage does not list it among its
params (a new split would otherwise re-run every cache).

    python -m pipeline.stages.cache --params params.yaml --index data/index/<set>/split_<k>.json \
        --model data/models/<set>-<k>/finetune.pt --out data/cache/<set>-<k>.h5 \
        --matrix-index 'data/index/<set>/split_{split}.json' \
        --matrix-out 'data/cache/<set>-{split}.h5'
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pandas as pd

from pipeline.checkpoints import load_exported
from pipeline.features import (
    SUBSETS,
    cache_attrs,
    cache_bytes,
    check_free_space,
    grid_shape,
    select_frames,
    write_cache,
)
from pipeline.model import grid_backbone
from pipeline.params import load_params
from pipeline.runtime import compiled, start, use_autocast
from pipeline.stages.common import run
from pipeline.tables import LABELS, load_video_index

log = logging.getLogger("cache")


def unwritten_caches(index: Path, out: Path, matrix_index: str | None, matrix_out: str | None,
                     splits: list[int]) -> dict[int | None, tuple[Path, Path]]:
    """Split id -> (index file, cache) of this stage's own cache and of every other split's not
    yet written (no file at its path): the patterns' ``{split}`` filled with each of ``splits``.
    Without the patterns, the own cache alone (its split id None)."""
    if not (matrix_index and matrix_out):
        return {None: (index, out)}
    caches = {}
    for split in splits:
        other = Path(matrix_out.format(split=split))
        if other == out:
            caches[split] = (index, out)
        elif not other.exists():
            caches[split] = (Path(matrix_index.format(split=split)), other)
    return caches if any(o == out for _, o in caches.values()) else {None: (index, out), **caches}


def check_matrix_space(caches: dict[int | None, tuple[Path, Path]], grid: tuple[int, int, int],
                       max_frames: int, out: Path, own: pd.DataFrame,
                       matrix_out: str | None) -> None:
    """Fail naming the total, the free space and the remedies when the disk beside ``out``
    cannot hold every cache of ``caches`` (``grid``: D, h, w of one frame, float16 values), the
    frame counts read from their index files (``own``: the table of ``out``'s, already read).
    ``out`` alone is left to ``write_cache``'s own check."""
    if len(caches) == 1:  # this cache alone: write_cache checks it
        return
    needed = frames = 0
    for index, cache in caches.values():
        table = own if cache == out else load_video_index(index)
        counts = table.loc[table["subset"].isin(SUBSETS), "frames"].map(len)
        needed += cache_bytes(counts, grid, max_frames)
        frames += sum(len(select_frames(n, max_frames)) for n in counts)
    splits = ", ".join(str(k) for k in caches if k is not None)
    check_free_space(out, needed, files=len(caches), what=(
        f"writing the {len(caches)} feature caches of {matrix_out} not yet written (splits "
        f"{splits} of data.splits; {frames:,} frames of {' x '.join(map(str, grid))} float16 "
        "values)"), remedy=", or run fewer splits at a time (data.splits)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--index", type=Path, required=True, help="a split_<k>.json")
    parser.add_argument("--model", type=Path, required=True, help="the fine-tuned model")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--matrix-index", help="the index file of split {split} of this set")
    parser.add_argument("--matrix-out", help="the cache of split {split} of this set")
    args = parser.parse_args(argv)
    p = load_params(args.params)
    world, device = start(p.runtime)  # under torchrun: the ranks share the frames, rank 0 writes

    net, payload = load_exported(args.model)
    # the grids of model.grid_block: the fine-tuned backbone up to it (the whole one at last)
    grid_net = grid_backbone(net.backbone, p.model.grid_block)
    table = load_video_index(args.index)
    tables = {subset: table[table["subset"] == subset] for subset in SUBSETS}
    frames = sum(len(f) for f in table["frames"])
    log.info("caching the grids of %s (model.grid_block) of %d tracklets (%d frames, cap %d "
             "per tracklet)",
             p.model.grid_block, len(table), frames, p.cache.max_frames_per_tracklet)
    if world.is_main:  # before any frame is read: the disk for this set's whole split matrix
        caches = unwritten_caches(args.index, args.out, args.matrix_index, args.matrix_out,
                                  p.data.splits)
        check_matrix_space(caches, grid_shape(grid_net, (p.data.height, p.data.width)),
                           p.cache.max_frames_per_tracklet, args.out, table, args.matrix_out)
    backbone = compiled(grid_net, p.runtime.compile)
    write_cache(args.out, backbone, tables, (p.data.height, p.data.width),
                cache_attrs(args.model, payload, p.model.grid_block),
                p.cache.max_frames_per_tracklet,
                p.cache.batch_size, p.data.num_workers, device,
                use_autocast(p.runtime, device), part_names=LABELS)
    if world.is_main:
        log.info("wrote %s (%.1f MB)", args.out, args.out.stat().st_size / 1e6)


if __name__ == "__main__":
    run(main)
