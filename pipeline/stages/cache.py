"""Stage ``cache``: res5c grids of the fine-tuned backbone for every (selected) frame of one video
set's split, in HDF5 (see ``pipeline.features``). It reads no attention, loss or pooling params, so
experiments on those never recompute CNN features.

    python -m pipeline.stages.cache --params params.yaml --index data/index/<set>/split_<k>.json \
        --model data/models/<set>-<k>/finetune.pt --out data/cache/<set>-<k>.h5
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from pipeline.features import cache_attrs, write_cache
from pipeline.params import load_params
from pipeline.stages.common import run
from pipeline.tables import load_video_index
from pipeline.train import compiled, load_exported, start, use_autocast

log = logging.getLogger("cache")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--index", type=Path, required=True, help="a split_<k>.json")
    parser.add_argument("--model", type=Path, required=True, help="the fine-tuned model")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    p = load_params(args.params)
    world, device = start(p.runtime)  # under torchrun: the ranks share the frames, rank 0 writes

    net, payload = load_exported(args.model)
    table = load_video_index(args.index)
    tables = {subset: table[table["subset"] == subset] for subset in ("train", "test")}
    frames = sum(len(f) for f in table["frames"])
    log.info("caching res5c grids of %d tracklets (%d frames, cap %d per tracklet)",
             len(table), frames, p.cache.max_frames_per_tracklet)
    backbone = compiled(net.backbone, p.runtime.compile)
    write_cache(args.out, backbone, tables, (p.data.height, p.data.width),
                cache_attrs(args.model, payload), p.cache.max_frames_per_tracklet,
                p.cache.batch_size, p.data.num_workers, device,
                use_autocast(p.runtime, device))
    if world.is_main:
        log.info("wrote %s (%.1f MB)", args.out, args.out.stat().st_size / 1e6)


if __name__ == "__main__":
    run(main)
